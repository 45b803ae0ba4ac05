"""Mouth opening from dlib landmarks and from external per-frame CSVs (extractors/mouth.py)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import extractors.reliability as reliability
from extractors.base import ExtractorError, VideoError, run_extraction
from extractors.mouth import inner_lip_ratio, read_mouth_csv
from extractors.reliability import ReliabilityConfig, ReliabilityExtractor, mouth_open_rule
from pipeline.records import Video
from pipeline.store import FeatureStore

CLIP = "facenet-examples/video.mp4"
OPENMOUTH = "affwild2-openmouth"


# ------------------------------------------------------------------------------------ the measure
def _mouth_points(gap: float, width: float = 20.0) -> np.ndarray:
    """68 points, all at the origin except the inner lip ring (60..67) of a mouth `gap` px open."""
    p = np.zeros((68, 2))
    p[60], p[64] = (0, 0), (width, 0)
    for top, bottom, x in ((61, 67, 5), (62, 66, 10), (63, 65, 15)):
        p[top], p[bottom] = (x, -gap / 2), (x, gap / 2)
    return p


def test_inner_lip_ratio_grows_with_the_opening() -> None:
    closed, ajar, open_ = (inner_lip_ratio(_mouth_points(g)) for g in (0.0, 2.0, 8.0))
    assert closed == 0.0 and ajar == pytest.approx(0.1) and open_ == pytest.approx(0.4)
    # a ratio: the same mouth twice as large, shifted and rotated, scores the same
    big = _mouth_points(8.0) * 2 + 50
    theta = 0.4
    rot = big @ np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert inner_lip_ratio(rot) == pytest.approx(0.4)
    # batched, and a degenerate (zero-width) fit is "no value", not "closed"
    batch = inner_lip_ratio(np.stack([_mouth_points(0.0), _mouth_points(8.0), np.zeros((68, 2))]))
    assert batch.shape == (3,) and batch[:2].tolist() == pytest.approx([0.0, 0.4]) and np.isnan(batch[2])
    with pytest.raises(ValueError, match="68, 2"):
        inner_lip_ratio(np.zeros((5, 2)))


# ----------------------------------------------------------------------- method resolution, errors
def test_auto_resolves_to_what_is_installed_and_the_fingerprint_says_so(monkeypatch) -> None:
    monkeypatch.setattr(reliability, "landmarks_available", lambda: False)
    auto = ReliabilityExtractor(ReliabilityConfig(mouth_method="auto", vad_backend="energy"))
    heuristic = ReliabilityExtractor(ReliabilityConfig(mouth_method="dark-extent", vad_backend="energy"))
    assert auto.mouth_method == "dark-extent"
    assert auto.fingerprint() == heuristic.fingerprint()  # same store as the explicit fallback
    monkeypatch.setattr(reliability, "landmarks_problem", lambda: "the dlib package is not installed (pip install 'affcache[mouth]')")
    with pytest.raises(ExtractorError, match=r"affcache\[mouth\]"):
        ReliabilityConfig(mouth_method="landmarks").validate()


def test_the_heuristics_keep_their_store_key() -> None:
    """The new settings stay out of an image statistic's fingerprint: its stores stay valid."""
    fp = ReliabilityExtractor(ReliabilityConfig(vad_backend="energy")).fingerprint()
    assert fp["mouth_method"] == "dark-extent"
    assert not {"landmark_inset", "landmarks", "mouth_csv_dir", "mouth_csv_value_column"} & set(fp)
    assert {"mouth_box", "dark_ratio", "thumb"} <= set(fp)


def test_auto_with_dlib_records_landmarks() -> None:
    pytest.importorskip("dlib")
    ext = ReliabilityExtractor(ReliabilityConfig(mouth_method="auto", vad_backend="energy"))
    fp = ext.fingerprint()
    assert ext.mouth_method == "landmarks" and fp["mouth_method"] == "landmarks"
    assert fp["landmarks"]["dlib"] and fp["landmarks"]["model"]["sha1"]
    assert "mouth_box" not in fp  # the image statistic's settings do not key a landmark store


def test_csv_settings_are_checked() -> None:
    with pytest.raises(ExtractorError, match="needs mouth_csv_dir"):
        ReliabilityConfig(mouth_method="csv").validate()
    with pytest.raises(ExtractorError, match="mouth_method 'csv'"):
        ReliabilityConfig(mouth_csv_dir="somewhere").validate()


# -------------------------------------------------------------------------------- real-clip runs
def _clip_video(realdata: Path) -> Video:
    from pipeline.media import probe

    info = probe(realdata / CLIP)
    return Video("clip", str(realdata / CLIP), info.fps, info.num_frames, info.duration, has_audio=False,
                 split="test")


