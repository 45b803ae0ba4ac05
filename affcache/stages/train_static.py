"""Stage `train_static_<name>`: fine-tune a frame-level encoder on the face crops and write its weights.

params `train_static.<name>`: the config dataclass its declaration names (`@register_static` in
extractors/, e.g. `extractors.static_finetune.StaticTrainConfig`). Reads the index, its crop
fingerprints and the labels; writes data/static/<name>/ (the weights file, history.json, metrics.json)
and nothing under data/features: the extractor of the declared modality loads the weights and writes
the store (README, "Static fine-tuning").
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import ParamsError, load_params
from affcache.stages import Layout, read_videos, write_json
from affcache.stages.applicable import modality_media, static_reason, write_marker

log = logging.getLogger(__name__)


def static_dir(layout: Layout, name: str) -> Path:
    """data/static/<name>: the stage's one output folder."""
    return layout.root / "data" / "static" / name


def run(params_path: Path, name: str) -> dict:
    """Fine-tune static encoder `name`; returns its metrics."""
    from extractors.registry import declared_static

    declared = declared_static()
    if name not in declared:
        raise ParamsError(f"unknown static encoder {name!r}; declared: {', '.join(sorted(declared)) or '(none)'}")
    spec = declared[name]
    params = load_params(params_path)
    cfg = params.build(f"train_static.{name}", spec.config_class())
    layout = Layout.from_params(params)
    videos = read_videos(params, layout, crops=True)
    reason = static_reason(spec.modality, cfg.task, videos, modality_media(params))
    if reason:  # e.g. an audio-only corpus: the modality's extractor then skips every video too
        write_marker(static_dir(layout, name), name, reason)
        write_json(static_dir(layout, name) / "metrics.json", {"not_applicable": reason})
        log.warning("train_static %s: not applicable, not trained: %s", name, reason)
        return {"not_applicable": reason}
    metrics = spec.trainer().train(videos, cfg, static_dir(layout, name))
    log.info("train_static %s: best epoch %s of %s, %s", name, metrics.get("best_epoch"), metrics.get("epochs"),
             {k: v for k, v in metrics.items() if k.startswith("val_")})
    return metrics
