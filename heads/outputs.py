"""Per-frame outputs of every head and fusion: the record, the one writer (`outputs.zarr`), the one scorer.

Fusion depends on head outputs, never on the raw features a head consumed, so every head writes
the same shape of store: one group per video, on the label frame grid F, for EVERY
split (test included): pred [F, 2] (VA) or [F, 8] logits (EXPR), emb [F, 256], t0, t1, valid [F].
Frames a head cannot predict (no audio, no covering segment) are written as zeros with valid False
-- never NaN, so a consumer that forgets the mask gets a neutral value, not a poisoned sum.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from pipeline.labels import fill_nearest, frame_times
from pipeline.metrics import expr_score, va_score


@dataclass
class HeadOutput:
    """Per-frame outputs of one video (F = the video's label grid length).

    `extras` are further per-frame arrays [F, K] that follow the validity rule (a fusion's gate
    weights and unsmoothed `pred_raw`); `aux` are per-frame [F] diagnostics written as they are
    (RAAV's `audio_mask`, the share of covering windows whose audio was masked).
    """

    pred: np.ndarray   # [F, C] float32
    emb: np.ndarray    # [F, E] float32
    valid: np.ndarray  # [F] bool
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        """`pred` or one of the extras by name."""
        return self.pred if name == "pred" else self.extras[name]


def clean(out: HeadOutput) -> HeadOutput:
    """Zero non-finite rows and mark them invalid (see module docstring)."""
    ok = out.valid & np.isfinite(out.pred).all(1) & np.isfinite(out.emb).all(1)

    def zero(a: np.ndarray) -> np.ndarray:
        return np.where(ok[:, None], np.nan_to_num(a), 0.0).astype(np.float32)

    return HeadOutput(zero(out.pred), zero(out.emb), ok, {k: zero(v) for k, v in out.extras.items()},
                      {k: np.nan_to_num(v).astype(np.float32) for k, v in out.aux.items()})


def write_outputs(out_dir: str | Path, name: str, kind: str, videos: Iterable, outputs: Mapping[str, HeadOutput],
                  config: dict, task: str, attrs: Mapping | None = None) -> str:
    """(Re)write out_dir/outputs.zarr with one group per video; returns the store URL.

    The one writer of every head and fusion (`name`, `kind` from the registry). The store is
    recreated from scratch: a new training run makes every prediction stale, and a leftover group
    from an earlier run (a video since removed from the index) must not survive. `attrs` (e.g. a
    fusion's gate names) go to the store and to every group.
    """
    from pipeline.store import FeatureStore

    url = str(Path(out_dir) / "outputs.zarr")
    if Path(url).exists():
        shutil.rmtree(url)
    extra = dict(attrs or {})
    store = FeatureStore.create(url, extractor=f"{kind}:{name}", fingerprint={kind: name, "task": task, "config": config},
                                attrs={"head": name, "kind": kind, "task": task, **extra})
    for v in videos:
        o = clean(outputs[v.video_id])
        t0, t1 = frame_times(v.num_frames, v.fps, getattr(v, "times", None))  # the label grid's real times
        arrays = {"pred": o.pred, "emb": o.emb, **o.extras, "t0": t0, "t1": t1, "valid": o.valid, **o.aux}
        store.write_video(v.video_id, arrays, attrs={"split": v.split, "fps": float(v.fps), "task": task, **extra})
    store.consolidate()
    return url


def score(targets: Mapping[str, tuple[np.ndarray, np.ndarray]], outputs: Mapping[str, HeadOutput], task: str,
          fill_missing: bool = False, array: str = "pred") -> dict:
    """The one scorer: ABAW metric over the videos of `targets` ({} when no frame is labelled).

    `targets`: {video_id: (values, valid)} on the label grid (pass the split to score). Without
    `fill_missing`, frames the model marked invalid are excluded (a head leaves them to fusion to
    fill; `num_frames` tells how much it scored). With it, they first take the nearest valid
    prediction -- the submission rule, so the figure equals what `pipeline.evaluate` reports from
    the stored outputs. Frames whose prediction is not finite are never scored.
    """
    preds, trues, valids = [], [], []
    for vid, (y, yv) in targets.items():
        o = outputs[vid]
        p = o.array(array)
        if fill_missing:  # a non-finite prediction counts as missing, as in the export
            ok = np.asarray(o.valid, bool) & np.isfinite(p).reshape(len(p), -1).all(1)
            # nothing predicted in the whole video: neutral 0 for VA (as `pipeline.evaluate` scores it)
            p = fill_nearest(p, ok) if ok.any() or task != "va" else np.zeros_like(p)
            valids.append(np.asarray(yv, bool))
        else:
            valids.append(np.asarray(yv, bool) & o.valid)
        preds.append(p)
        trues.append(y)
    if not valids or not np.concatenate(valids).any():
        return {}
    if task == "va":
        return va_score(preds, trues, valids)
    lg = [np.where(vv[:, None], p, np.nan) for p, vv in zip(preds, valids)]
    return expr_score(lg, [np.where(vv, t, -1) for t, vv in zip(trues, valids)])
