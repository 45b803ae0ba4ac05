"""Dataset adapters: turn a tree of videos and annotations into `Video` records.

An adapter declares itself where it is written, `@register_adapter("name")` on its class
(`pipeline.datasets.common`); `declared_adapters` reads those declarations from the source
(`pipeline.plugins`), so the CLI's `--adapter` choices, the params schema and the `index` stage's
code deps follow from them. A declared module is imported on first use (`adapter_class`).

Every adapter is a small class constructed as `Adapter(root, **options)` whose `build()` returns
the records and whose `warnings` list afterwards holds every non-fatal problem found (label/video
length mismatches, skipped files, split conflicts). Warnings are also logged; the index stage is
expected to record them next to the index so a user can see what the frame-grid rule did.

The synthetic demo is not an adapter: its generator writes an Aff-Wild2-shaped tree that the real
`affwild2` adapter reads, so the demo exercises the real path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from pipeline.datasets.common import ADAPTER_REGISTRY, DatasetError, register_adapter
from pipeline.datasets.crops import check_crops
from pipeline.datasets.scan_cache import ScanCache
from pipeline.records import Video

log = logging.getLogger(__name__)


def declared_adapters() -> dict[str, str]:
    """Every adapter declared in this package: name -> its module (read from the source: no import)."""
    from pipeline.plugins import declarations

    return {d.name: d.module for d in declarations("pipeline.datasets", "register_adapter")}


def adapter_names() -> list[str]:
    """The declared adapter names, sorted (the `dataset.adapter` / `--adapter` choices)."""
    return sorted(declared_adapters())


def adapter_class(name: str) -> type:
    """The adapter class registered as `name`, importing its declared module on first use."""
    if name not in ADAPTER_REGISTRY:
        declared = declared_adapters()
        if name in declared:
            import importlib

            importlib.import_module(declared[name])
        if name not in ADAPTER_REGISTRY:
            known = ", ".join(sorted(set(declared) | set(ADAPTER_REGISTRY))) or "(none)"
            raise DatasetError(f"unknown dataset adapter {name!r}; fix: use one of {known} (params `dataset.adapter`)")
    return ADAPTER_REGISTRY[name]


def adapter_classes() -> dict[str, type]:
    """Every declared adapter (and any registered by a program itself) by name, imported."""
    return {name: adapter_class(name) for name in sorted(set(declared_adapters()) | set(ADAPTER_REGISTRY))}


class IndexReport(NamedTuple):
    """What indexing produced: the records (sorted by id) plus every warning (already logged).

    A NamedTuple so callers can write `videos, warnings = build_index(...)` or use `.videos`.
    """

    videos: list[Video]
    warnings: list[str]


def get_adapter(adapter_name: str, root: str | Path, **options: Any):
    """Construct an adapter by registry name; unknown names and options fail with the valid ones."""
    cls = adapter_class(adapter_name)
    try:
        return cls(root, **options)
    except TypeError as e:
        fields = [f for f in cls.__dataclass_fields__ if f not in ("root", "warnings", "cache")]
        raise DatasetError(
            f"adapter {adapter_name!r}: bad options {sorted(options)} ({e}); fix: valid options are {fields}"
        ) from e


def build_index(adapter_name: str, root: str | Path, cache_dir: str | Path | None = None,
                shared_crops: Mapping[str, Mapping] | None = None, **options: Any) -> IndexReport:
    """Index a dataset with the named adapter: `(videos, warnings)`.

    Each video with crops gets its `crops_fingerprint` (`pipeline.datasets.crops`). `cache_dir`
    keeps this machine's scan cache there (`pipeline.datasets.scan_cache`), so a re-index probes,
    parses and reads only what changed; without it every run is a first sight. `shared_crops` (video
    id -> record of the previous crops file) lets a first sight keep the keys recorded elsewhere.
    Warnings (label/video length mismatches with the rule applied, skipped files, split conflicts)
    are also logged through the adapter module's logger; the caller should store them with the index.
    """
    adapter = get_adapter(adapter_name, root, **options)
    adapter.cache = cache = ScanCache(cache_dir, root)
    videos = adapter.build()
    videos, stats = check_crops(videos, cache, shared_crops, progress=adapter.progress)
    cache.save()
    if stats.sets:
        log.info("crops: %d set(s), %d file(s) listed, %d read, %d set(s) changed", stats.sets, stats.files,
                 stats.hashed, stats.changed)
    return IndexReport(videos, list(adapter.warnings))


__all__ = [
    "DatasetError",
    "IndexReport",
    "adapter_class",
    "adapter_classes",
    "adapter_names",
    "build_index",
    "declared_adapters",
    "get_adapter",
    "register_adapter",
]
