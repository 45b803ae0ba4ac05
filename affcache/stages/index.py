"""Stage `index`: scan the dataset into data/index.json (one `Video` record per annotation id) and
the crop fingerprints beside it (data/index.crops.json).

It runs at every `dvc repro` (dvc.yaml: `always_changed`; the dataset folder is no DVC dep, whose
hashing costs minutes at Aff-Wild2 size): the scan cache makes a run with nothing changed a stat walk,
and both files are rewritten only when their content changes, so DVC re-runs nothing after it then.
Paths in the index are relative to `dataset.root`, so the same dataset elsewhere gives the same file.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.files import sha256_file
from pipeline.records import Video, crops_index_path, read_crops, write_crops, write_index
from affcache.stages import Layout

log = logging.getLogger(__name__)


def with_label_hashes(video: Video) -> Video:
    """Record each label file's hash so the index (the heads' only label dep) changes with them."""
    return dataclasses.replace(video, label_hashes={task: sha256_file(p) for task, p in video.labels.items()})


def run(params_path: Path, adapter: str | None = None, root: Path | None = None, out: Path | None = None) -> None:
    from pipeline.datasets import build_index

    params = load_params(params_path)
    layout = Layout()
    adapter = adapter or params.section("dataset.adapter")
    root = Path(root or params.section("dataset.root"))
    out = Path(out or params.get("dataset.index") or layout.index)
    options = dict(params.get("dataset.options") or {})
    crops_path = crops_index_path(out)
    videos, warnings = build_index(adapter, root, cache_dir=layout.scan_cache, shared_crops=read_crops(crops_path),
                                   **options)
    videos = [with_label_hashes(v) for v in videos]
    wrote = write_index(videos, out, warnings=warnings, root=root)
    wrote_crops = write_crops(videos, crops_path)
    splits: dict[str, int] = {}
    for video in videos:
        splits[video.split] = splits.get(video.split, 0) + 1
    log.info("index (%s): %d videos (%s) -> %s%s; %d warning(s)", adapter, len(videos),
             ", ".join(f"{k} {v}" for k, v in sorted(splits.items())), out,
             "" if wrote or wrote_crops else " (unchanged)", len(warnings))
