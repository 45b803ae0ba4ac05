"""Reliability signals: the published mouth-open smoothing, VAD, and the extractor's arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from extractors.reliability import (
    ReliabilityConfig,
    ReliabilityExtractor,
    drop_blips,
    fill_gaps,
    mouth_dark_extent,
    mouth_dark_fraction,
    mouth_open_rule,
)
from extractors.vad import silero_available
from pipeline.records import Video
from tiny_models import voiced

FPS = 20.0  # 0.05 s per frame: 0.15 s = 3 frames, 0.20 s = 4 frames


def _b(s: str) -> np.ndarray:
    return np.array([c == "1" for c in s])


def test_gap_fill_015s() -> None:
    # closed gaps of 3 frames (0.15 s) are filled, 4 frames (0.20 s) are not; edges are not gaps
    assert fill_gaps(_b("0011100011110000111"), FPS, 0.15).tolist() == _b("0011111111110000111").tolist()
    assert fill_gaps(_b("000111"), FPS, 0.15).tolist() == _b("000111").tolist()


def test_blip_drop_020s() -> None:
    # open runs of <= 4 frames (0.20 s) are dropped, 5 frames (0.25 s) stay; edges included
    assert drop_blips(_b("1100000111110001111"), FPS, 0.20).tolist() == _b("0000000111110000000").tolist()


def test_gap_fill_happens_before_blip_drop() -> None:
    cfg = ReliabilityConfig(rolling=1, rolling_min_periods=1)
    # two 2-frame open blips separated by a 2-frame gap: filled first into one 6-frame (0.3 s) run, kept
    openness = np.array([0, 0, 0, 5, 5, 0, 0, 5, 5, 0, 0, 0], float)
    face = np.ones(12, bool)
    assert mouth_open_rule(openness, face, FPS, cfg).tolist() == _b("000111111000").tolist()


def test_rolling_mean_rule_and_no_face_frames() -> None:
    # published: trailing rolling-30 mean over face frames > video mean; first 29 face frames closed
    cfg = ReliabilityConfig()
    openness = np.r_[np.zeros(60), np.ones(60), np.zeros(60)]
    face = np.ones(180, bool)
    out = mouth_open_rule(openness, face, 30.0, cfg)
    assert not out[:60].any()
    assert out[70:120].all() and out[120:125].all()  # the trailing mean lags: still open after the drop
    assert not out[150:].any()
    face[100:110] = False  # no face -> closed (0.33 s gap: not filled)
    out2 = mouth_open_rule(np.where(face, openness, np.nan), face, 30.0, cfg)
    assert not out2[100:110].any()


def test_mouth_statistic_sees_a_dark_opening() -> None:
    face = np.full((64, 64), 170, np.uint8)
    closed = face.copy()
    closed[56:58, 24:40] = 90  # thin lip line
    open_ = face.copy()
    cv2.ellipse(open_, (32, 56), (9, 5), 0, 0, 360, 20, -1)
    box, r = ReliabilityConfig().mouth_box, ReliabilityConfig().dark_ratio
    assert mouth_dark_fraction(open_, box, r) > mouth_dark_fraction(closed, box, r) + 0.05
    # extent: a closed lip line is ~2 px high, the open mouth ~10 px, a blank face 0
    assert mouth_dark_extent(open_, box, r) > 3 * mouth_dark_extent(closed, box, r) > 0
    assert mouth_dark_extent(face, box, r) == 0.0


def test_extractor_on_crops_and_audio(tmp_path: Path) -> None:
    """Crops with a gap + a video with audio: face/mouth per frame, vad per 20 ms row."""
    import av

    crops = tmp_path / "crops"
    crops.mkdir()
    for i in (1, 2, 3, 5):
        img = np.full((48, 48, 3), 170, np.uint8)
        if i in (2, 3):
            cv2.ellipse(img, (24, 38), (7, 4), 0, 0, 360, (20, 20, 20), -1)
        cv2.imwrite(str(crops / f"{i:05d}.jpg"), img)
    media = tmp_path / "a.mp4"
    sr = 16000
    wave = np.r_[np.zeros(sr // 2, np.float32), voiced(sr, 0.5)]
    with av.open(str(media), "w") as c:
        s = c.add_stream("aac", rate=sr)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wave[None], format="fltp", layout="mono")
        frame.sample_rate = sr
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    video = Video("v", str(media), fps=10.0, num_frames=5, duration=1.0, has_audio=True, split="train",
                  crops_dir=str(crops))
    ext = ReliabilityExtractor(ReliabilityConfig(rolling=2, rolling_min_periods=1, vad_backend="energy"))
    ext.load()
    out = ext.compute(video, ext.prepare(video))
    assert out["face"].tolist() == [1, 1, 1, 0, 1]
    assert np.isnan(out["mouth"][3]) and out["mouth_raw"][1] > out["mouth_raw"][0]
    assert out["mouth_open"].dtype == bool and out["mouth_open"].shape == (5,)
    assert out["valid"].all() and out["t1"][-1] == pytest.approx(0.5)
    m = out["vad"].shape[0]
    assert 45 <= m <= 60 and out["vad_t0"].shape == (m,)  # ~1 s at 20 ms hop (+ AAC priming/padding)
    assert (out["vad"][out["vad_t1"] < 0.45] < 0.5).all() and (out["vad"][out["vad_t0"] > 0.6] > 0.5).mean() > 0.8

    silent = Video("s", str(media), 10.0, 5, 1.0, has_audio=False, split="train", crops_dir=str(crops))
    assert ext.compute(silent, ext.prepare(silent))["vad"].shape == (0,)


def test_fingerprint_names_the_vad_backend_used() -> None:
    fp = ReliabilityExtractor(ReliabilityConfig(vad_backend="auto")).fingerprint()
    assert fp["vad_backend"] == ("silero" if silero_available() else "energy")
    assert ReliabilityExtractor(ReliabilityConfig(gap_fill_s=0.2)).fingerprint() != fp


def test_run_extraction_on_the_real_clip_detect_path(realdata: Path, tmp_path: Path) -> None:
    """Detect path (no crops) + 48 kHz AAC audio through the engine and the real store."""
    clip = realdata / "facenet-examples" / "video.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} absent")
    from extractors.base import run_extraction
    from pipeline.media import probe
    from pipeline.store import FeatureStore

    info = probe(clip)
    video = Video("facenet", str(clip), info.fps, info.num_frames, info.duration, info.has_audio, "test")
    ext = ReliabilityExtractor(ReliabilityConfig(max_frames=10, vad_backend="energy"))
    rep = run_extraction(ext, [video], str(tmp_path / "f"), progress=False)
    assert rep.ok, rep.failed
    got = FeatureStore.open(rep.url).read_video("facenet")
    assert got["face"].shape == (10,) and got["face"].mean() >= 0.6
    assert np.isfinite(got["mouth"][got["face"] > 0]).all()
    assert got["vad"].shape == got["vad_t0"].shape and 15 <= got["vad"].shape[0] <= 25  # 0.4 s of audio
