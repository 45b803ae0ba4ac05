"""Video discovery by extension: every container FFmpeg demuxes is taken (e.g. .mov, .ts), and
other files in a `predict` folder are named, not silently dropped."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.datasets import build_index
from pipeline.datasets.affwild2 import find_media
from pipeline.datasets.common import VIDEO_EXTS
from affcache.stages import StageFailed
from affcache.predicting import expand_inputs


def make_clip(path: Path, fmt: str, n: int = 10) -> Path:
    """A tiny real video (64x64, `n` frames) in container `fmt`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 20, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {"mov": make_clip(d / "phone.mov", "mov"), "ts": make_clip(d / "cam.ts", "mpegts")}


def test_video_exts_keeps_priority_and_covers_common_containers():
    assert VIDEO_EXTS[:4] == (".mp4", ".avi", ".mkv", ".webm")
    for ext in (".mov", ".m4v", ".3gp", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".flv", ".wmv",
                ".ogv", ".vob", ".mxf", ".asf", ".f4v", ".dv", ".qt", ".3g2"):
        assert ext in VIDEO_EXTS
    assert len(set(VIDEO_EXTS)) == len(VIDEO_EXTS)


def test_expand_inputs_takes_mov_and_ts_and_names_skipped(tmp_path, clips, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clips["mov"], folder / "phone.mov")
    (folder / "sub").mkdir()
    shutil.copy(clips["ts"], folder / "sub" / "cam.TS")
    (folder / "notes.txt").write_text("hello")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("hidden folder: not named")
    with caplog.at_level(logging.WARNING, logger="affcache.predicting"):
        found = expand_inputs([folder])
    assert found == [folder / "phone.mov", folder / "sub" / "cam.TS"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "notes.txt" in warnings[0] and ".DS_Store" in warnings[0]
    assert "not a video or audio file extension" in warnings[0] and "config" not in warnings[0]
    # the clips are real: PyAV opens both
    from pipeline.media import probe
    assert all(probe(p).num_frames == 10 for p in found)


def test_expand_inputs_folder_without_video_names_skipped(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(StageFailed, match=r"no video or audio files.*notes\.txt"):
        expand_inputs([folder])


def test_expand_inputs_explicit_file_taken_as_is(tmp_path):
    odd = tmp_path / "clip.weird"
    odd.write_bytes(b"x")
    assert expand_inputs([odd]) == [odd]


def test_broken_video_extension_fails_per_file_at_probe(tmp_path):
    """Taken by extension, then `probe_videos` records it as failed with the file named (no warning here)."""
    from affcache.predicting import PredictReport, probe_videos

    (tmp_path / "broken.mov").write_bytes(b"not a movie" * 10)
    found = expand_inputs([tmp_path])
    assert found == [tmp_path / "broken.mov"]
    report = PredictReport()
    assert probe_videos(found, report) == []
    assert report.failed[0]["stage"] == "probe" and "broken.mov" in report.failed[0]["error"]


def test_affwild2_media_walk_finds_mov(tmp_path, clips):
    root = tmp_path / "aff"
    (root / "videos").mkdir(parents=True)
    shutil.copy(clips["mov"], root / "videos" / "a.mov")
    assert find_media(root, []) == {"a": root / "videos" / "a.mov"}
    ann = root / "VA_Estimation_Challenge" / "Train_Set"
    ann.mkdir(parents=True)
    ann.joinpath("a.txt").write_text("valence,arousal\n" + "0.1,0.2\n" * 10)
    report = build_index("affwild2", root, progress=False)
    assert [v.media_path for v in report.videos] == [str(root / "videos" / "a.mov")]


def test_folder_adapter_finds_ts(tmp_path, clips):
    shutil.copy(clips["ts"], tmp_path / "cam.ts")
    report = build_index("folder", tmp_path, progress=False)
    assert [v.video_id for v in report.videos] == ["cam"]
