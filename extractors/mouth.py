"""Mouth-opening signals that do not come from the image heuristic: dlib landmarks and external CSVs.

Both feed `extractors.reliability` (which owns the published smoothing rule); this module only
turns a face (or a file) into one raw openness value per frame.

**Landmarks** (`mouth_method: "landmarks"`; `dlib-bin` + `face-recognition-models`, core
dependencies, whose wheel ships dlib's 68-point iBUG 300-W shape predictor, so it runs offline; on
videos without crops the face tracker fits the same landmarks and hands over the ratio). The measure is the
*inner-lip aspect ratio* (`inner_lip_ratio`): the mean of the three inner-lip vertical gaps
(points 61-67, 62-66, 63-65, 0-based) divided by the inner mouth width (60-64). It is 0 for closed
lips (the inner upper and lower points coincide) and grows with the opening; being a ratio of two
distances on the same face it does not depend on the face's size in pixels, and in-plane rotation
leaves it unchanged. Limits: the predictor always returns 68 points, with no confidence, so a
detector false positive or a badly placed rectangle yields a plausible-looking but meaningless ratio;
it was trained on mostly frontal faces (accuracy falls beyond ~45 degrees of yaw, where the mouth
width foreshortens and the ratio grows); the inner-lip points are the least precise of the 68 on
small faces (Aff-Wild2's aligned crops are 112 px) and under occlusion (hands, microphones); a smile
with parted lips and a speaking mouth look alike; and it says nothing about *who* speaks. Like every
method it is used relative to the same video by the published rule.

**External CSVs** (`mouth_method: "csv"`): the published system ships per-frame MediaPipe lip-ring
areas (`data/openmouth/<id>.csv`: `,frame,surface_area_mouth,mouth_open`, 1-based frame numbers,
frames without a face absent). `read_mouth_csv` (one column) and `read_mouth_csv_columns` (several,
with the frames the file lists) read one such file onto a video's frame grid,
strictly: a file that is missing, lacks a column, has a non-numeric or non-finite value, a frame out
of range or a duplicate frame is a `VideoError` naming the file and the problem, so one bad file
fails its video only.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from extractors import dlib_models
from extractors.base import ExtractorError, VideoError

# 0-based indices into dlib's 68-point layout: inner lip ring 60..67
INNER_LEFT, INNER_RIGHT = 60, 64
INNER_TOP, INNER_BOTTOM = (61, 62, 63), (67, 66, 65)


# ------------------------------------------------------------------------------------- the measure
def inner_lip_ratio(points: np.ndarray) -> np.ndarray:
    """Inner-lip aspect ratio of 68-point landmarks: [68, 2] -> scalar array, [..., 68, 2] -> [...].

    mean(|p61 - p67|, |p62 - p66|, |p63 - p65|) / |p60 - p64|; NaN where the width is 0 (degenerate
    points), so a failed fit is "no value" rather than "closed".
    """
    p = np.asarray(points, np.float64)
    if p.shape[-2:] != (68, 2):
        raise ValueError(f"inner_lip_ratio needs [..., 68, 2] landmarks, got shape {p.shape}")
    gaps = np.linalg.norm(p[..., INNER_TOP, :] - p[..., INNER_BOTTOM, :], axis=-1).mean(axis=-1)
    width = np.linalg.norm(p[..., INNER_LEFT, :] - p[..., INNER_RIGHT, :], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, gaps / np.where(width > 0, width, 1.0), np.nan)


# ------------------------------------------------------------------------------------ dlib backend
def predictor_path() -> Path | None:
    """The 68-point model file of `face-recognition-models`, or None when the package is absent."""
    return dlib_models.model_path("landmarks68")


def landmarks_problem() -> str | None:
    """Why landmarks cannot run here (None when dlib and the model file are both present)."""
    return dlib_models.problem("landmarks68")


def landmarks_available() -> bool:
    return landmarks_problem() is None


def landmarks_identity() -> dict:
    """What the landmark signal depends on, for the store fingerprint: dlib's version and the model."""
    ident = dlib_models.identity("landmarks68")
    return {"dlib": ident["dlib"], "model": ident["landmarks68"]}


