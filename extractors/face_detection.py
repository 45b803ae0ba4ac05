"""Face detection, tracking, person assignment and aligned cropping: what the face and reliability
extractors share.

Both need the same faces: the face extractor embeds them, the reliability extractor measures their
mouths and coverage. One detector config (`FaceDetectorConfig`, nested as `detector` in both configs)
and one frames -> tracks -> persons -> crops path keep the two from drifting apart, so a frame
without a face for one is a frame without a face for the other, and person k is the same person in
both stores.

A video without provided crops goes through two passes:

1. `track_faces`: decode every frame; every `every_n`-th frame the detector (`DETECTORS`) finds every
   face; `FaceTracker` links detections into tracks (greedy IoU / centre-distance matching, so the
   result is deterministic) and holds each box until the next detection; on every frame dlib's
   68-point landmarks are fitted inside each tracked box. Only boxes, five alignment points and the
   inner-lip ratio are kept (a few floats per face and frame), never pixels.
2. `assign_persons` turns tracks into persons: with a `side` (Aff-Wild2's `_left`/`_right` ids,
   `Video.side`) person 0 is, per frame, the face on that side; otherwise tracks are ranked by the
   number of frames they cover and the first `max_faces` become persons 0, 1, ... (0 = the face seen
   longest). `iter_face_crops` then decodes again and cuts each person's crop: with `align:
   landmarks` the five points (eye centres, nose tip, mouth corners) are mapped onto a canonical
   template by a least-squares similarity transform (`align_face`), the style of Aff-Wild2's
   `cropped_aligned` images (112 x 112, faces aligned on five landmarks); with `align: none`, a
   square around the box.

Provided crops (Aff-Wild2's `cropped_aligned`) are one folder per video with `%05d.jpg` files named by
1-based frame number; a missing file means no face in that frame (`crop_files`).
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from extractors import dlib_models
from extractors.base import ExtractorError, VideoError
from pipeline.records import Video

CROP_NAME = re.compile(r"^(\d+)\.jpg$")

# Canonical five-point templates, as fractions of the square crop (x, y): the image-left eye centre,
# the image-right eye centre, the nose tip, the image-left and image-right mouth corners.
# "arcface": the 112 x 112 reference of the ArcFace/InsightFace alignment (RetinaFace's five points),
# the convention of 112-pixel aligned face crops such as Aff-Wild2's `cropped_aligned`.
TEMPLATES: dict[str, np.ndarray] = {
    "arcface": np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]]) / 112.0,
}
ALIGN_MODES = ("landmarks", "none")


@dataclass
class FaceDetectorConfig:
    """How faces are found, followed and cropped in videos without provided crops.

    name: "dlib-hog" (default: dlib's frontal-face HOG detector; finds 6 of 6 faces and no false
        one on facenet-pytorch's multiface.jpg, where the Haar cascade reports 8-9 boxes, with
        faces boxed twice and a box on no face);
        "dlib-cnn" (dlib's MMOD CNN: more turned and occluded faces, but seconds to tens of
        seconds per 1080p frame on a CPU; a CUDA build of dlib runs it on the GPU); "opencv-haar" (OpenCV's shipped
        frontal cascade: the fallback that needs no dlib, with `align: none`).
    every_n: run the detector on every n-th frame; tracked boxes are held in between.
    smooth: weight of a new detection in the exponential box smoothing (1 = no smoothing).
    max_missed: detection rounds a track that lost its face is kept for re-matching (its frames
        have no face meanwhile: a held stale box would embed background and call it a face).
    margin: `align: none` only: extra border around the box, as a fraction of its size, before squaring.
    detect_size: long side (px) of the frame as the detector sees it: larger frames are downscaled,
        smaller ones upscaled by at most `max_upscale`. dlib's HOG window is 80 px, so a face must be
        80 px at this size; 1920 keeps 1080p frames whole (faces of ~7 % of the frame height).
    max_upscale: the most a small frame is enlarged for the detector (2: a 160 x 120 frame is seen
        at 320 x 240, so its 40-px faces reach the HOG window).
    min_face: smallest face side accepted, as a fraction of the frame's short side.
    threshold: dlib detectors: the score a detection needs (HOG's `adjust_threshold`, CNN confidence).
    align: "landmarks" (five-point similarity alignment onto `template`, `crop_size` px square) |
        "none" (a square crop around the box, `margin`).
    template: a name of `TEMPLATES`. crop_size: side of the aligned crop (Aff-Wild2's crops: 112).
    max_faces: how many persons are followed per video: 1 = the annotated subject (the face on the
        record's side for `_left`/`_right` ids, else the face seen longest); k = the k faces seen
        longest; 0 = every tracked face.
    """

    name: str = "dlib-hog"
    every_n: int = 5
    smooth: float = 0.6
    max_missed: int = 5
    margin: float = 0.2
    detect_size: int = 1920
    max_upscale: float = 2.0
    min_face: float = 0.04
    threshold: float = 0.0
    align: str = "landmarks"
    template: str = "arcface"
    crop_size: int = 112
    max_faces: int = 1

    def validate(self, owner: str = "face") -> None:
        """`owner` names the params section in messages (face / reliability)."""
        if self.name not in DETECTORS:
            raise ExtractorError(f"{owner} detector.name {self.name!r}: use one of {sorted(DETECTORS)}")
        for key in ("every_n", "detect_size", "crop_size"):
            if int(getattr(self, key)) < 1:
                raise ExtractorError(f"{owner} detector.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("max_missed", "max_faces"):
            if int(getattr(self, key)) < 0:
                raise ExtractorError(f"{owner} detector.{key} must be >= 0, got {getattr(self, key)}")
        if not 0 < self.smooth <= 1:
            raise ExtractorError(f"{owner} detector.smooth must be in (0, 1], got {self.smooth}")
        if self.margin < 0 or not 0 <= self.min_face < 1:
            raise ExtractorError(f"{owner} detector: need margin >= 0 and 0 <= min_face < 1, "
                                 f"got {self.margin}, {self.min_face}")
        if self.max_upscale < 1:
            raise ExtractorError(f"{owner} detector.max_upscale must be >= 1, got {self.max_upscale}")
        if self.align not in ALIGN_MODES:
            raise ExtractorError(f"{owner} detector.align {self.align!r}: use one of {', '.join(ALIGN_MODES)}")
        if self.template not in TEMPLATES:
            raise ExtractorError(f"{owner} detector.template {self.template!r}: use one of {sorted(TEMPLATES)}")

    def identity(self, landmarks: bool = False) -> dict:
        """The versions and model files the detector, tracker and alignment ran with (for store
        fingerprints): dlib's version and model digests, or OpenCV's version for the Haar cascade.
        `landmarks`: the caller fits landmarks even without alignment (the reliability mouth)."""
        out: dict = {}
        kinds = [k for k, used in (("cnn", self.name == "dlib-cnn"),
                                   ("landmarks68", self.align == "landmarks" or landmarks)) if used]
        if kinds or self.name.startswith("dlib-"):
            out.update(dlib_models.identity(*kinds))
        if self.name == "opencv-haar":
            import cv2

            out["opencv"] = str(cv2.__version__)
        if self.align == "landmarks":
            out["template"] = np.round(TEMPLATES[self.template], 6).tolist()
        return out

    def check_available(self, owner: str = "face", landmarks: bool = False) -> None:
        """Fail now (ExtractorError naming the fix) when the detector or the landmark model cannot load."""
        DETECTORS[self.name](self)
        if self.align == "landmarks" or landmarks:
            dlib_models.shared_predictor(f"{owner} detector.align 'landmarks' (or the landmark mouth)")


# ------------------------------------------------------------------------------------- detectors
def _detector_view(rgb: np.ndarray, cfg: FaceDetectorConfig) -> tuple[np.ndarray, float]:
    """The frame as the detector sees it (long side `detect_size`, upscaled at most `max_upscale`)
    and the scale factor from frame to view."""
    import cv2

    h, w = rgb.shape[:2]
    s = min(cfg.max_upscale, cfg.detect_size / max(h, w))
    if abs(s - 1) < 1e-9:
        return rgb, 1.0
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR), s


def _keep(boxes: list[list[float]], scale: float, shape: tuple[int, ...], min_face: float) -> np.ndarray:
    """Boxes in frame pixels, at least `min_face` of the short side, ordered by (x0, y0)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4) / scale
    side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    b = b[side >= min_face * min(shape[:2])]
    return b[np.lexsort((b[:, 1], b[:, 0]))]


class HaarDetector:
    """OpenCV's shipped frontal-face Haar cascade (no download, no dlib). Every face, as [k, 4].

    One instance per video/thread: CascadeClassifier is not documented as thread-safe.
    """

    def __init__(self, cfg: FaceDetectorConfig):
        import cv2

        self.cv2, self.cfg = cv2, cfg
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved Haar cascades out of the main wheel
            raise ExtractorError(f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5): "
                                 "pip install 'opencv-python-headless>=4.8,<5', or use face crops (source 'crops')")
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ExtractorError(f"{path}: cannot load OpenCV's Haar cascade; reinstall opencv-python-headless")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        cv2 = self.cv2
        view, s = _detector_view(rgb, self.cfg)
        gray = cv2.equalizeHist(cv2.cvtColor(view, cv2.COLOR_RGB2GRAY))
        min_side = max(16, int(self.cfg.min_face * min(gray.shape)))
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        return _keep([[x, y, x + bw, y + bh] for x, y, bw, bh in found], s, rgb.shape, self.cfg.min_face)


class DlibHogDetector:
    """dlib's frontal-face HOG + linear SVM detector (compiled into dlib). Every face, as [k, 4]."""

    def __init__(self, cfg: FaceDetectorConfig):
        self.cfg, self.detector = cfg, dlib_models.hog_detector()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        view, s = _detector_view(rgb, self.cfg)
        rects, _scores, _kinds = self.detector.run(np.ascontiguousarray(view), 0, float(self.cfg.threshold))
        return _keep([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], s, rgb.shape,
                     self.cfg.min_face)


class DlibCnnDetector:
    """dlib's MMOD CNN face detector (`mmod_human_face_detector.dat`). Every face, as [k, 4]."""

    def __init__(self, cfg: FaceDetectorConfig):
        self.cfg, self.detector = cfg, dlib_models.cnn_detector()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        view, s = _detector_view(rgb, self.cfg)
        found = self.detector(np.ascontiguousarray(view), 0)
        boxes = [[d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1] for d in found
                 if d.confidence >= self.cfg.threshold]
        return _keep(boxes, s, rgb.shape, self.cfg.min_face)


DETECTORS: dict[str, Callable[[FaceDetectorConfig], Callable[[np.ndarray], np.ndarray]]] = {
    "dlib-hog": DlibHogDetector, "dlib-cnn": DlibCnnDetector, "opencv-haar": HaarDetector}


# -------------------------------------------------------------------------------------- tracking
def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _centre_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance of the box centres in units of `a`'s larger side."""
    size = max(a[2] - a[0], a[3] - a[1], 1e-9)
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / size)


