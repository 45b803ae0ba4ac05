"""Stage `demo_data`: the embedded demo's generated Aff-Wild2-shaped dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Params, load_params

if TYPE_CHECKING:
    from pipeline.datasets.synthetic import DemoConfig

log = logging.getLogger(__name__)


def demo_config(params: Params) -> "DemoConfig":
    """The demo's generator config: params `demo.preset` (default `default`) with `demo.overrides`,
    checked strictly (what the stage runs and `affcache params show` prints)."""
    from pipeline.datasets.synthetic import DemoConfig

    return DemoConfig.from_preset(params.get("demo.preset", "default"), params.get("demo.overrides"),
                                  where=str(params.path))


def run(params_path: Path, out: Path | None = None, labels_from: Path | None = None) -> None:
    """Write the synthetic Aff-Wild2-shaped tree (params `demo`: root, preset, overrides)."""
    from pipeline.datasets import synthetic

    params = load_params(params_path)
    cfg = demo_config(params)
    root = Path(out or params.section("demo.root"))
    labels_from = labels_from or (Path(params.get("demo.labels_from")) if params.get("demo.labels_from") else None)
    manifest = synthetic.generate(root, cfg, labels_from=labels_from)
    log.info("demo data: %d videos in %s", len(manifest.get("videos", manifest)), root)
