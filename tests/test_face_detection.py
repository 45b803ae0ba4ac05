"""Face detection, tracking and cropping shared by the face and reliability extractors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extractors.base import ExtractorError, VideoError
from extractors.face_detection import (
    DETECTORS,
    TEMPLATES,
    FaceDetectorConfig,
    FaceTracker,
    FaceTracks,
    align_face,
    assign_persons,
    box_iou,
    crop_files,
    iter_face_crops,
    similarity_transform,
    square_crop,
    track_faces,
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


def test_tracker_detects_every_n_smooths_holds_and_keeps_ids() -> None:
    """Detection every n-th frame, boxes held in between and smoothed; a lost face shows no box but
    keeps its id when it comes back; a second face gets its own id."""
    a, b = np.array([0.0, 0.0, 10.0, 10.0]), np.array([50.0, 0.0, 60.0, 10.0])
    dets = {0: [a], 2: [a + [2, 0, 2, 0]], 4: [], 6: [a + [2, 0, 2, 0], b], 8: [b, a + [2, 0, 2, 0]]}
    calls = []

    def detect(img: np.ndarray) -> np.ndarray:
        calls.append(int(img[0, 0, 0]))
        return np.array(dets[int(img[0, 0, 0])]).reshape(-1, 4)

    track = FaceTracker(detect, every_n=2, smooth=0.5, max_missed=2)
    shown = [track(i, np.full((4, 4, 3), i, np.uint8)) for i in range(9)]
    assert calls == [0, 2, 4, 6, 8]
    assert [t for t, _ in shown[1]] == [0] and np.allclose(shown[1][0][1], a)
    assert np.allclose(shown[2][0][1], [1, 0, 11, 10])  # smoothed half-way towards the detection
    assert shown[4] == [] and shown[5] == []  # lost: no stale box
    assert [t for t, _ in shown[6]] == [0, 1]  # re-matched after the miss (same id); b is new
    assert np.allclose(shown[6][0][1], [2, 0, 12, 10])  # no smoothing with the stale box
    assert [t for t, _ in shown[8]] == [0, 1] and np.allclose(shown[8][1][1], b)  # detection order is irrelevant


def test_tracker_drops_a_track_after_max_missed_rounds() -> None:
    seq = iter([[[0.0, 0.0, 10.0, 10.0]], [], [], [[0.0, 0.0, 10.0, 10.0]]])
    track = FaceTracker(lambda img: np.array(next(seq)).reshape(-1, 4), every_n=1, smooth=1.0, max_missed=1)
    assert [[t for t, _ in track(i, np.zeros((2, 2, 3), np.uint8))] for i in range(4)] == [[0], [], [], [1]]


def _tracks(frames, ids, boxes, size=(100, 200)) -> FaceTracks:
    r = len(frames)
    return FaceTracks(max(frames) + 1, size, np.array(frames), np.array(ids), np.array(boxes, np.float32),
                      np.full((r, 5, 2), np.nan, np.float32), np.full(r, np.nan, np.float32), np.full(r, -1))


def test_assign_persons_ranks_tracks_and_takes_a_side() -> None:
    left, right = [10, 40, 30, 60], [150, 40, 170, 60]
    # track 7 (right) is seen in 3 frames, track 3 (left) in 2, track 9 (left, small) in 1
    t = _tracks([0, 0, 1, 1, 2, 2], [3, 7, 7, 9, 3, 7], [left, right, right, [60, 40, 70, 50], left, right])
    ranked = assign_persons(t, max_faces=0)
    assert ranked.persons == 3 and ranked.frame.tolist() == [0, 0, 1, 1, 2, 2]
    assert ranked.person.tolist() == [0, 1, 0, 2, 0, 1]  # 7 -> 0, 3 -> 1, 9 -> 2; rows by (frame, person)
    two = assign_persons(t, max_faces=2)
    assert two.persons == 2 and 2 not in two.person.tolist() and len(two.frame) == 5
    # Aff-Wild2 `_left`/`_right`: per frame the face on that side, whatever its track
    lft = assign_persons(t, max_faces=1, side="left")
    assert lft.persons == 1 and lft.box[:, 0].tolist() == [10, 60, 10]
    rgt = assign_persons(t, max_faces=1, side="right")
    assert rgt.box[:, 0].tolist() == [150, 150, 150]
    # one face alone counts for the side of the frame it is on
    alone = _tracks([0, 1], [0, 1], [left, right])
    assert assign_persons(alone, 1, "left").frame.tolist() == [0]
    assert assign_persons(alone, 1, "right").frame.tolist() == [1]
    assert assign_persons(_tracks([0], [0], [left]), 1, "right").persons == 0


def test_similarity_transform_and_alignment_put_the_points_on_the_template() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], scale * rot) and np.allclose(m[:, 2], shift)
    # an image with five dots at the landmark positions of a face twice the crop size, tilted
    size = 112
    template = TEMPLATES["arcface"] * size
    img = np.zeros((400, 400, 3), np.uint8)
    back = np.array([[np.cos(-0.2), -np.sin(-0.2)], [np.sin(-0.2), np.cos(-0.2)]])
    points = (template - 56) @ back.T * 2.0 + [200, 210]
    for x, y in points:
        img[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3] = 255
    crop = align_face(img, points, "arcface", size)
    assert crop.shape == (size, size, 3)
    for x, y in template:  # each dot lands on its template position (area-shrunk, so a bit fainter)
        assert crop[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2].max() > 100
    assert crop.mean() < 20  # and nothing else is bright
    assert align_face(img, np.zeros((5, 2)), "arcface", size) is None  # degenerate points


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
    assert set(DETECTORS) >= {FaceDetectorConfig().name, "dlib-cnn", "opencv-haar"}
    for bad in ({"name": "mtcnn"}, {"every_n": 0}, {"detect_size": 0}, {"smooth": 0.0}, {"margin": -0.1},
                {"min_face": 1.0}, {"max_faces": -1}, {"max_missed": -1}, {"max_upscale": 0.5},
                {"align": "3d"}, {"template": "nope"}, {"crop_size": 0}):
        with pytest.raises(ExtractorError, match="detector"):
            FaceDetectorConfig(**bad).validate()


def test_identity_names_the_detector_and_the_alignment() -> None:
    hog = FaceDetectorConfig().identity()
    assert hog["dlib"] and hog["landmarks68"]["sha1"] and len(hog["template"]) == 5
    haar = FaceDetectorConfig(name="opencv-haar", align="none").identity()
    assert "opencv" in haar and "dlib" not in haar and "template" not in haar
    assert "landmarks68" in FaceDetectorConfig(name="opencv-haar", align="none").identity(landmarks=True)
    assert FaceDetectorConfig(name="dlib-cnn").identity()["cnn"]["sha1"]


def test_iter_face_crops_reports_decoded_frames_and_stops_at_the_limit(tmp_path: Path) -> None:
    media = make_video(tmp_path / "clip.mp4", seconds=2.0, fps=10, audio=False)
    batches = list(iter_face_crops(str(media), FaceDetectorConfig(), batch_size=4, limit=7))
    assert [b.decoded for b in batches] == [7] and batches[0].persons == 0 and not batches[0].crops
    full = list(iter_face_crops(str(media), FaceDetectorConfig(), batch_size=8))
    assert full[-1].decoded == 20


# ------------------------------------------------------------------------------------ real faces
# the six faces of multiface.jpg (centres, pixels), checked by eye
MULTIFACE = [(270, 305), (469, 189), (593, 106), (658, 252), (762, 529), (904, 510)]


def _multiface(realdata: Path) -> np.ndarray:
    import cv2

    path = realdata / "facenet-examples" / "multiface.jpg"
    if not path.exists():
        pytest.skip(f"{path} absent")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _covers(box: np.ndarray, centre: tuple[int, int]) -> bool:
    return box[0] <= centre[0] <= box[2] and box[1] <= centre[1] <= box[3]


def test_default_detector_finds_the_six_faces_of_multiface_and_nothing_else(realdata: Path) -> None:
    img = _multiface(realdata)
    boxes = DETECTORS["dlib-hog"](FaceDetectorConfig())(img)
    assert len(boxes) == 6, boxes
    assert all(sum(_covers(b, c) for c in MULTIFACE) == 1 for b in boxes), "a box on no face (or on two)"
    assert all(any(_covers(b, c) for b in boxes) for c in MULTIFACE), "a face without a box"
    haar = DETECTORS["opencv-haar"](FaceDetectorConfig(name="opencv-haar", detect_size=1200))(img)  # the fallback
    assert len(haar) >= 6 and all(any(_covers(b, c) for b in haar) for c in MULTIFACE)


def test_cnn_detector_finds_a_face(realdata: Path) -> None:
    img = _multiface(realdata)[190:420, 160:380]  # one face (centre 270, 305), 230 px around it
    boxes = DETECTORS["dlib-cnn"](FaceDetectorConfig(name="dlib-cnn", detect_size=230))(img)
    assert len(boxes) == 1 and _covers(boxes[0], (110, 115))


def _two_faces(realdata: Path, tmp_path: Path, frames: int = 30, hide: range = range(12, 18)) -> Path:
    """Two real faces of multiface.jpg side by side in a 320 x 180 clip, drifting a little; the right
    one is covered in the frames `hide`."""
    import cv2

    from tiny_models import write_frames

    img = _multiface(realdata)
    faces = [cv2.resize(img[c[1] - 65:c[1] + 65, c[0] - 65:c[0] + 65], (80, 80), interpolation=cv2.INTER_AREA)
             for c in (MULTIFACE[0], MULTIFACE[4])]
    out = []
    for i in range(frames):
        f = np.full((180, 320, 3), 90, np.uint8)
        dx, dy = int(round(8 * np.sin(i / 5))), int(round(5 * np.cos(i / 7)))
        f[40 + dy:120 + dy, 30 + dx:110 + dx] = faces[0]
        if i not in hide:
            f[50 - dy:130 - dy, 200 - dx:280 - dx] = faces[1]
        out.append(f)
    return write_frames(tmp_path / "two.mp4", out, fps=10)


def test_two_people_get_two_stable_persons_and_aligned_crops(realdata: Path, tmp_path: Path) -> None:
    clip = _two_faces(realdata, tmp_path)
    cfg = FaceDetectorConfig(max_faces=0, every_n=3)
    tracks = assign_persons(track_faces(str(clip), cfg), 0)
    assert tracks.persons == 2 and tracks.decoded == 30
    centre = (tracks.box[:, 0] + tracks.box[:, 2]) / 2
    left = tracks.person == 0  # seen in every frame: the longest track is person 0
    assert sorted(tracks.frame[left].tolist()) == list(range(30)) and (centre[left] < 160).all()
    right_frames = set(tracks.frame[~left].tolist())
    assert (centre[~left] > 160).all() and len(right_frames) >= 20
    assert not right_frames & set(range(13, 18))  # covered: no box (frame 12 holds the last detection's)
    assert max(right_frames) == 29  # back after the gap, under the same person id
    batches = list(iter_face_crops(str(clip), cfg, batch_size=8, tracks=tracks))
    crops = [c for b in batches for c in b.crops]
    assert len(crops) == len(tracks.frame) and all(c.shape == (112, 112, 3) for c in crops)
    # side selection (an Aff-Wild2 `_right` id on raw video): the right face only
    right = assign_persons(track_faces(str(clip), cfg), 1, "right")
    assert right.persons == 1 and ((right.box[:, 0] + right.box[:, 2]) / 2 > 160).all()
