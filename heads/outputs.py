"""Write a head's per-frame predictions and penultimate embeddings to `outputs.zarr`.

Fusion depends on head outputs, never on the raw features a head consumed, so every head writes
the same shape of store: one group per video, on the label frame grid F, for EVERY
split (test included): pred [F, 2] (VA) or [F, 8] logits (EXPR), emb [F, 256], t0, t1, valid [F].
Frames a head cannot predict (no audio, no covering segment) are written as zeros with valid False
-- never NaN, so a consumer that forgets the mask gets a neutral value, not a poisoned sum.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from heads.data import HeadVideo
from pipeline.labels import frame_times


@dataclass
class HeadOutput:
    """Per-frame outputs of one video (F = the video's label grid length)."""

    pred: np.ndarray   # [F, C] float32
    emb: np.ndarray    # [F, E] float32
    valid: np.ndarray  # [F] bool


def clean(out: HeadOutput) -> HeadOutput:
    """Zero non-finite rows and mark them invalid (see module docstring)."""
    ok = out.valid & np.isfinite(out.pred).all(1) & np.isfinite(out.emb).all(1)
    pred = np.where(ok[:, None], out.pred, 0.0).astype(np.float32)
    emb = np.where(ok[:, None], out.emb, 0.0).astype(np.float32)
    return HeadOutput(pred, emb, ok)


def write_outputs(out_dir: str | Path, head: str, videos: Iterable[HeadVideo], outputs: dict[str, HeadOutput],
                  config: dict, task: str) -> str:
    """(Re)write out_dir/outputs.zarr with one group per video; returns the store URL.

    The store is recreated from scratch: a new training run makes every prediction stale, and a
    leftover group from an earlier run (a video since removed from the index) must not survive.
    """
    from pipeline.store import FeatureStore

    url = str(Path(out_dir) / "outputs.zarr")
    if Path(url).exists():
        shutil.rmtree(url)
    store = FeatureStore.create(url, extractor=f"head:{head}", fingerprint={"head": head, "task": task, "config": config},
                                attrs={"head": head, "task": task})
    for v in videos:
        o = clean(outputs[v.video_id])
        t0, t1 = frame_times(v.num_frames, v.fps)
        store.write_video(v.video_id, {"pred": o.pred, "emb": o.emb, "t0": t0, "t1": t1, "valid": o.valid},
                          attrs={"split": v.split, "fps": float(v.fps), "task": task})
    store.consolidate()
    return url


def score_split(videos: Iterable[HeadVideo], outputs: dict[str, HeadOutput], task: str,
                split: str = "validation") -> dict:
    """ABAW metric of one split from per-frame outputs ({} when the split has no labelled frame).

    Frames the head marked invalid are excluded (they belong to fusion to fill), so `num_frames`
    tells how much of the split the head actually scored.
    """
    from heads.data import frame_targets
    from pipeline.metrics import expr_score, va_score

    preds, trues, valids = [], [], []
    for v in videos:
        if v.split != split or v.labels is None:
            continue
        y, yv = frame_targets(v, task)
        o = outputs[v.video_id]
        preds.append(o.pred)
        trues.append(y)
        valids.append(yv & o.valid)
    if not valids or not np.concatenate(valids).any():
        return {}
    if task == "va":
        return va_score(preds, trues, valids)
    lg = [np.where(vv[:, None], p, np.nan) for p, vv in zip(preds, valids)]
    return expr_score(lg, [np.where(vv, t, -1) for t, vv in zip(trues, valids)])