def test_landmarks_on_the_real_clip(realdata: Path, tmp_path: Path) -> None:
    """Detect path (the tracker's landmarks in its box) and crops path (the whole crop)."""
    pytest.importorskip("dlib")
    from extractors.face_detection import FaceDetectorConfig, iter_face_crops

    video = _clip_video(realdata)
    ext = ReliabilityExtractor(ReliabilityConfig(mouth_method="landmarks", source="detect", max_frames=40,
                                                 vad_backend="energy", detector=FaceDetectorConfig(max_faces=0)))
    ext.load()
    out = ext.compute(video, ext.prepare(video))
    face = out["face"] > 0.5  # every person's rows (the clip shows several passers-by)
    raw = out["mouth_raw"][face]
    assert len(np.unique(np.flatnonzero(face) % 40)) >= 30  # rows: 40 per person, person by person
    assert np.isfinite(raw).all()  # landmarks ran on every face frame of every person
    assert 0 <= raw.min() and raw.max() < 1.5 and raw.std() > 0.01  # a ratio that moves with the mouth
    assert out["mouth_open"][~face].sum() == 0

    crops = tmp_path / "crops"
    crops.mkdir()
    for batch in iter_face_crops(video.media_path, FaceDetectorConfig(), batch_size=16, limit=12):
        for i, crop in zip(batch.indices, batch.crops):
            cv2.imwrite(str(crops / f"{i + 1:05d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    aligned = Video("c", video.media_path, video.fps, 12, 12 / video.fps, False, "test", crops_dir=str(crops))
    ext2 = ReliabilityExtractor(ReliabilityConfig(mouth_method="landmarks", source="crops", vad_backend="energy"))
    got = ext2.compute(aligned, ext2.prepare(aligned))
    assert got["face"].sum() == len(list(crops.iterdir())) >= 10
    assert np.isfinite(got["mouth_raw"][got["face"] > 0.5]).all()


# ------------------------------------------------------------------------------------ CSV reading
def _openmouth_fps(name: str) -> float:
    m = re.match(r"^\d+-(\d+)-", name)  # Aff-Wild2 names carry the fps (`1-30-1280x720`)
    return float(m.group(1)) if m else 30.0


def test_published_csvs_read_and_reproduce_their_own_flag(realdata: Path) -> None:
    files = sorted((realdata / OPENMOUTH).glob("*.csv"))[:12]
    assert len(files) == 12
    raw_rule = ReliabilityConfig(gap_fill_s=0.0, blip_s=0.0)  # the flag in the files is unsmoothed
    agree = total = 0
    for f in files:
        df = pd.read_csv(f, dtype={"frame": str})
        frames = df["frame"].astype(int).to_numpy()
        n = int(frames.max()) + 5
        m = read_mouth_csv(f, n)
        assert np.isfinite(m).sum() == len(df) and np.isnan(m[np.setdiff1d(np.arange(n), frames - 1)]).all()
        assert m[frames - 1].tolist() == pytest.approx(df["surface_area_mouth"].tolist())
        face = np.isfinite(m)
        flag = np.zeros(n, bool)
        flag[frames - 1] = df["mouth_open"].to_numpy() > 0
        ours = mouth_open_rule(m, face, _openmouth_fps(f.name), raw_rule)
        assert (ours[face] == flag[face]).all(), f"{f.name}: the rolling rule differs from the file's flag"
        smoothed = mouth_open_rule(m, face, _openmouth_fps(f.name), ReliabilityConfig())
        agree += int((smoothed[face] == flag[face]).sum())
        total += int(face.sum())
    assert agree / total > 0.97  # gap fill and blip drop change a few frames only


@pytest.mark.parametrize("content, kwargs, match", [
    (None, {}, "not found"),
    (",frame,area\n0,00001,0.1\n", {}, r"missing; it has"),
    (",frame,surface_area_mouth\n0,00001,0.1\n1,00002,abc\n", {}, r"row 2: 'abc' is not a finite number"),
    (",frame,surface_area_mouth\n0,00001,0.1\n1,00002,\n", {}, r"row 2: '' is not a finite number"),
    (",frame,surface_area_mouth\n0,00001,0.1\n1,x7,0.2\n", {}, r"row 2: 'x7' is not a frame number"),
    (",frame,surface_area_mouth\n0,00001,0.1\n1,00011,0.2\n", {}, r"frame 11 \(row 2\) is outside the video's 10 frames"),
    (",frame,surface_area_mouth\n0,00000,0.1\n", {}, r"frame 0 \(row 1\) is outside"),
    (",frame,surface_area_mouth\n0,00003,0.1\n1,00003,0.2\n", {}, r"frame 3 appears 2 times"),
    ("", {}, "not a readable CSV"),
])
def test_bad_csvs_are_video_errors_naming_the_file(tmp_path: Path, content, kwargs, match) -> None:
    path = tmp_path / "v1.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(VideoError, match=match) as info:
        read_mouth_csv(path, 10, **kwargs)
    assert str(path) in str(info.value)


def test_csv_columns_and_frame_base_are_settings(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_text("idx,area\n0,0.5\n3,0.25\n")
    got = read_mouth_csv(path, 5, frame_column="idx", value_column="area", frame_base=0)
    assert got[[0, 3]].tolist() == [0.5, 0.25] and np.isnan(got[[1, 2, 4]]).all()


# ----------------------------------------------------------------- CSVs through the extractor/store
def _crop_videos(tmp_path: Path, ids: list[str], frames: int = 40) -> list[Video]:
    out = []
    for vid in ids:
        d = tmp_path / "crops" / vid
        d.mkdir(parents=True)
        for i in range(frames):
            if i != 7:  # frame 8 has no face
                cv2.imwrite(str(d / f"{i + 1:05d}.jpg"), np.full((16, 16, 3), 128, np.uint8))
        out.append(Video(vid, str(tmp_path / f"{vid}.mp4"), 10.0, frames, frames / 10, False, "train",
                         crops_dir=str(d)))
    return out


def _write_csv(path: Path, values: np.ndarray, skip: tuple[int, ...] = ()) -> None:
    rows = [(k, f"{i + 1:05d}", float(v), 0) for k, (i, v) in enumerate(enumerate(values)) if i not in skip]
    pd.DataFrame(rows, columns=["", "frame", "surface_area_mouth", "mouth_open"]).to_csv(path, index=False)


def test_csv_signal_reaches_the_store_and_keys_each_video(tmp_path: Path) -> None:
    videos = _crop_videos(tmp_path, ["a", "b", "c"])
    csv_dir = tmp_path / "openmouth"
    csv_dir.mkdir()
    signal = np.r_[np.zeros(15), np.ones(15), np.zeros(10)]
    for v in videos:
        _write_csv(csv_dir / f"{v.video_id}.csv", signal, skip=(3,))
    cfg = ReliabilityConfig(mouth_method="csv", mouth_csv_dir=str(csv_dir), rolling=3, vad_backend="energy")
    ext = ReliabilityExtractor(cfg)
    fp = ext.fingerprint()
    assert fp["mouth_method"] == "csv" and "mouth_csv_dir" not in fp and "mouth_box" not in fp
    report = run_extraction(ext, videos, str(tmp_path / "features"), workers=1, progress=False)
    assert report.ok and sorted(report.done) == ["a", "b", "c"]
    store = FeatureStore.open(report.url)
    got = store.read_video("a")
    assert np.isnan(got["mouth_raw"][[3, 7]]).all()  # absent from the CSV / no crop
    assert got["mouth_raw"][20] == 1.0 and got["mouth_open"][18:30].all() and not got["mouth_open"][:15].any()
    assert store.todo(videos, source=ext.source) == []

    # editing one CSV re-extracts that video only; the store (fingerprint) stays the same
    _write_csv(csv_dir / "b.csv", signal[::-1])
    assert [v.video_id for v in store.todo(videos, source=ext.source)] == ["b"]
    again = run_extraction(ReliabilityExtractor(cfg), videos, str(tmp_path / "features"), workers=1, progress=False)
    assert again.url == report.url and again.done == ["b"] and sorted(again.skipped) == ["a", "c"]

    # a broken CSV fails its video only, with the file and the problem named
    (csv_dir / "c.csv").write_text(",frame,surface_area_mouth\n0,00001,0.1\n1,00001,0.2\n")
    bad = run_extraction(ReliabilityExtractor(cfg), videos, str(tmp_path / "features"), workers=1, progress=False)
    assert [f["video_id"] for f in bad.failed] == ["c"] and bad.done == []
    assert "c.csv" in bad.failed[0]["file"] and "frame 1 appears 2 times" in bad.failed[0]["error"]
    assert FeatureStore.open(report.url).is_complete("a")
    (csv_dir / "a.csv").unlink()
    gone = run_extraction(ReliabilityExtractor(cfg), videos[:1], str(tmp_path / "features"), workers=1, progress=False)
    assert "mouth CSV not found" in gone.failed[0]["error"]
