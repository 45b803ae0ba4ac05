"""pipeline.media on tiny files written here with PyAV (64x48, a few frames, < 1 s each)."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import media
from pipeline.media import MediaError

W, H = 64, 48
VFR_PTS_MS = [0, 20, 100, 120, 200, 260]


def gray(i: int) -> int:
    """Frame i is a flat gray of this level, so decoded content identifies the frame."""
    return (i * 20) % 250


def make_video(
    path: Path,
    n: int = 10,
    rate: Fraction = Fraction(25),
    codec: str = "mpeg4",
    audio: str | None = None,
    pts_ms: list[int] | None = None,
    gop: int | None = None,
    audio_rate: int = 44100,
    tone_hz: float = 440.0,
) -> Path:
    """Write a tiny test video; `pts_ms` gives explicit (variable) timestamps in a 1/1000 time base."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        if pts_ms is not None:
            s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        a = None
        if audio:
            a = c.add_stream(audio, rate=audio_rate)
            a.layout = "stereo"
        for i in range(n):
            f = av.VideoFrame.from_ndarray(np.full((H, W, 3), gray(i), np.uint8), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            seconds = n / float(rate)
            t = np.arange(int(round(audio_rate * seconds))) / audio_rate
            x = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            fmt = "s16" if audio == "pcm_s16le" else "fltp"
            for i in range(0, len(x), 1024):
                chunk = np.stack([x[i : i + 1024]] * 2)
                if fmt == "s16":
                    chunk = (chunk * 32767).astype(np.int16).T.reshape(1, -1)
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout="stereo")
                fr.sample_rate = audio_rate
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    mp4 = make_video(d / "cfr.mp4", audio="aac")
    return {
        "cfr": mp4,
        "ntsc": make_video(d / "ntsc.mp4", n=30, rate=Fraction(30000, 1001)),
        "vfr_mp4": make_video(d / "vfr.mp4", n=6, codec="libx264", pts_ms=VFR_PTS_MS),
        "vfr_mkv": make_video(d / "vfr.mkv", n=6, codec="libx264", pts_ms=VFR_PTS_MS),
        "gop": make_video(d / "gop.mkv", n=40, gop=8),
        "pcm": make_video(d / "pcm.mkv", n=25, audio="pcm_s16le", tone_hz=1000.0),
    }


def content(batch: media.FrameBatch) -> np.ndarray:
    return batch.images.reshape(len(batch.images), -1).mean(axis=1)


# --------------------------------------------------------------------------- probe


def test_probe_cfr_with_audio(files):
    info = media.probe(files["cfr"])
    assert (info.fps, info.num_frames, info.width, info.height) == (25.0, 10, W, H)
    assert info.duration == pytest.approx(0.4, abs=1e-6)
    assert info.has_audio and info.audio_rate == 44100
    assert info.path == str(files["cfr"])


def test_probe_ntsc_rate(files):
    info = media.probe(files["ntsc"])
    assert info.fps == pytest.approx(30000 / 1001, abs=1e-9)
    assert info.num_frames == 30
    assert not info.has_audio and info.audio_rate is None


