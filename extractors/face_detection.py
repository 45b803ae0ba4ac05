"""Face detection, tracking and cropping: what the face and reliability extractors share.

Both need the same faces: the face extractor embeds them, the reliability extractor measures their
mouths and coverage. One detector config (`FaceDetectorConfig`, nested as `detector` in both configs),
one tracker and one frames -> tracked boxes -> crops iterator keep the two from drifting apart, so a
frame without a face for one is a frame without a face for the other.

Provided crops (Aff-Wild2's `cropped_aligned`) are one folder per video with `%05d.jpg` files named by
1-based frame number; a missing file means no face in that frame (`crop_files`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from extractors.base import ExtractorError, VideoError
from pipeline.records import Video

CROP_NAME = re.compile(r"^(\d+)\.jpg$")


@dataclass
class FaceDetectorConfig:
    """How faces are found in videos without provided crops (published defaults).

    name: "opencv-haar" = OpenCV's shipped frontal-face Haar cascade. Chosen because it is offline
        from PyPI with no weight download: facenet-pytorch (MTCNN) pins torch<2.3 / numpy<2, and
        mediapipe downloads its models at run time. It is a plug-in: better detectors can be added to
        `DETECTORS` without touching the rest.
    every_n: run the detector on every n-th frame and reuse the (smoothed) box in between.
    smooth: weight of a new detection in the exponential box smoothing (1 = no smoothing).
    margin: extra border around the detected box, as a fraction of its size, before squaring it.
    detect_size: long side (px) of the downscaled frame the detector sees (speed; Haar is O(pixels)).
        960 keeps faces of ~5 % of a 1080p frame above the cascade's 24 px template.
    min_face: smallest face side accepted, as a fraction of the frame's short side.
    """

    name: str = "opencv-haar"
    every_n: int = 5
    smooth: float = 0.6
    margin: float = 0.2
    detect_size: int = 960
    min_face: float = 0.04

    def validate(self, owner: str = "face") -> None:
        """`owner` names the params section in messages (face / reliability)."""
        if self.name not in DETECTORS:
            raise ExtractorError(f"{owner} detector.name {self.name!r}: use one of {sorted(DETECTORS)}")
        for key in ("every_n", "detect_size"):
            if int(getattr(self, key)) < 1:
                raise ExtractorError(f"{owner} detector.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.smooth <= 1:
            raise ExtractorError(f"{owner} detector.smooth must be in (0, 1], got {self.smooth}")
        if self.margin < 0 or not 0 <= self.min_face < 1:
            raise ExtractorError(f"{owner} detector: need margin >= 0 and 0 <= min_face < 1, "
                                 f"got {self.margin}, {self.min_face}")


class HaarDetector:
    """OpenCV's shipped frontal-face Haar cascade (no download). Returns the largest face or None.

    One instance per video/thread: CascadeClassifier is not documented as thread-safe.
    """

    def __init__(self, cfg: FaceDetectorConfig):
        import cv2

        self.cv2 = cv2
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved Haar cascades out of the main wheel
            raise ExtractorError(f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5): "
                                 "pip install 'opencv-python-headless>=4.8,<5', or use face crops (source 'crops')")
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ExtractorError(f"{path}: cannot load OpenCV's Haar cascade; reinstall opencv-python-headless")
        self.detect_size, self.min_face = cfg.detect_size, cfg.min_face

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        cv2 = self.cv2
        h, w = rgb.shape[:2]
        s = min(1.0, self.detect_size / max(h, w))
        small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        min_side = max(16, int(self.min_face * min(gray.shape)))
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        if len(boxes) == 0:
            return None
        x, y, bw, bh = max(boxes, key=lambda b: b[2] * b[3])
        return np.array([x, y, x + bw, y + bh], dtype=np.float64) / s


DETECTORS: dict[str, Callable[[FaceDetectorConfig], Callable[[np.ndarray], np.ndarray | None]]] = {"opencv-haar": HaarDetector}


class BoxTracker:
    """Detect every n-th frame, smooth boxes exponentially, reuse the last box in between.

    A failed detection ends the track: frames until the next successful detection have no face
    (holding a stale box would embed background and call it a face).
    """

    def __init__(self, detect: Callable[[np.ndarray], np.ndarray | None], every_n: int, smooth: float):
        self.detect, self.every_n, self.smooth = detect, every_n, smooth
        self.box: np.ndarray | None = None

    def __call__(self, index: int, rgb: np.ndarray) -> np.ndarray | None:
        if index % self.every_n == 0:
            det = self.detect(rgb)
            if det is None:
                self.box = None
            elif self.box is None or box_iou(det, self.box) < 0.3:  # new track (or another person)
                self.box = det
            else:
                self.box = self.smooth * det + (1.0 - self.smooth) * self.box
        return self.box


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def square_crop_bounds(shape: tuple[int, ...], box: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixel bounds of `square_crop` in a frame of `shape` (H, W, ...).

    Exposed so that a caller holding only the crop can map the detector's box into it (the
    reliability extractor places dlib's landmark rectangle there)."""
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
    """Faces found in one batch of decoded frames.

    indices: frame indices with a face; crops: their square crops (HWC uint8 RGB views of the upright
    frame); boxes: the tracked face box of each (pixels of the upright frame, before the margin);
    decoded: frames decoded so far (capped at the limit), i.e. the rows this video has at least;
    origins: each crop's top-left corner (x, y) in the frame (`box - origin` is the box in crop pixels).
    """

    indices: list[int]
    crops: list[np.ndarray]
    decoded: int
    boxes: list[np.ndarray] = field(default_factory=list)  # the tracked (x0, y0, x1, y1) of each crop
    origins: list[tuple[int, int]] = field(default_factory=list)


def iter_face_crops(media_path: str, cfg: FaceDetectorConfig, batch_size: int,
                    limit: int | None = None) -> Iterator[TrackedBatch]:
    """Decode `media_path` in batches, track the face (`BoxTracker`) and crop it, frame by frame.

    One batch per decoded batch, also when it holds no face (callers learn `decoded` from it); only
    the first `limit` frames are looked at when a limit is given. The detector is built here, one per
    call, since detectors are not shared across threads.
    """
    from pipeline.media import iter_frames

    track = BoxTracker(DETECTORS[cfg.name](cfg), cfg.every_n, cfg.smooth)
    decoded = 0
    for fb in iter_frames(media_path, batch_size=batch_size):
        idx, crops, boxes, origins = [], [], [], []
        for img, i in zip(fb.images, fb.indices):
            if limit is not None and i >= limit:
                break
            box = track(int(i), img)
            if box is not None:
                a, c, b, d = square_crop_bounds(img.shape, box, cfg.margin)
                idx.append(int(i))
                crops.append(img[c:d, a:b])
                boxes.append(np.asarray(box, np.float32))
                origins.append((a, c))
        decoded = int(fb.indices[-1]) + 1 if len(fb.indices) else decoded
        if limit is not None:
            decoded = min(decoded, limit)
        yield TrackedBatch(idx, crops, decoded, boxes, origins)
        if limit is not None and decoded >= limit:
            break
