"""The one training driver: every head and fusion trains through `train_model`.

It asks a `heads.contract.Head` for its inputs, bank, model and loss, runs the one `fit` loop of
`heads.train`, then predicts every split with the best model and writes the outputs and metrics.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from heads.contract import TASK_OUTPUTS, Head
from heads.losses import class_weights
from heads.outputs import score, write_outputs
from heads.train import Batches, fit, resolve_device


def train_model(head: Head, videos: Sequence, out_dir: str | Path) -> dict:
    """Train `head` on the train split, select on validation, write model/history/outputs; metrics.

    Order matters for reproducibility: torch is seeded before the model is built (and `fit`
    re-seeds before the first batch), so a run repeats exactly. Writes out_dir/model.pt (weights,
    config, dims, registry name), history.json, outputs.zarr (every split) and metrics.json.
    Returns the validation metrics of the final (best) model plus the bank statistics, the
    unsmoothed figures (`raw`/`smoothed`) of a model that smooths, best epoch and wall time.

    The headline figures are scored the ABAW way, as `affcache evaluate` and a submission score
    them: every validly labelled frame, frames the model did not predict filled with its nearest
    prediction. A head that leaves frames to fusion (no face, no speech) also reports the figures
    on its own frames, under `predicted_frames_only`. Epochs are selected on the head's own rule
    (`Head.fill_missing` / `select_array`); each history row also holds the headline-way figures
    (`val_abaw_*`), so the training curves show what the metric shows.
    """
    out_dir = Path(out_dir)
    tcfg = head.train_config
    torch.manual_seed(tcfg.seed)
    videos = list(videos)
    if not any(v.split == "train" for v in videos):
        raise ValueError(f"{head.name}: no training video among the inputs; check the index splits")
    inputs = head.prepare(videos)
    dims = head.dims(inputs)
    model = head.build_model(dims)
    bank, stats = head.build_bank(videos, inputs, dims)
    head.materialize(model, bank)
    device = resolve_device(tcfg.device)
    val_videos = [v for v in videos if v.split == "validation"]
    val_targets = {v.video_id: head.targets(v) for v in val_videos}

    def val_fn(m: nn.Module) -> dict:
        if not val_videos:
            return {}
        outputs = head.predict(m, val_videos, inputs, dims, next(m.parameters()).device)
        selection = score(val_targets, outputs, head.task, head.fill_missing, head.select_array)
        headline = score(val_targets, outputs, head.task, fill_missing=True)
        return {**selection, **{f"abaw_{k}": v for k, v in headline.items() if k != "num_frames"}}

    t0 = time.perf_counter()
    if head.task == "expr":
        counts = train_class_counts(head, videos)
        head.class_weight = torch.from_numpy(class_weights(counts, tcfg.class_weighting))
        stats = {**stats, "train_class_counts": counts.tolist(),
                 "class_weights": [round(float(w), 4) for w in head.class_weight]}
    batches = Batches(len(bank), tcfg.batch_size, bank.gather, seed=tcfg.seed)
    history = fit(model, batches, head.loss(), val_fn, tcfg, out_dir, metric=head.metric,
                  param_groups=head.param_groups(model), name=head.registry_name,
                  checkpoint_extra={"model": head.registry_name, "config": _jsonable(head.cfg), "dims": dict(dims),
                                    **head.output_attrs()})
    train_s = time.perf_counter() - t0
    model.eval()
    outputs = head.final_outputs(head.predict(model, videos, inputs, dims, device))
    write_outputs(out_dir, head.registry_name, type(head).kind, videos, outputs, _jsonable(head.cfg), head.task,
                  head.output_attrs())
    metrics = score(val_targets, outputs, head.task, fill_missing=True) or {}
    if not head.fill_missing and metrics:
        metrics["predicted_frames_only"] = score(val_targets, outputs, head.task, fill_missing=False)
    if outputs and all("pred_raw" in o.extras for o in outputs.values()):
        raw = score(val_targets, outputs, head.task, True, "pred_raw")
        metrics = {**metrics, "raw": raw, "smoothed": {k: v for k, v in metrics.items() if k != "predicted_frames_only"}}
    best = max(history, key=lambda r: r.get(f"val_{head.metric}", -math.inf)) if history else {}
    metrics.update(stats)
    metrics.update({"best_epoch": best.get("epoch"), "epochs": len(history),
                    "stopped": history[-1].get("stopped") if history else None, "train_seconds": round(train_s, 2),
                    **head.summary()})
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics


def train_class_counts(head: Head, videos: Sequence) -> np.ndarray:
    """Frames per EXPR class over the valid labels of the train split (what the class weights use)."""
    counts = np.zeros(TASK_OUTPUTS["expr"], np.int64)
    for v in videos:
        if v.split == "train":
            y, ok = head.targets(v)
            counts += np.bincount(np.asarray(y)[np.asarray(ok, bool)].astype(np.int64), minlength=len(counts))
    return counts


def _jsonable(cfg) -> dict:
    """A config dataclass as plain JSON types (tuples -> lists), as the checkpoint and store keep it."""
    return json.loads(json.dumps(asdict(cfg), default=str))