@dataclass
class _Track:
    tid: int
    box: np.ndarray
    missed: int = 0  # detection rounds since the last match


class FaceTracker:
    """Detect every n-th frame, link detections to tracks, smooth boxes, hold them in between.

    At a detection frame, pairs (track, detection) with IoU >= `iou_min` or centres closer than
    `max_shift` of the track's box side are matched greedily, best IoU first (ties: nearer centre,
    older track, detection order), so the result never depends on anything but the inputs. A
    matched track's box is smoothed towards its detection; an unmatched detection starts a new track
    (ids count up from 0); an unmatched track shows no box until it is matched again and is dropped
    after `max_missed` rounds.
    """

    def __init__(self, detect: Callable[[np.ndarray], np.ndarray], every_n: int, smooth: float,
                 max_missed: int = 5, iou_min: float = 0.3, max_shift: float = 1.0):
        self.detect, self.every_n, self.smooth = detect, every_n, smooth
        self.max_missed, self.iou_min, self.max_shift = max_missed, iou_min, max_shift
        self.tracks: list[_Track] = []
        self.next_id = 0

    def __call__(self, index: int, rgb: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(track id, box) of every face shown in frame `index`, by track id."""
        if index % self.every_n == 0:
            self.update(np.asarray(self.detect(rgb), np.float64).reshape(-1, 4))
        return [(t.tid, t.box) for t in self.tracks if t.missed == 0]

    def update(self, dets: np.ndarray) -> None:
        pairs = []
        for ti, t in enumerate(self.tracks):
            for di, d in enumerate(dets):
                iou, dist = box_iou(t.box, d), _centre_distance(t.box, d)
                if iou >= self.iou_min or dist <= self.max_shift:
                    pairs.append((-iou, dist, t.tid, di, ti))
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _, _, _, di, ti in sorted(pairs):
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            t = self.tracks[ti]
            t.box = self.smooth * dets[di] + (1.0 - self.smooth) * t.box if t.missed == 0 else dets[di].copy()
            t.missed = 0
        for ti, t in enumerate(self.tracks):
            if ti not in used_t:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for di, d in enumerate(dets):
            if di not in used_d:
                self.tracks.append(_Track(self.next_id, d.copy()))
                self.next_id += 1


# ------------------------------------------------------------------------------ landmarks, align
def five_points(points68: np.ndarray) -> np.ndarray:
    """[..., 68, 2] dlib landmarks -> [..., 5, 2] alignment points in the order of `TEMPLATES`:
    image-left eye centre (36-41), image-right eye centre (42-47), nose tip (30), mouth corners (48, 54)."""
    p = np.asarray(points68, np.float64)
    return np.stack([p[..., 36:42, :].mean(-2), p[..., 42:48, :].mean(-2), p[..., 30, :], p[..., 48, :],
                     p[..., 54, :]], axis=-2)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, translation; no reflection) that maps the
    points `src` [k, 2] onto `dst` [k, 2] in the least-squares sense (Umeyama's closed form)."""
    s, d = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = s.mean(0), d.mean(0)
    s0, d0 = s - ms, d - md
    u, sv, vt = np.linalg.svd(d0.T @ s0 / len(s))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    var = (s0 ** 2).sum() / len(s)
    scale = float(np.trace(np.diag(sv) @ sign) / var) if var > 0 else 0.0
    return np.hstack([scale * rot, (md - scale * rot @ ms)[:, None]])


def align_face(image: np.ndarray, points: np.ndarray, template: np.ndarray | str = "arcface",
               size: int = 112) -> np.ndarray | None:
    """The face whose five points (`five_points` order) are `points`, warped so they land on
    `template` (fractions of the crop, or a `TEMPLATES` name) in a `size` x `size` crop.

    Outside the frame is black. A face larger than the crop is first shrunk with area averaging
    (warpAffine alone would alias); None when the points are degenerate (all at one place).
    """
    import cv2

    dst = (TEMPLATES[template] if isinstance(template, str) else np.asarray(template, np.float64)) * size
    m = similarity_transform(points, dst)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if not np.isfinite(m).all() or scale <= 0:
        return None
    if scale < 0.8:
        inv = cv2.invertAffineTransform(m)
        corners = inv @ np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64).T
        h, w = image.shape[:2]
        x0, y0 = (max(0, int(np.floor(v)) - 1) for v in corners.min(1))
        x1, y1 = min(w, int(np.ceil(corners[0].max())) + 1), min(h, int(np.ceil(corners[1].max())) + 1)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            roi = image[y0:y1, x0:x1]
            nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            image = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
            to_roi = np.array([[(x1 - x0) / nw, 0, x0], [0, (y1 - y0) / nh, y0], [0, 0, 1]], np.float64)
            m = m @ to_roi
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def square_crop_bounds(shape: tuple[int, ...], box: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixel bounds of `square_crop` in a frame of `shape` (H, W, ...)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * (1 + margin) / 2
    h, w = shape[:2]
    a, b = int(max(0, round(cx - half))), int(min(w, round(cx + half)))
    c, d = int(max(0, round(cy - half))), int(min(h, round(cy + half)))
    return a, c, max(b, a + 1), max(d, c + 1)


def square_crop(rgb: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """Square crop around `box` enlarged by `margin`, clipped to the frame (HWC uint8)."""
    a, c, b, d = square_crop_bounds(rgb.shape, box, margin)
    return rgb[c:d, a:b]


# -------------------------------------------------------------------------- pass 1: the tracks
@dataclass
class FaceTracks:
    """Every tracked face of one video: one row per (frame, face), rows ordered by (frame, id).

    decoded: frames decoded (capped at the limit); frame_size: (H, W) of the first frame;
    frame [R]; track [R] (tracker ids); person [R] (-1 before `assign_persons`, then 0..P-1);
    box [R, 4] (x0, y0, x1, y1, upright frame pixels); points [R, 5, 2] (`five_points`; NaN
    without landmarks); lip [R] (inner-lip aspect ratio of the 68 landmarks, NaN without them);
    persons: P (after `assign_persons`).
    """

    decoded: int
    frame_size: tuple[int, int]
    frame: np.ndarray
    track: np.ndarray
    box: np.ndarray
    points: np.ndarray
    lip: np.ndarray
    person: np.ndarray
    persons: int = 0

    def take(self, rows: np.ndarray, person: np.ndarray, persons: int) -> "FaceTracks":
        order = np.lexsort((person, self.frame[rows]))
        rows, person = rows[order], person[order]
        return replace(self, frame=self.frame[rows], track=self.track[rows], box=self.box[rows],
                       points=self.points[rows], lip=self.lip[rows], person=person.astype(np.int64),
                       persons=persons)


def track_faces(media_path: str, cfg: FaceDetectorConfig, limit: int | None = None,
                landmarks: bool = False) -> FaceTracks:
    """Pass 1 over `media_path` (the first `limit` frames): every face, tracked (see module docstring).

    Landmarks are fitted when `cfg.align` is "landmarks" or `landmarks` is set. The detector is
    built here, one per call, since detectors are not shared across threads.
    """
    import cv2

    from extractors.mouth import inner_lip_ratio
    from pipeline.media import iter_frames

    tracker = FaceTracker(DETECTORS[cfg.name](cfg), cfg.every_n, cfg.smooth, cfg.max_missed)
    fit = cfg.align == "landmarks" or landmarks
    predictor = dlib_models.shared_predictor() if fit else None
    dlib = dlib_models.require("landmarks68", "face landmarks") if fit else None
    frames, tracks, boxes, points, lips = [], [], [], [], []
    decoded, size = 0, (0, 0)
    for fb in iter_frames(media_path, batch_size=16):
        for img, i in zip(fb.images, fb.indices):
            if limit is not None and i >= limit:
                break
            if decoded == 0:
                size = (int(img.shape[0]), int(img.shape[1]))
            decoded = int(i) + 1
            shown = tracker(int(i), img)
            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if shown and fit else None
            for tid, box in shown:
                frames.append(int(i))
                tracks.append(tid)
                boxes.append(box)
                if gray is not None:
                    x0, y0, x1, y1 = (int(round(v)) for v in box)
                    shape = predictor(gray, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
                    p68 = np.array([(shape.part(k).x, shape.part(k).y) for k in range(68)], np.float64)
                    points.append(five_points(p68))
                    lips.append(float(inner_lip_ratio(p68)))
                else:
                    points.append(np.full((5, 2), np.nan))
                    lips.append(np.nan)
        if limit is not None and decoded >= limit:
            break
    r = len(frames)
    return FaceTracks(decoded, size, np.asarray(frames, np.int64), np.asarray(tracks, np.int64),
                      np.asarray(boxes, np.float32).reshape(r, 4), np.asarray(points, np.float32).reshape(r, 5, 2),
                      np.asarray(lips, np.float32), np.full(r, -1, np.int64))


def assign_persons(tracks: FaceTracks, max_faces: int = 1, side: str | None = None) -> FaceTracks:
    """Persons from tracks (see the module docstring); rows of faces that are no person are dropped.

    `side` ("left"/"right"; with `max_faces` 1): per frame, with two faces or more the one whose
    centre is furthest to that side, with one face that face when its centre is on that half of the
    frame. Otherwise tracks are ranked by frames covered (ties: first frame, mean centre x, id) and
    the first `max_faces` (0: all) become persons 0, 1, ...
    """
    cx = (tracks.box[:, 0] + tracks.box[:, 2]) / 2
    if side is not None and max_faces == 1:
        half = tracks.frame_size[1] / 2
        keep = []
        for f in np.unique(tracks.frame):
            rows = np.flatnonzero(tracks.frame == f)
            pick = rows[np.argmin(cx[rows])] if side == "left" else rows[np.argmax(cx[rows])]
            if len(rows) > 1 or (cx[pick] < half) == (side == "left"):
                keep.append(pick)
        rows = np.asarray(keep, np.int64)
        return tracks.take(rows, np.zeros(len(rows), np.int64), 1 if len(rows) else 0)
    ids = np.unique(tracks.track)
    ranked = sorted(ids, key=lambda t: (-int((tracks.track == t).sum()), int(tracks.frame[tracks.track == t].min()),
                                        float(cx[tracks.track == t].mean()), int(t)))
    if max_faces > 0:
        ranked = ranked[:max_faces]
    person_of = {int(t): p for p, t in enumerate(ranked)}
    rows = np.flatnonzero(np.isin(tracks.track, ranked))
    return tracks.take(rows, np.array([person_of[int(t)] for t in tracks.track[rows]], np.int64), len(ranked))


_TRACK_KEYS = ("name", "every_n", "smooth", "max_missed", "detect_size", "max_upscale", "min_face", "threshold")
_tracks_cache: "OrderedDict[tuple, FaceTracks]" = OrderedDict()
_tracks_lock = threading.Lock()
TRACKS_CACHE_SIZE = 8


def persons_of(media_path: str, cfg: FaceDetectorConfig, limit: int | None = None, side: str | None = None,
               landmarks: bool = False) -> FaceTracks:
    """`track_faces` then `assign_persons` with the config's `max_faces`.

    The tracks of the last few (file, detector settings) are kept in memory, so the face and the
    reliability extractors of one process (`affcache predict`), and the `_left`/`_right` ids of one
    file, run pass 1 once. The key holds the file's size and modification time and every setting
    pass 1 reads; a hit returns the same result the computation would (it is deterministic).
    """
    st = os.stat(media_path)
    fit = cfg.align == "landmarks" or landmarks
    key = (os.path.realpath(media_path), st.st_size, st.st_mtime_ns, limit, fit,
           tuple(getattr(cfg, k) for k in _TRACK_KEYS))
    with _tracks_lock:
        tracks = _tracks_cache.get(key)
        if tracks is not None:
            _tracks_cache.move_to_end(key)
    if tracks is None:
        tracks = track_faces(media_path, cfg, limit, landmarks)
        with _tracks_lock:
            _tracks_cache[key] = tracks
            while len(_tracks_cache) > TRACKS_CACHE_SIZE:
                _tracks_cache.popitem(last=False)
    return assign_persons(tracks, cfg.max_faces, side)


# -------------------------------------------------------------------------- pass 2: the crops
def crop_files(video: Video) -> dict[int, Path]:
    """0-based frame index -> crop file of `video.crops_dir` (`%05d.jpg`, 1-based names; a gap = no face).

    A video that should have crops but has none is a data bug, hence a VideoError naming the fix.
    """
    if not video.crops_dir:
        raise VideoError(f"{video.media_path}: source is 'crops' but video {video.video_id} has no "
                         "crops_dir; set source to 'auto'/'detect' or provide cropped_aligned frames")
    d = Path(video.crops_dir)
    if not d.is_dir():
        raise VideoError(f"{d}: crops folder of video {video.video_id} not found; restore it, or drop "
                         "crops_dir from the index to use face detection")
    files = {}
    for p in d.iterdir():
        m = CROP_NAME.match(p.name)
        if m and int(m.group(1)) >= 1:
            files[int(m.group(1)) - 1] = p
    return dict(sorted(files.items()))


@dataclass
class TrackedBatch:
    """Crops of one batch of decoded frames.

    indices: the frame of each crop; persons: its person (0..persons-1); crops: HWC uint8 RGB
    (aligned `crop_size` squares, or square box crops); boxes: the tracked face box of each (upright
    frame pixels); decoded: frames in the video (capped at the limit), i.e. the rows per person;
    persons: persons in the video.
    """

    indices: list[int]
    crops: list[np.ndarray]
    decoded: int
    boxes: list[np.ndarray] = field(default_factory=list)
    persons_of: list[int] = field(default_factory=list)
    persons: int = 0


def face_crop(img: np.ndarray, box: np.ndarray, points: np.ndarray, cfg: FaceDetectorConfig) -> np.ndarray:
    """The crop of one face: aligned on its points, or (align none, or degenerate points) a square
    around its box."""
    if cfg.align == "landmarks" and np.isfinite(points).all():
        crop = align_face(img, points, cfg.template, cfg.crop_size)
        if crop is not None:
            return crop
    return np.ascontiguousarray(square_crop(img, box, cfg.margin))


def iter_face_crops(media_path: str, cfg: FaceDetectorConfig, batch_size: int, limit: int | None = None,
                    side: str | None = None, tracks: FaceTracks | None = None) -> Iterator[TrackedBatch]:
    """Every person's face crop, frame by frame, in batches of decoded frames (pass 2).

    `tracks`: the persons of `persons_of` (computed here when not given). One batch per decoded
    batch up to the last frame with a face (callers learn `decoded` and `persons` from any batch);
    a video without any face yields one empty batch.
    """
    from pipeline.media import iter_frames

    if tracks is None:
        tracks = persons_of(media_path, cfg, limit, side)
    by_frame: dict[int, list[int]] = {}
    for r, f in enumerate(tracks.frame):
        by_frame.setdefault(int(f), []).append(r)
    last = max(by_frame) if by_frame else -1
    if last < 0:
        yield TrackedBatch([], [], tracks.decoded, persons=tracks.persons)
        return
    for fb in iter_frames(media_path, batch_size=batch_size):
        idx, crops, boxes, persons = [], [], [], []
        for img, i in zip(fb.images, fb.indices):
            for r in by_frame.get(int(i), ()):
                idx.append(int(i))
                crops.append(face_crop(img, tracks.box[r], tracks.points[r], cfg))
                boxes.append(tracks.box[r])
                persons.append(int(tracks.person[r]))
        yield TrackedBatch(idx, crops, tracks.decoded, boxes, persons, tracks.persons)
        if len(fb.indices) and int(fb.indices[-1]) >= last:
            break
