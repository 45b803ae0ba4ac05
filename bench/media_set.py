"""A small real-resolution media set for the real-size benches and the GPU check (generated, never committed).

Clips at 1280x720 and 1920x1080, 25 fps, with an AAC audio track, written as a folder-adapter tree so
the real index code reads them (`FolderAdapter`):

    <root>/<id>.mp4                      the clip (H.264 when PyAV has libx264, else MPEG-4 part 2)
    <root>/<id>.csv                      smooth synthetic valence/arousal per frame (heads train on them)
    <root>/cropped_aligned/<id>/%05d.jpg 112 px face-sized JPEG crops, one per frame (Aff-Wild2's layout)

Content: the real 1080p clip with faces (`../shared/realdata/facenet-examples/video.mp4`, 4.2 s, 25 fps,
48 kHz AAC) looped to the wanted length and scaled, when it is given; otherwise drawn frames (a
face-like ellipse moving over a gradient) with speech-like audio. The crops are a fixed centred
square of each frame (no detector: OpenCV is not needed, and what a crop shows does not change what
it costs to embed). Needs numpy, PyAV and Pillow only, so it runs where the GPU check runs.

    .venv/bin/python bench/media_set.py OUT [--seconds 12] [--sizes 1280x720,1920x1080] [--source CLIP]
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_CLIP = REPO.parent / "shared" / "realdata" / "facenet-examples" / "video.mp4"
FPS = 25
AUDIO_RATE = 48000
CROP_SIZE = 112


def _codec() -> str:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - PyAV raises different types across versions
        return "mpeg4"


def _source_frames(source: Path, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The source clip's frames scaled to `size` (RGB), looped forever."""
    import av

    width, height = size
    while True:
        with av.open(str(source)) as c:
            for frame in c.decode(video=0):
                yield frame.reformat(width=width, height=height, format="rgb24").to_ndarray()


def _source_audio(source: Path) -> np.ndarray:
    """The source clip's audio as mono float32 at AUDIO_RATE."""
    import av

    with av.open(str(source)) as c:
        if not c.streams.audio:
            return np.zeros(AUDIO_RATE, np.float32)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        parts = []
        for frame in c.decode(audio=0):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    return np.concatenate(parts).astype(np.float32)


def _drawn_frames(size: tuple[int, int], seed: int) -> Iterator[np.ndarray]:
    """A gradient background with a face-like ellipse (eyes, mouth) that sways and talks."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    base = np.stack([xx / width * 160 + 40, yy / height * 120 + 60, np.full_like(xx, 90.0)], -1)
    phase = rng.uniform(0, 6.28)
    i = 0
    while True:
        t = i / FPS
        cx, cy = width * (0.5 + 0.08 * math.sin(0.7 * t + phase)), height * 0.5
        ax, ay = 0.13 * height, 0.18 * height
        img = base.copy()
        img[((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1] = (205, 165, 140)
        for ex in (cx - 0.4 * ax, cx + 0.4 * ax):
            img[((xx - ex) / (0.12 * ax)) ** 2 + ((yy - (cy - 0.25 * ay)) / (0.06 * ay)) ** 2 <= 1] = (40, 30, 30)
        mouth = 0.03 + 0.05 * abs(math.sin(2 * math.pi * 3 * t))
        img[((xx - cx) / (0.3 * ax)) ** 2 + ((yy - (cy + 0.45 * ay)) / (mouth * ay + 1)) ** 2 <= 1] = (120, 30, 40)
        yield img.astype(np.uint8)
        i += 1


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Harmonics with a varying pitch and a syllable envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / AUDIO_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    return (0.3 * x / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _centre_crop(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    side = h // 2
    top, left = (h - side) // 2, (w - side) // 2
    return np.asarray(Image.fromarray(img[top:top + side, left:left + side]).resize((CROP_SIZE, CROP_SIZE),
                                                                                     Image.BILINEAR))


def _va_labels(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / FPS
    return (0.7 * np.sin(2 * np.pi * t[:, None] / rng.uniform(4, 12, 2) + rng.uniform(0, 6, 2))).astype(np.float32)


def write_clip(root: Path, video_id: str, size: tuple[int, int], seconds: float, source: Path | None,
               seed: int = 0, crops: bool = True) -> Path:
    """One clip (+ its label CSV and crops) under `root`; returns the clip's path."""
    import av
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    frames = int(round(seconds * FPS))
    audio = np.resize(_source_audio(source), int(round(seconds * AUDIO_RATE))) if source else _speechlike(seconds, seed)
    images = _source_frames(source, size) if source else _drawn_frames(size, seed)
    crop_dir = root / "cropped_aligned" / video_id
    if crops:
        crop_dir.mkdir(parents=True, exist_ok=True)
    path = root / f"{video_id}.mp4"
    codec = _codec()
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=FPS)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"} if codec == "libx264" else {"qscale": "4"}
        aus = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        aus.bit_rate = 96000
        cursor = 0
        for i in range(frames):
            img = next(images)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for packet in vs.encode(frame):
                out.mux(packet)
            if crops:
                Image.fromarray(_centre_crop(img)).save(crop_dir / f"{i + 1:05d}.jpg", quality=90)
            target = len(audio) if i == frames - 1 else int(round((i + 1) * AUDIO_RATE / FPS))
            while cursor < target and (target - cursor >= 1024 or target == len(audio)):
                chunk = audio[cursor:min(cursor + 1024, target)].reshape(1, -1)
                af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                af.sample_rate, af.pts, af.time_base = AUDIO_RATE, cursor, Fraction(1, AUDIO_RATE)
                for packet in aus.encode(af):
                    out.mux(packet)
                cursor += chunk.shape[1]
        for stream in (vs, aus):
            for packet in stream.encode():
                out.mux(packet)
    va = _va_labels(frames, seed)
    (root / f"{video_id}.csv").write_text("valence,arousal\n" + "".join(f"{v:.4f},{a:.4f}\n" for v, a in va))
    return path


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]  # type: ignore[misc]


def make_media_set(root: str | Path, seconds: float = 12.0, sizes: list[tuple[int, int]] | None = None,
                   source: str | Path | None = "auto", crops: bool = True) -> list:
    """Write one clip per size under `root` (ids `clip<W>x<H>`) and return their index records
    (`FolderAdapter`: fps, frames and audio read from the containers, crops and labels attached).
    `source="auto"` uses the real clip when it is present; None draws the frames."""
    from pipeline.datasets.folder import FolderAdapter

    root = Path(root)
    sizes = sizes or [(1280, 720), (1920, 1080)]
    if source == "auto":
        source = REAL_CLIP if REAL_CLIP.is_file() else None
    for k, (w, h) in enumerate(sizes):
        if not (root / f"clip{w}x{h}.mp4").is_file():
            write_clip(root, f"clip{w}x{h}", (w, h), seconds, Path(source) if source else None, seed=k, crops=crops)
    adapter = FolderAdapter(root=root, progress=False)
    wanted = {f"clip{w}x{h}" for w, h in sizes}
    return [v for v in adapter.build() if v.video_id in wanted]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--sizes", default="1280x720,1920x1080")
    ap.add_argument("--source", default="auto", help="a clip to loop; 'auto': the real clip when present; 'none'")
    args = ap.parse_args()
    source = None if args.source == "none" else args.source
    for v in make_media_set(args.out, args.seconds, parse_sizes(args.sizes), source):
        print(f"{v.video_id}: {v.num_frames} frames at {v.fps:g} fps, audio {v.has_audio}, crops {v.crops_dir}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(REPO))
    main()
