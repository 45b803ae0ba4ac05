"""Test helpers: tiny checkpoints (through extractors.demo_models) and tiny media files (PyAV).

Tests build everything they need into `tmp_path`, offline, in well under a second per item, so
they exercise the real `from_pretrained` / decode paths without any download.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from extractors import demo_models
from pipeline.records import Video


def tiny_wavlm(root: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random WavLM folder (save_pretrained) under `root`."""
    name = "wavlm" + "".join(f"_{k}{v}" for k, v in sorted(overrides.items())) + f"_s{seed}"
    return demo_models.write_wavlm(Path(root) / name, seed, **overrides)


def tiny_qwen3vl(root: Path, seed: int = 0) -> Path:
    """A tiny random Qwen3-VL folder (model + processor) under `root`."""
    return demo_models.write_qwen3vl(Path(root) / f"qwen3vl_s{seed}", seed)


def speechlike(seconds: float, sample_rate: int = 16000, silent: tuple[float, float] | None = None,
               seed: int = 0) -> np.ndarray:
    """A deterministic voiced-looking signal (harmonics with a varying pitch + noise), optionally
    silenced over `silent` = (t0, t1) seconds."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = 0.3 * x / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)
    if silent is not None:
        x[int(silent[0] * sample_rate) : int(silent[1] * sample_rate)] = 0.0
    return x.astype(np.float32)


def make_video(path: Path, seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (64, 48),
               audio: bool = True, sample_rate: int = 16000, seed: int = 0) -> Path:
    """Write a small H.264/MPEG-4 + AAC file: moving colour gradient frames, speech-like audio."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    n = int(round(seconds * fps))
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        as_ = None
        if audio:
            as_ = out.add_stream("aac", rate=sample_rate)
            as_.layout = "mono"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(n):
            img = np.stack([(xx * 4 + i * 9) % 256, (yy * 5 + i * 3) % 256, np.full_like(xx, (i * 17) % 256)], -1)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if as_ is not None:
            wav = speechlike(seconds, sample_rate, seed=seed)
            step = 1024
            for k in range(0, wav.size, step):
                piece = wav[k : k + step].reshape(1, -1)
                af = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                af.sample_rate = sample_rate
                af.pts = k
                af.time_base = Fraction(1, sample_rate)
                for pkt in as_.encode(af):
                    out.mux(pkt)
            for pkt in as_.encode():
                out.mux(pkt)
    return path


def write_frames(path: Path, images: list[np.ndarray], fps: int = 10, audio: np.ndarray | None = None,
                 sample_rate: int = 16000) -> Path:
    """Write RGB `images` (all one size, even sides) as H.264 at `fps`, with optional mono `audio`
    (float32 at `sample_rate`, starting with the first frame)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = images[0].shape[:2]
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        as_ = out.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for pkt in vs.encode(frame):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if as_ is not None:
            for k in range(0, audio.size, 1024):
                af = av.AudioFrame.from_ndarray(audio[None, k:k + 1024].astype(np.float32), format="flt", layout="mono")
                af.sample_rate, af.pts, af.time_base = sample_rate, k, Fraction(1, sample_rate)
                for pkt in as_.encode(af):
                    out.mux(pkt)
            for pkt in as_.encode():
                out.mux(pkt)
    return path


def video_record(path: Path, video_id: str, seconds: float, fps: float, has_audio: bool = True) -> Video:
    """A `Video` record for a file written by `make_video` (fps/frames as written)."""
    n = int(round(seconds * fps))
    return Video(video_id=video_id, media_path=str(path), fps=float(fps), num_frames=n, duration=n / fps,
                 has_audio=has_audio, split="train")


def voiced(sr: int, seconds: float, f0: float = 140.0) -> np.ndarray:
    """A harmonic tone with a 4 Hz syllable envelope: what the energy/flatness VAD calls speech."""
    t = np.arange(int(sr * seconds)) / sr
    harm = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)  # 4 Hz syllable envelope
    return (0.1 * harm * syllables).astype(np.float32)