class LandmarkMouth:
    """dlib's shape predictor behind one call: (grey image, face rectangle) -> inner-lip ratio.

    The predictor is the process-wide one of `extractors.dlib_models` (its call is const, so the
    prepare threads share it).
    """

    _shared: "LandmarkMouth | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        problem = landmarks_problem()
        if problem:
            raise ExtractorError(f"reliability mouth_method 'landmarks': {problem}")
        import dlib

        self.dlib = dlib
        self.predictor = dlib_models.shared_predictor("reliability mouth_method 'landmarks'")

    @classmethod
    def shared(cls) -> "LandmarkMouth":
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def points(self, gray: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """68 x 2 landmarks of the face in `box` (x0, y0, x1, y1 pixels of `gray`)."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(np.ascontiguousarray(gray, np.uint8), self.dlib.rectangle(x0, y0, x1, y1))
        return np.array([(shape.part(k).x, shape.part(k).y) for k in range(68)], np.float64)

    def __call__(self, gray: np.ndarray, box: tuple[float, float, float, float]) -> float:
        return float(inner_lip_ratio(self.points(gray, box)))


# ------------------------------------------------------------------------------------ external CSV
def read_mouth_csv(path: str | Path, num_frames: int, frame_column: str = "frame",
                   value_column: str = "surface_area_mouth", frame_base: int = 1) -> np.ndarray:
    """One video's external mouth signal on its frame grid: float64 [num_frames], NaN where absent.

    `frame_column` holds frame numbers counted from `frame_base` (the published files: 1-based,
    zero-padded `00001`); frames absent from the file have no value. Every problem is a `VideoError`
    naming the file (see the module docstring).
    """
    values, _present = read_mouth_csv_columns(path, num_frames, (value_column,), frame_column, frame_base)
    return values[value_column]


def read_mouth_csv_columns(path: str | Path, num_frames: int, columns: tuple[str, ...], frame_column: str = "frame",
                           frame_base: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Numeric `columns` of one mouth CSV on the video's frame grid, and which frames the file lists.

    Returns ({column: float64 [num_frames], NaN where the frame is absent}, present [num_frames]
    bool). A frame's presence is the published face coverage (MediaPipe found the face); the
    published `mouth_open` column is the rolling rule's flag before smoothing. Checked as
    `read_mouth_csv` says.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{p}: mouth CSV not found (mouth_csv_dir holds one <video_id>.csv per video)")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise VideoError(f"{p}: not a readable CSV ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    missing = [c for c in (frame_column, *columns) if c not in df.columns]
    if missing:
        raise VideoError(f"{p}: column(s) {missing} missing; it has {[c for c in df.columns]} "
                         "(set mouth_csv_frame_column / mouth_csv_value_column / mouth_csv_open_column)")
    frames = pd.to_numeric(df[frame_column].str.strip(), errors="coerce")
    bad = ~np.isfinite(frames.to_numpy(np.float64)) | (frames.to_numpy(np.float64) % 1 != 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise VideoError(f"{p}: column {frame_column!r} row {row + 1}: {df[frame_column].iloc[row]!r} is not a frame number")
    parsed = {}
    for column in columns:
        values = pd.to_numeric(df[column].str.strip(), errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise VideoError(f"{p}: column {column!r} row {row + 1}: {df[column].iloc[row]!r} is not a "
                             f"finite number ({int(bad.sum())} such row(s)); leave frames without a value out instead")
        parsed[column] = values
    idx = frames.to_numpy(np.int64) - int(frame_base)
    out_of_range = (idx < 0) | (idx >= num_frames)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise VideoError(f"{p}: frame {int(frames.iloc[row])} (row {row + 1}) is outside the video's "
                         f"{num_frames} frames (frames counted from {frame_base}: mouth_csv_frame_base)")
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[counts > 1][0]) + int(frame_base)
        raise VideoError(f"{p}: frame {dup} appears {int(counts[counts > 1][0])} times "
                         f"({int((counts > 1).sum())} duplicated frame number(s))")
    present = np.zeros(num_frames, bool)
    present[idx] = True
    out = {}
    for column, values in parsed.items():
        out[column] = np.full(num_frames, np.nan)
        out[column][idx] = values
    return out, present
