"""Stage `demo_data`: the embedded demo's generated Aff-Wild2-shaped dataset."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pipeline.config import build_config, load_params

log = logging.getLogger(__name__)


def run(params_path: Path, out: Path | None = None, labels_from: Path | None = None) -> None:
    """Write the synthetic Aff-Wild2-shaped tree (params `demo`: root, preset, overrides)."""
    from pipeline.datasets import synthetic

    params = load_params(params_path)
    preset = params.get("demo.preset", "default")
    presets = {"default": synthetic.DemoConfig.default, "tiny": synthetic.DemoConfig.tiny}
    if preset not in presets:
        raise ValueError(f"{params.path}: demo.preset must be one of {', '.join(presets)}, got {preset!r}")
    base = dataclasses.asdict(presets[preset]())
    base.update(params.get("demo.overrides") or {})
    cfg = build_config(synthetic.DemoConfig, base, where=f"{params.path}: demo.overrides")
    root = Path(out or params.section("demo.root"))
    labels_from = labels_from or (Path(params.get("demo.labels_from")) if params.get("demo.labels_from") else None)
    manifest = synthetic.generate(root, cfg, labels_from=labels_from)
    log.info("demo data: %d videos in %s", len(manifest.get("videos", manifest)), root)
