"""Dataset adapters on a tiny Aff-Wild2-shaped tree and a plain folder; plus the real facenet clip."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import labels as L
from pipeline import media
from pipeline.datasets import DatasetError, IndexReport, adapter_names, build_index
from pipeline.records import crops_index_path, read_crops, read_index, with_crops, write_crops, write_index

REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "facenet-examples" / "video.mp4"
PAIR = "10-60-64x48"  # the name claims 60 fps; the stream is 29.97


def make_video(path: Path, n: int, rate: Fraction = Fraction(25), audio: bool = False) -> Path:
    """Tiny mpeg4 video (64x48), optionally with a short AAC track."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=16000) if audio else None
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            fr = av.AudioFrame.from_ndarray(
                np.zeros((1, int(16000 * n / rate)), np.float32), format="fltp", layout="mono"
            )
            fr.sample_rate = 16000
            for p in list(a.encode(fr)) + list(a.encode()):
                c.mux(p)
    return path


def va_file(path: Path, n: int) -> Path:
    L.write_va(path, np.zeros((n, 2)), np.arange(n) != 0)
    return path


def expr_file(path: Path, n: int) -> Path:
    L.write_expr(path, np.zeros(n, int))
    return path


VA = "VA_Estimation_Challenge"
EXPR = "EXPR_Recognition_Challenge"


@pytest.fixture(scope="module")
def media_files(tmp_path_factory) -> dict[str, Path]:
    """Encode the videos once; each test copies them into its own tree."""
    d = tmp_path_factory.mktemp("src")
    return {
        "a.mp4": make_video(d / "a.mp4", 10, audio=True),
        f"{PAIR}.mp4": make_video(d / f"{PAIR}.mp4", 12, rate=Fraction(30000, 1001)),
        "c.mkv": make_video(d / "c.mkv", 8),
    }


@pytest.fixture
def tree(tmp_path, media_files) -> Path:
    """Aff-Wild2-shaped: a left/right pair sharing one file, media in two folders, crops with gaps,
    VA Train/Validation/Test, EXPR Train with one length mismatch (a: 12 EXPR lines vs 10 frames)."""
    root = tmp_path / "aff"
    (root / "videos").mkdir(parents=True)
    (root / "batch1").mkdir()
    shutil.copy(media_files["a.mp4"], root / "videos" / "a.mp4")
    shutil.copy(media_files[f"{PAIR}.mp4"], root / "videos" / f"{PAIR}.mp4")
    shutil.copy(media_files["c.mkv"], root / "batch1" / "c.mkv")
    for i in (1, 2, 5):  # frames 3, 4 have no face
        (root / "cropped_aligned" / "a").mkdir(parents=True, exist_ok=True)
        (root / "cropped_aligned" / "a" / f"{i:05d}.jpg").write_bytes(b"jpg")
    (root / "cropped_aligned" / f"{PAIR}_left").mkdir(parents=True)
    va_file(root / VA / "Train_Set" / "a.txt", 10)
    va_file(root / VA / "Train_Set" / f"{PAIR}_left.txt", 12)
    va_file(root / VA / "Validation_Set" / f"{PAIR}_right.txt", 12)
    va_file(root / VA / "Test_Set" / "c.txt", 8)
    expr_file(root / EXPR / "Train_Set" / "a.txt", 12)
    return root


def by_id(videos):
    return {v.video_id: v for v in videos}


# --------------------------------------------------------------------------- affwild2