def test_probe_counts_packets_when_container_has_no_count(files):
    with av.open(str(files["vfr_mkv"])) as c:
        assert c.streams.video[0].frames == 0  # Matroska stores no frame count: the demux path runs
    assert media.probe(files["vfr_mkv"]).num_frames == 6


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize("key", ["vfr_mp4", "vfr_mkv"])
def test_vfr_times_come_from_pts(files, key):
    batches = list(media.iter_frames(files[key], batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    times = np.concatenate([b.times for b in batches])
    np.testing.assert_allclose(times, np.array(VFR_PTS_MS) / 1000, atol=1e-9)
    assert np.concatenate([b.indices for b in batches]).tolist() == list(range(6))


def test_iter_frames_rgb_uint8_and_content(files):
    (batch,) = list(media.iter_frames(files["cfr"], batch_size=32))
    assert batch.images.shape == (10, H, W, 3) and batch.images.dtype == np.uint8
    assert batch.times.dtype == np.float64 and batch.indices.dtype == np.int64
    np.testing.assert_allclose(batch.times, np.arange(10) / 25, atol=1e-9)
    np.testing.assert_allclose(content(batch), [gray(i) for i in range(10)], atol=6)


def test_iter_frames_resize(files):
    batch = next(media.iter_frames(files["cfr"], size=(32, 24)))
    assert batch.images.shape == (10, 24, 32, 3)


def test_iter_frames_window_seeks(files):
    frames = [b for b in media.iter_frames(files["gop"], start=2 * 8 / 25 + 0.01, end=1.2, batch_size=5)]
    idx = np.concatenate([b.indices for b in frames])
    assert idx.tolist() == list(range(17, 30))  # first frame at or after start, last before end
    np.testing.assert_allclose(np.concatenate([b.times for b in frames]), idx / 25, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([content(b) for b in frames]), [gray(i) for i in idx], atol=6)


def test_iter_frames_vfr_window(files):
    (b,) = list(media.iter_frames(files["vfr_mkv"], start=0.1, end=0.2))
    np.testing.assert_allclose(b.times, [0.1, 0.12])
    assert b.indices.tolist() == [2, 3]


def test_iter_frames_rejects_bad_batch_size(files):
    with pytest.raises(ValueError):
        next(media.iter_frames(files["cfr"], batch_size=0))


def test_frames_at_returns_frame_on_screen(files):
    req = [0.5, 0.0, 0.019, 0.02, 0.15, -1.0, 0.26]
    b = media.frames_at(files["vfr_mp4"], req)
    np.testing.assert_allclose(b.times, [0.26, 0.0, 0.0, 0.02, 0.12, 0.0, 0.26], atol=1e-9)
    assert b.indices.tolist() == [5, 0, 0, 1, 3, 0, 5]
    np.testing.assert_allclose(content(b), [gray(i) for i in b.indices], atol=6)


def test_frames_at_after_seek_and_resize(files):
    b = media.frames_at(files["gop"], [1.5, 0.99, 1.0], size=(16, 12))
    assert b.images.shape == (3, 12, 16, 3)
    assert b.indices.tolist() == [37, 24, 25]
    np.testing.assert_allclose(content(b), [gray(i) for i in (37, 24, 25)], atol=6)


def test_frames_at_needs_times(files):
    with pytest.raises(ValueError):
        media.frames_at(files["cfr"], [])


# --------------------------------------------------------------------------- audio


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_read_audio_pcm_resampled_exact_length(files):
    x = media.read_audio(files["pcm"])
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 2  # 1 s of 44.1 kHz stereo -> 16 kHz mono
    assert np.abs(x).max() <= 1.0
    assert _peak_hz(x, 16000) == pytest.approx(1000, abs=3)
    assert np.abs(x[2000:14000]).max() == pytest.approx(0.5, abs=0.02)  # stereo averaged, not summed


def test_read_audio_aac(files):
    x = media.read_audio(files["cfr"])
    assert x.dtype == np.float32
    assert 0.4 * 16000 <= len(x) <= 0.4 * 16000 + 2048 * 16000 / 44100  # AAC adds priming/padding
    assert _peak_hz(x, 16000) == pytest.approx(440, abs=25)  # short clip: coarse FFT bins


def test_read_audio_custom_rate(files):
    assert abs(len(media.read_audio(files["pcm"], sample_rate=8000)) - 8000) <= 2


def test_no_audio_is_none(files):
    assert media.read_audio(files["ntsc"]) is None


# --------------------------------------------------------------------------- failures


def _assert_media_error(path: Path, fn, *words: str) -> None:
    with pytest.raises(MediaError) as err:
        result = fn(path)
        if hasattr(result, "__next__"):
            next(result)
    message = str(err.value)
    assert str(path) in message and "fix:" in message
    for word in words:
        assert word in message.lower()


ALL_READERS = [media.probe, media.read_audio, lambda p: media.iter_frames(p), lambda p: media.frames_at(p, [0.0])]


@pytest.mark.parametrize("fn", ALL_READERS)
def test_missing_file(tmp_path, fn):
    _assert_media_error(tmp_path / "nope.mp4", fn, "not found")


@pytest.mark.parametrize("fn", ALL_READERS)
def test_zero_length_file(tmp_path, fn):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    _assert_media_error(p, fn, "empty")


@pytest.mark.parametrize("fn", ALL_READERS)
def test_truncated_file(tmp_path, files, fn):
    data = files["cfr"].read_bytes()
    p = tmp_path / "half.mp4"
    p.write_bytes(data[: len(data) // 2])  # mp4 writes its index ('moov') last: this loses it
    _assert_media_error(p, fn, "truncated")


@pytest.mark.parametrize("fn", ALL_READERS)
def test_text_file_renamed_mp4(tmp_path, fn):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    _assert_media_error(p, fn, "not a video")


def test_directory_is_not_media(tmp_path):
    _assert_media_error(tmp_path, media.probe, "not a regular file")


def test_audio_only_file_is_probed_on_the_fixed_grid(tmp_path):
    """No video stream: `probe` gives the AUDIO_GRID_FPS grid over the audio's duration (0.1 s at
    25 Hz: 2.5 frames, so 3), and decoding pictures still fails naming the file."""
    p = tmp_path / "voice.wav"
    with av.open(str(p), "w") as c:
        a = c.add_stream("pcm_s16le", rate=16000)
        a.layout = "mono"
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        fr.sample_rate = 16000
        for pk in a.encode(fr):
            c.mux(pk)
        for pk in a.encode():
            c.mux(pk)
    info = media.probe(p)
    assert (info.has_video, info.fps, info.num_frames, info.has_audio) == (False, media.AUDIO_GRID_FPS, 3, True)
    assert info.duration == pytest.approx(0.1)
    _assert_media_error(p, lambda q: media.iter_frames(q), "no video stream")
    assert len(media.read_audio(p)) == 1600  # audio alone is still readable


def test_decoding_in_threads_is_safe(files):
    """Each call opens its own container, so concurrent calls must agree with a serial one."""
    expected = media.probe(files["gop"]), content(next(media.iter_frames(files["gop"], batch_size=40)))
    results: list = []

    def work():
        results.append((media.probe(files["gop"]), content(next(media.iter_frames(files["gop"], batch_size=40)))))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for info, c in results:
        assert info == expected[0]
        np.testing.assert_array_equal(c, expected[1])
