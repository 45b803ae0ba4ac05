"""ABAW submission files, one row per label-grid frame: VA `image_location,valence,arousal` and
EXPR `image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other` (one integer
class 0-7 per row: the arg-max of the model's 8 logits after the same nearest-frame filling).

Rows are `<video_id>/<%05d>.jpg,v,a` with 1-based frame numbers (the cropped_aligned naming).
With a template (the organisers' sample file) its order and row count are followed exactly, because
the evaluation server matches rows by position. Frames without a prediction (beyond the predicted
length, or frames a model marked invalid) get the nearest available prediction -- the last value at
the end, the first at the start -- which is what the published systems do (seed 2 pads short
sequences with the last value). Values are clipped to [-1, 1], the label range.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.labels import EXPR_CLASSES

HEADER = "image_location,valence,arousal"
EXPR_HEADER = "image_location," + ",".join(EXPR_CLASSES)
HEADERS = {"va": HEADER, "expr": EXPR_HEADER}


class ExportError(ValueError):
    """A submission cannot be written; the message names the file, the problem and a fix."""


@dataclass
class ExportConfig:
    """Submission formatting: clipping range and printed decimals."""

    clip: tuple[float, float] = (-1.0, 1.0)
    decimals: int = 6


def fill_nearest(pred: np.ndarray, valid: np.ndarray | None, num_frames: int) -> np.ndarray:
    """[num_frames, C]: each frame takes its own prediction if valid, else the nearest valid one.

    Frames past the end of `pred` count as missing, so a short sequence is padded with its last
    value and leading gaps with the first. Ties between two equally near frames take the earlier
    (the rule of `pipeline.labels.fill_nearest`, which does the filling). Raises ValueError if no frame
    is valid (nothing to pad from).
    """
    from pipeline.labels import fill_nearest as nearest_rows

    p = np.asarray(pred, np.float64)
    p = p.reshape(len(p), -1)
    ok = np.ones(len(p), bool) if valid is None else np.asarray(valid, bool)[: len(p)].copy()
    ok &= np.isfinite(p).all(1)
    if not ok.any():
        raise ValueError("no valid prediction to pad from")
    n = max(num_frames, len(p))
    grid = np.zeros((n, p.shape[1]))
    grid[: len(p)] = np.where(ok[:, None], p, 0.0)
    mask = np.zeros(n, bool)
    mask[: len(p)] = ok
    return nearest_rows(grid, mask)[:num_frames]


def read_template(path: str | Path, task: str = "va") -> list[tuple[str, int]]:
    """(video_id, 1-based frame number) for every row of an ABAW `task` template, in file order."""
    path = Path(path)
    header = HEADERS[task]
    if not path.exists():
        raise ExportError(f"{path}: template not found; give the organisers' sample file or drop `template`")
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip().replace(" ", "") != header:
        raise ExportError(f"{path}, line 1: header must be {header!r}, got {lines[0][:80] if lines else ''!r}; "
                          f"is this the {task.upper()} test-set template?")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        loc = line.split(",", 1)[0].strip()
        vid, _, name = loc.rpartition("/")
        stem = name.rsplit(".", 1)[0]
        if not vid or not stem.isdigit() or int(stem) < 1:
            raise ExportError(f"{path}, line {i}: {loc!r} is not '<video_id>/<frame, 1-based, %05d>.jpg'; fix the template")
        rows.append((vid, int(stem)))
    return rows


def _format(vid: str, frames: np.ndarray, values: np.ndarray, cfg: ExportConfig, task: str = "va") -> list[str]:
    if task == "expr":
        return [f"{vid}/{f:05d}.jpg,{c}" for f, c in zip(frames.tolist(), values.argmax(1).tolist())]
    v = np.clip(values, *cfg.clip)
    d = cfg.decimals
    return [f"{vid}/{f:05d}.jpg,{a:.{d}f},{b:.{d}f}" for f, a, b in zip(frames.tolist(), v[:, 0].tolist(), v[:, 1].tolist())]


def export_submission(
    preds: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    out_path: str | Path,
    *,
    num_frames: Mapping[str, int] | None = None,
    template: str | Path | None = None,
    source: str = "predictions",
    cfg: ExportConfig | None = None,
    task: str = "va",
) -> int:
    """Write the `task` submission; returns the number of data rows.

    `preds`: {video_id: (pred [F, 2] (VA) or logits [F, 8] (EXPR), valid [F] or None)}. Without a template every video in
    `preds` (sorted) gets `num_frames[video_id]` rows (default: its prediction length = label grid).
    With a template, rows follow the template exactly; `source` names where predictions came from
    (used in the error for an id the template has but the predictions lack).
    """
    cfg = cfg or ExportConfig()
    if task not in HEADERS:
        raise ExportError(f"unknown submission task {task!r}; use one of {', '.join(HEADERS)}")
    out: list[str] = [HEADERS[task]]
    if template is None:
        for vid in sorted(preds):
            pred, valid = preds[vid]
            n = int(num_frames[vid]) if num_frames and vid in num_frames else len(pred)
            out += _format(vid, np.arange(1, n + 1), _filled(vid, pred, valid, n, source), cfg, task)
    else:
        rows = read_template(template, task)
        order: list[str] = []
        frames: dict[str, list[int]] = {}
        for vid, f in rows:
            if vid not in frames:
                order.append(vid)
                frames[vid] = []
            frames[vid].append(f)
        missing = [v for v in order if v not in preds]
        if missing:
            raise ExportError(f"{template}: video id {missing[0]!r} has no predictions in {source} "
                              f"({len(missing)} ids missing: {missing[:5]}); run fusion/prediction on the test videos "
                              "(are they in the index?) or check that the template matches the data")
        filled = {}
        for vid in order:
            pred, valid = preds[vid]
            filled[vid] = _filled(vid, pred, valid, max(frames[vid]), source)
        # rows in template order, formatted per run of consecutive rows of one video (fast, and
        # still exact if a template interleaves videos)
        for vid, run in itertools.groupby(rows, key=lambda r: r[0]):
            f = np.asarray([r[1] for r in run])
            out += _format(vid, f, filled[vid][f - 1], cfg, task)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return len(out) - 1


def _filled(vid: str, pred: np.ndarray, valid: np.ndarray | None, n: int, source: str) -> np.ndarray:
    try:
        return fill_nearest(pred, valid, n)
    except ValueError:
        raise ExportError(f"{source}: video {vid!r} has no valid prediction at any frame, so there is nothing to "
                          "pad from; check that its features exist (face/audio/behavior stores) and re-run fusion") from None


def predictions_from_store(url: str | Path, video_ids: Sequence[str] | None = None,
                           array: str = "pred") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{video_id: (pred, valid)} from a head's or a fusion's outputs.zarr."""
    from pipeline.store import FeatureStore

    store = FeatureStore.open(str(url))
    ids = store.video_ids() if video_ids is None else [v for v in video_ids if store.is_complete(v)]
    groups = store.read_many(ids, arrays=[array, "valid"])
    return {v: (np.asarray(g[array], np.float32), np.asarray(g["valid"], bool)) for v, g in groups.items()}
