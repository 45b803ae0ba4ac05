"""Face detection, tracking and cropping shared by the face and reliability extractors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extractors.base import ExtractorError, VideoError
from extractors.face_detection import (
    DETECTORS,
    BoxTracker,
    FaceDetectorConfig,
    box_iou,
    crop_files,
    iter_face_crops,
    square_crop,
)
from pipeline.records import Video
from tiny_models import make_video


def test_box_iou() -> None:
    a = np.array([0.0, 0.0, 10.0, 10.0])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, np.array([5.0, 0.0, 15.0, 10.0])) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([20.0, 20.0, 30.0, 30.0])) == 0.0
    assert box_iou(np.zeros(4), np.zeros(4)) == 0.0


def test_square_crop_is_square_with_margin_and_clipped() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    assert square_crop(img, np.array([90.0, 40.0, 110.0, 60.0]), 0.5).shape == (30, 30, 3)
    edge = square_crop(img, np.array([-10.0, -10.0, 10.0, 10.0]), 0.0)
    assert edge.shape == (10, 10, 3)


def test_tracker_detects_every_n_smooths_and_drops_lost_faces() -> None:
    dets = {0: np.array([0.0, 0.0, 10.0, 10.0]), 2: np.array([2.0, 0.0, 12.0, 10.0]), 4: None}
    calls = []

    def detect(img: np.ndarray) -> np.ndarray | None:
        calls.append(int(img[0, 0, 0]))
        return dets[int(img[0, 0, 0])]

    track = BoxTracker(detect, every_n=2, smooth=0.5)
    boxes = [track(i, np.full((4, 4, 3), i, np.uint8)) for i in range(6)]
    assert calls == [0, 2, 4]
    assert np.allclose(boxes[1], [0, 0, 10, 10]) and np.allclose(boxes[2], [1, 0, 11, 10])
    assert boxes[4] is None and boxes[5] is None


def test_crop_files_maps_one_based_names_and_explains_missing_folders(tmp_path: Path) -> None:
    d = tmp_path / "crops"
    d.mkdir()
    for name in ("00001.jpg", "00003.jpg", "00000.jpg", "notes.txt"):
        (d / name).write_bytes(b"")
    video = Video("v", "v.mp4", 10.0, 3, 0.3, False, "train", crops_dir=str(d))
    assert list(crop_files(video)) == [0, 2]
    with pytest.raises(VideoError, match="nope: crops folder of video v not found"):
        crop_files(Video("v", "v.mp4", 10.0, 3, 0.3, False, "train", crops_dir=str(tmp_path / "nope")))
    with pytest.raises(VideoError, match="no crops_dir"):
        crop_files(Video("w", "w.mp4", 10.0, 3, 0.3, False, "train"))


def test_config_validates_every_field() -> None:
    FaceDetectorConfig().validate()
    assert set(DETECTORS) >= {FaceDetectorConfig().name}
    for bad in ({"name": "mtcnn"}, {"every_n": 0}, {"detect_size": 0}, {"smooth": 0.0}, {"margin": -0.1},
                {"min_face": 1.0}):
        with pytest.raises(ExtractorError, match="detector"):
            FaceDetectorConfig(**bad).validate()


def test_iter_face_crops_reports_decoded_frames_and_stops_at_the_limit(tmp_path: Path) -> None:
    media = make_video(tmp_path / "clip.mp4", seconds=2.0, fps=10, audio=False)
    batches = list(iter_face_crops(str(media), FaceDetectorConfig(), batch_size=4, limit=7))
    assert [b.decoded for b in batches] == [4, 7]
    assert all(len(b.indices) == len(b.crops) and all(i < 7 for i in b.indices) for b in batches)
    full = list(iter_face_crops(str(media), FaceDetectorConfig(), batch_size=8))
    assert full[-1].decoded == 20
