"""Stages `train_<head>`: train one unimodal head on its cached features.

params `train.<head>`: the head's config dataclass (published defaults live in the head module;
params.yaml only overrides). Reads the index, the modality's current feature store (and the
reliability store for the audio filter), writes data/heads/<head>/ and metrics/<head>.json.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import typing
from pathlib import Path

from pipeline.config import load_params
from pipeline.records import read_index
from pipeline.stages import Layout, write_json

log = logging.getLogger(__name__)

HEAD_MODULES = {"face": "heads.face_temporal", "behavior": "heads.behavior_temporal", "audio": "heads.audio_pooling"}
USES_RELIABILITY = {"audio"}


def entry_config_class(fn) -> type:
    """The config dataclass a `train_head`/`train_fusion` entry point takes (its first argument)."""
    first = next(iter(inspect.signature(fn).parameters))
    return typing.get_type_hints(fn)[first]


def current_store(layout: Layout, modality: str) -> str:
    """The active store of a modality, as written by its extraction stage."""
    from pipeline.store import read_current

    return read_current(str(layout.feature_dir(modality)))


HEADLINE_KEYS = ("ccc_valence", "ccc_arousal", "ccc_mean", "f1")


def publish_metrics(metrics: dict, out_dir: Path, metrics_path: Path) -> None:
    """Full metrics next to the model; only the headline figures in the DVC metrics file.

    Every model's metrics file then has the same keys, so `dvc metrics show` is one readable
    table (a row per model) instead of the union of every head's diagnostics.
    """
    write_json(out_dir / "metrics.json", metrics)
    write_json(metrics_path, {k: metrics[k] for k in HEADLINE_KEYS if k in metrics})


def publish_history(out_dir: Path, plot_path: Path) -> None:
    """Copy the per-epoch log where dvc.yaml declares the plot (DVC plots read it there)."""
    history = json.loads((out_dir / "history.json").read_text())
    write_json(plot_path, history)


def run(params_path: Path, head: str) -> None:
    from heads.data import load_head_videos

    module = importlib.import_module(HEAD_MODULES[head])
    params = load_params(params_path)
    cfg = params.build(f"train.{head}", entry_config_class(module.train_head))
    layout = Layout()
    videos = read_index(layout.index)
    head_videos = load_head_videos(
        videos,
        current_store(layout, head),
        task=getattr(cfg, "task", "va"),
        reliability_url=current_store(layout, "reliability") if head in USES_RELIABILITY else None,
    )
    out_dir = layout.head_dir(head)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = module.train_head(cfg, head_videos, out_dir)
    publish_metrics(metrics, out_dir, layout.metrics / f"{head}.json")
    publish_history(out_dir, layout.plots / "history" / f"{head}.json")
    log.info("train %s: %s", head, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
