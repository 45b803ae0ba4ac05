"""Windowing and time alignment: every head trains on windows and predicts per label frame.

The label frame grid (frame i <-> t_i = i / fps, F = number of label lines) is the only time axis
the heads expose; each modality keeps its own rows (`t0`, `t1` seconds) and is aligned here at
training time, so no store has to assume another's rate (README, "Time").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

WINDOW_TAILS = ("aligned", "ragged")

def frame_windows(num_frames: int, size: int, hop: int, tail: str = "aligned") -> list[tuple[int, int]]:
    """Windows [start, end) of `size` every `hop`, and how the last one ends.

    `tail="aligned"`: a last window aligned to the end, so the final frames get full context
    instead of a short ragged window (the published face model). `tail="ragged"`: windows start at
    multiples of `hop` until one reaches the end, and that one is cut there, shorter (the published
    behaviour model's sequences, `transformer_data.py` `_build_window_ranges`). A sequence no longer
    than `size` gives ONE window (0, num_frames) either way: the caller pads a short window to
    `size` and masks the padding. No window for 0 frames.
    """
    if size <= 0 or hop <= 0:
        raise ValueError(f"frame_windows: size ({size}) and hop ({hop}) must be positive")
    if tail not in WINDOW_TAILS:
        raise ValueError(f"frame_windows: tail must be one of {', '.join(WINDOW_TAILS)}, got {tail!r}")
    if num_frames <= 0:
        return []
    if num_frames <= size:
        return [(0, num_frames)]
    if tail == "ragged":
        out, start = [], 0
        while True:
            end = min(start + size, num_frames)
            out.append((start, end))
            if end >= num_frames:
                return out
            start += hop
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


def span_targets(y: np.ndarray, yv: np.ndarray, fs: np.ndarray, fe: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Target of each frame span [fs, fe): the mean of its valid labels (VA) or their majority class
    (EXPR); valid when any frame of the span is labelled."""
    n, f = len(fs), len(yv)
    s, e = np.clip(np.asarray(fs, np.int64), 0, f), np.clip(np.asarray(fe, np.int64), 0, f)
    cv = np.concatenate([[0], np.cumsum(yv)])
    valid = (cv[e] - cv[s]) > 0
    if task == "va":
        cy = np.concatenate([np.zeros((1, 2)), np.cumsum(np.where(yv[:, None], y, 0.0), 0)])
        out = np.zeros((n, 2), np.float32)
        out[valid] = ((cy[e] - cy[s])[valid] / (cv[e] - cv[s])[valid, None]).astype(np.float32)
        return out, valid
    out = np.full(n, -1, np.int64)
    for i in np.flatnonzero(valid):
        out[i] = np.bincount(y[s[i]:e[i]][yv[s[i]:e[i]]], minlength=8).argmax()
    return out, valid


@dataclass
class AudioTrustRule:
    """When a window's audio may be trusted to be the annotated subject speaking (the cross-modal filter).

    Published rule (`src_audio_and_fusion/scripts/make_audio_windows.py`): mouth open for >= max(min_open_fraction x window,
    min_open_seconds) and face coverage >= min_face_coverage; optionally (not published, off at 0)
    a speech fraction >= min_speech_fraction under the VAD threshold. The audio head and the RAAV
    fusion both apply THIS rule (RAAV with min_open_fraction 0: its published form is "mouth open
    >= 1 s"), so the two cannot drift apart.
    """

    min_open_fraction: float = 0.25
    min_open_seconds: float = 1.0
    min_face_coverage: float = 0.8
    min_speech_fraction: float = 0.0   # VAD rule; 0 = off (not in the published rule)
    vad_threshold: float = 0.5

    def failures(self, duration_s: float, open_s: float | None, face_coverage: float | None,
                 speech_fraction: float | None) -> list[str]:
        """Names of the rules a window fails ("mouth", "face", "vad"); a signal that is None is not tested."""
        fails = []
        if open_s is not None and open_s < max(self.min_open_fraction * duration_s, self.min_open_seconds) - 1e-9:
            fails.append("mouth")
        if face_coverage is not None and face_coverage < self.min_face_coverage:
            fails.append("face")
        if speech_fraction is not None and self.min_speech_fraction > 0 and speech_fraction < self.min_speech_fraction:
            fails.append("vad")
        return fails
