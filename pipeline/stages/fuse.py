"""Stages `fuse@<strategy>`: train one fusion on the unimodal heads' outputs.

params `fuse.<strategy>`: the fusion's config dataclass (published defaults in the module).
Fusion reads head outputs (never raw features) plus the reliability store for the audio filter.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.records import read_index
from pipeline.stages import Layout
from pipeline.stages.train import current_store, entry_config_class, publish_history, publish_metrics

log = logging.getLogger(__name__)

FUSION_MODULES = {"moe": "heads.fusion_moe", "reliability": "heads.fusion_reliability"}


def run(params_path: Path, strategy: str) -> None:
    from heads.fusion_data import load_fusion_inputs

    module = importlib.import_module(FUSION_MODULES[strategy])
    params = load_params(params_path)
    cfg = params.build(f"fuse.{strategy}", entry_config_class(module.train_fusion))
    layout = Layout()
    modalities = list(cfg.modalities)
    head_urls = {m: str(layout.head_dir(m) / "outputs.zarr") for m in modalities}
    inputs = load_fusion_inputs(
        read_index(layout.index),
        head_urls,
        reliability_url=current_store(layout, "reliability"),
        audio="audio" if "audio" in modalities else None,
    )
    out_dir = layout.fusion_dir(strategy)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = module.train_fusion(cfg, inputs, out_dir)
    publish_metrics(metrics, out_dir, layout.metrics / f"fusion_{strategy}.json")
    publish_history(out_dir, layout.plots / "history" / f"fusion_{strategy}.json")
    log.info("fuse %s: ccc_mean=%.4f", strategy, metrics.get("ccc_mean", float("nan")))
