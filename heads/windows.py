"""Windowing and time alignment: every head trains on windows and predicts per label frame.

The label frame grid (frame i <-> t_i = i / fps, F = number of label lines) is the only time axis
the heads expose; each modality keeps its own rows (`t0`, `t1` seconds) and is aligned here at
training time, so no store has to assume another's rate (DESIGN.md, "The frame grid").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def frame_windows(num_frames: int, size: int, hop: int) -> list[tuple[int, int]]:
    """Windows [start, end) of `size` every `hop`, plus a tail window aligned to the end.

    The published face model aligns the last window to the video end so the final frames get full
    context instead of a short ragged window. A video shorter than `size` gives ONE window
    (0, num_frames): the caller pads it to `size` and masks the padding. No window for 0 frames.
    """
    if size <= 0 or hop <= 0:
        raise ValueError(f"frame_windows: size ({size}) and hop ({hop}) must be positive")
    if num_frames <= 0:
        return []
    if num_frames <= size:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - size + 1, hop))
    if starts[-1] + size < num_frames:
        starts.append(num_frames - size)
    return [(s, s + size) for s in starts]


def overlap_add(window_preds: Sequence[np.ndarray] | np.ndarray, windows: Sequence[tuple[int, int]],
                num_frames: int) -> np.ndarray:
    """Per-frame mean of every window that covers the frame ([F, D]; NaN where none covers).

    `window_preds[k]` holds at least `end - start` rows (padding beyond is ignored).
    """
    if len(window_preds) != len(windows):
        raise ValueError(f"overlap_add: {len(window_preds)} window predictions for {len(windows)} windows")
    if len(windows) == 0:
        return np.full((num_frames, 0), np.nan, np.float32)
    d = np.asarray(window_preds[0]).reshape(np.asarray(window_preds[0]).shape[0], -1).shape[1]
    acc = np.zeros((num_frames, d), np.float64)
    cnt = np.zeros(num_frames, np.int64)
    for wp, (s, e) in zip(window_preds, windows):
        acc[s:e] += np.asarray(wp, np.float64).reshape(len(wp), -1)[: e - s]
        cnt[s:e] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = acc / cnt[:, None]
    out[cnt == 0] = np.nan
    return out.astype(np.float32)


def segments_to_frames(seg_preds: np.ndarray, frame_start: np.ndarray, frame_end: np.ndarray,
                       num_frames: int, seg_valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Average of every segment covering each frame (segment s covers [frame_start[s], frame_end[s])).

    The behavior head predicts per 4-s segment (2-s hop), so most frames lie in two segments; the
    published selection metric expands segment predictions to frames this way. Returns
    (frames [F, D] float32 with NaN where no segment covers, covered [F] bool). Vectorised with a
    difference array (cumulative sums), so 3M frames cost milliseconds.
    """
    seg = np.asarray(seg_preds, np.float64)
    seg = seg[:, None] if seg.ndim == 1 else seg
    s = np.clip(np.asarray(frame_start, np.int64), 0, num_frames)
    e = np.clip(np.asarray(frame_end, np.int64), 0, num_frames)
    keep = (e > s) & np.isfinite(seg).all(1)
    if seg_valid is not None:
        keep &= np.asarray(seg_valid, bool)
    s, e, seg = s[keep], e[keep], seg[keep]
    diff = np.zeros((num_frames + 1, seg.shape[1]), np.float64)
    cdiff = np.zeros(num_frames + 1, np.int64)
    np.add.at(diff, s, seg)
    np.add.at(diff, e, -seg)
    np.add.at(cdiff, s, 1)
    np.add.at(cdiff, e, -1)
    acc, cnt = np.cumsum(diff, 0)[:num_frames], np.cumsum(cdiff)[:num_frames]
    covered = cnt > 0
    out = np.full(acc.shape, np.nan, np.float32)
    out[covered] = (acc[covered] / cnt[covered, None]).astype(np.float32)
    return out, covered


def rows_to_frames(t0: np.ndarray, t1: np.ndarray, valid: np.ndarray | None, num_frames: int,
                   fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Map each label frame t_i = i / fps to one row of a store with its own time axis.

    Rule: the valid row whose [t0, t1) contains t_i; else the nearest valid row if t_i lies within
    half that row's length of it; else the frame is masked. Returns (row_index [F] int64, -1 where
    masked; mask [F] bool). Rows need not be uniform (VFR, 20-ms audio rows, 4-s segments), but must
    be sorted by t0 when valid. Times are stored as float32, so t_i is nudged by a tiny tolerance
    (5 % of the median row length, <= 1 ms) to keep frame i on row i when t0[i] rounds up.
    """
    t0 = np.asarray(t0, np.float64)
    t1 = np.asarray(t1, np.float64)
    ok = np.ones(len(t0), bool) if valid is None else np.asarray(valid, bool).copy()
    ok &= np.isfinite(t0) & np.isfinite(t1) & (t1 > t0)
    rows = np.flatnonzero(ok)
    index = np.full(num_frames, -1, np.int64)
    if num_frames <= 0 or len(rows) == 0:
        return index, np.zeros(max(num_frames, 0), bool)
    a, b = t0[rows], t1[rows]
    if np.any(np.diff(a) < 0):
        raise ValueError("rows_to_frames: store rows are not sorted by t0 -- rewrite the store group")
    dur = b - a
    tol = min(1e-3, 0.05 * float(np.median(dur)))
    t = np.arange(num_frames, dtype=np.float64) / float(fps) + tol
    k = np.searchsorted(a, t, side="right") - 1  # last row starting at or before t
    kc = np.clip(k, 0, len(a) - 1)
    inside = (k >= 0) & (t < b[kc])
    # nearest candidates: row k (t after its end) and row k+1 (t before its start)
    left = np.clip(k, 0, len(a) - 1)
    right = np.clip(k + 1, 0, len(a) - 1)
    d_left = np.where(k >= 0, np.maximum(t - b[left], 0.0), np.inf)
    d_right = np.where(k + 1 < len(a), np.maximum(a[right] - t, 0.0), np.inf)
    use_right = d_right < d_left
    near = np.where(use_right, right, left)
    d_near = np.where(use_right, d_right, d_left)
    close = d_near <= 0.5 * dur[near] + tol
    chosen = np.where(inside, kc, near)
    mask = inside | close
    index[mask] = rows[chosen[mask]]
    return index, mask