def test_affwild2_records(tree, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets"):
        report = build_index("affwild2", tree, progress=False)
    assert isinstance(report, IndexReport)
    v = by_id(report.videos)
    assert sorted(v) == ["10-60-64x48_left", "10-60-64x48_right", "a", "c"]
    assert [x.video_id for x in report.videos] == sorted(v)

    a = v["a"]
    assert (a.split, a.fps, a.num_frames, a.has_audio) == ("train", 25.0, 10, True)
    assert a.duration == pytest.approx(0.4)
    assert a.media_path == str(tree / "videos" / "a.mp4")
    assert a.crops_dir == str(tree / "cropped_aligned" / "a")
    assert a.labels == {"va": str(tree / VA / "Train_Set" / "a.txt"), "expr": str(tree / EXPR / "Train_Set" / "a.txt")}
    assert a.label_frames == {"va": 10, "expr": 12}

    left, right = v[f"{PAIR}_left"], v[f"{PAIR}_right"]
    assert left.media_path == right.media_path == str(tree / "videos" / f"{PAIR}.mp4")
    assert left.media_key == right.media_key
    assert left.fps == pytest.approx(30000 / 1001)  # from the container, not the "60" in the name
    assert (left.split, right.split) == ("train", "validation")
    assert left.crops_dir is not None and right.crops_dir is None
    assert not left.has_audio

    c = v["c"]
    assert c.split == "test" and c.media_path == str(tree / "batch1" / "c.mkv")
    assert c.labels == {} and c.label_frames == {"va": 8}  # test labels are not exposed; the grid is
    assert c.num_frames == 8

    (mismatch,) = report.warnings
    assert "a:" in mismatch and "12" in mismatch and "10" in mismatch and "label grid wins" in mismatch
    assert mismatch in caplog.text


def test_affwild2_test_labels_option(tree):
    c = by_id(build_index("affwild2", tree, progress=False, test_labels=True).videos)["c"]
    assert c.labels == {"va": str(tree / VA / "Test_Set" / "c.txt")}


def test_index_round_trip(tree, tmp_path):
    videos, warnings = build_index("affwild2", tree, progress=False)
    assert len(warnings) == 1
    assert by_id(videos)["a"].crops_fingerprint["files"] == 3
    index, crops = tmp_path / "index.json", crops_index_path(tmp_path / "index.json")
    write_index(videos, index, warnings, root=tree)
    write_crops(videos, crops)
    assert str(tree) not in index.read_text()  # paths relative to the dataset root
    assert with_crops(read_index(index, root=tree), read_crops(crops)) == videos
    with pytest.raises(ValueError, match="relative to the dataset root"):
        read_index(index)
    write_index(videos, tmp_path / "plain.json")  # without a root: paths as given, read back as such
    assert read_index(tmp_path / "plain.json") == [dataclasses.replace(v, crops_fingerprint=None) for v in videos]


def test_affwild2_missing_media_names_id_and_folders(tree):
    va_file(tree / VA / "Train_Set" / "ghost_left.txt", 5)
    with pytest.raises(DatasetError) as err:
        build_index("affwild2", tree, progress=False)
    msg = str(err.value)
    assert "ghost_left" in msg and "videos" in msg and "batch1" in msg and "skip_missing" in msg


def test_affwild2_skip_missing(tree):
    va_file(tree / VA / "Train_Set" / "ghost.txt", 5)
    report = build_index("affwild2", tree, progress=False, skip_missing=True)
    assert "ghost" not in by_id(report.videos)
    assert any("ghost" in w and "no media" in w for w in report.warnings)


def test_affwild2_corrupt_media(tree):
    data = (tree / "videos" / "a.mp4").read_bytes()
    (tree / "videos" / "a.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(media.MediaError, match="a.mp4"):
        build_index("affwild2", tree, progress=False)
    report = build_index("affwild2", tree, progress=False, skip_missing=True)
    assert "a" not in by_id(report.videos) and any("a.mp4" in w for w in report.warnings)


def test_affwild2_split_conflict_va_wins(tree):
    expr_file(tree / EXPR / "Validation_Set" / "c.txt", 8)
    report = build_index("affwild2", tree, progress=False)
    assert by_id(report.videos)["c"].split == "test"
    assert any("split differs" in w for w in report.warnings)


def test_affwild2_id_in_two_splits(tree):
    va_file(tree / VA / "Validation_Set" / "a.txt", 10)
    with pytest.raises(DatasetError, match="exactly one split"):
        build_index("affwild2", tree, progress=False)


def test_affwild2_bad_label_file_fails_at_index_time(tree):
    (tree / VA / "Train_Set" / "a.txt").write_text("valence,arousal\n0,0\n0,zz\n")
    with pytest.raises(L.LabelError, match="line 3"):
        build_index("affwild2", tree, progress=False)


def test_affwild2_no_annotations(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(DatasetError, match="no annotation files"):
        build_index("affwild2", tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        build_index("affwild2", tmp_path / "absent")


def test_affwild2_nested_release_and_duplicate_media(tree, media_files):
    """Annotations one level down (as ABAW zips unpack) and the same clip twice: the first wins."""
    (tree / "6th_ABAW_Annotations").mkdir()
    shutil.move(str(tree / VA), str(tree / "6th_ABAW_Annotations" / VA))
    shutil.copy(media_files["c.mkv"], tree / "videos" / "c.mkv")
    report = build_index("affwild2", tree, progress=False)
    assert by_id(report.videos)["c"].media_path == str(tree / "videos" / "c.mkv")
    assert any("duplicate media" in w for w in report.warnings)


def test_registry_errors(tree):
    assert set(adapter_names()) >= {"affwild2", "folder"}
    with pytest.raises(DatasetError, match="unknown dataset adapter 'nope'.*affwild2, folder"):
        build_index("nope", tree)
    with pytest.raises(DatasetError, match="valid options"):
        build_index("affwild2", tree, colour="blue")


# --------------------------------------------------------------------------- folder


@pytest.fixture
def folder(tmp_path, media_files) -> Path:
    root = tmp_path / "wild"
    (root / "sub").mkdir(parents=True)
    shutil.copy(media_files["a.mp4"], root / "x.mp4")
    va_file(root / "x.csv", 9)  # one label short of the 10 frames
    shutil.copy(media_files["c.mkv"], root / "sub" / "y.mkv")
    (root / "notes.txt").write_text("not a video")
    return root


def test_folder_defaults(folder):
    report = build_index("folder", folder, progress=False)
    v = by_id(report.videos)
    assert sorted(v) == ["x", "y"]
    assert (
        v["x"].split == "train" and v["x"].labels == {"va": str(folder / "x.csv")} and v["x"].label_frames == {"va": 9}
    )
    assert v["y"].split == "test" and v["y"].labels == {} and v["y"].num_frames == 8
    assert v["x"].has_audio and not v["y"].has_audio
    assert len(report.warnings) == 1 and "9" in report.warnings[0] and "10" in report.warnings[0]


def test_folder_splits_csv(folder):
    (folder / "splits.csv").write_text("video_id,split\nx,val\ny,test\nzzz,train\n")
    report = build_index("folder", folder, progress=False)
    assert by_id(report.videos)["x"].split == "validation"
    assert any("zzz" in w for w in report.warnings)


@pytest.mark.parametrize(
    "text, match",
    [("id,split\nx,train\n", "header"), ("video_id,split\nx,holdout\n", "line 2"), ("video_id,split\nx\n", "line 2")],
)
def test_folder_bad_splits_csv(folder, text, match):
    (folder / "splits.csv").write_text(text)
    with pytest.raises(DatasetError, match=match):
        build_index("folder", folder, progress=False)


def test_folder_duplicate_stem_and_empty(folder, tmp_path):
    shutil.copy(folder / "x.mp4", folder / "sub" / "x.mp4")
    with pytest.raises(DatasetError, match="rename one"):
        build_index("folder", folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no video or audio files"):
        build_index("folder", tmp_path / "empty")


def test_folder_bad_label_csv(folder):
    (folder / "x.csv").write_text("valence;arousal\n0;0\n")
    with pytest.raises(L.LabelError, match="x.csv"):
        build_index("folder", folder, progress=False)


# --------------------------------------------------------------------------- real clip


@pytest.mark.skipif(not REAL_CLIP.is_file(), reason="shared/realdata/facenet-examples/video.mp4 not present")
def test_real_clip_probe_decode_audio(tmp_path):
    info = media.probe(REAL_CLIP)
    assert (info.width, info.height, info.fps, info.num_frames) == (1920, 1080, 25.0, 105)
    assert info.duration == pytest.approx(4.2, abs=0.05) and info.has_audio and info.audio_rate == 48000
    batch = next(media.iter_frames(REAL_CLIP, batch_size=4, end=0.2, size=(320, 180)))
    assert batch.images.shape == (4, 180, 320, 3) and batch.images.std() > 10  # real content, not blank
    np.testing.assert_allclose(batch.times, [0, 0.04, 0.08, 0.12], atol=1e-6)
    audio = media.read_audio(REAL_CLIP)
    assert audio.dtype == np.float32 and abs(len(audio) / 16000 - 4.2) < 0.1 and np.abs(audio).max() > 0.01

    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "video.mp4").symlink_to(REAL_CLIP)
    (v,), _ = build_index("folder", tmp_path / "clip", progress=False)
    assert (v.video_id, v.split, v.num_frames, v.has_audio) == ("video", "test", 105, True)
