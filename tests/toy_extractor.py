"""A deterministic toy extractor for engine and store tests: features come from the media bytes, so
two processes (or a re-run) write identical arrays; every compute() appends one line to a log file,
so a test can count how often each video was really extracted."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extractors.base import VideoError, register
from pipeline.records import Video


@dataclass
class ToyConfig:
    log: str = ""           # file that gets one "<pid> <video_id>" line per compute()
    seconds: float = 0.0    # time each compute() takes (so that two processes overlap)
    rows: int = 300
    fail_on: str = ""       # a video id whose compute() raises VideoError (a bad-input failure)
    die_on: str = ""        # a video id whose first compute() kills its own process (SIGKILL) ...
    die_once: str = ""      # ... the first time only: the marker file that records it happened


@register("toy-test", modality="toy")
class ToyExtractor:
    name = "toy-test"
    modality = "toy"

    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg

    def fingerprint(self) -> dict:
        return {"extractor": self.name, "rows": self.cfg.rows}

    def load(self) -> None:
        pass

    def source(self, video: Video) -> str:
        return video.media_path

    def prepare(self, video: Video) -> bytes:
        return Path(video.media_path).read_bytes()

    def compute(self, video: Video, prepared: bytes) -> dict[str, np.ndarray]:
        if self.cfg.log:
            with open(self.cfg.log, "a") as f:
                f.write(f"{os.getpid()} {video.video_id}\n")
        if self.cfg.seconds:
            time.sleep(self.cfg.seconds)
        if video.video_id == self.cfg.fail_on:
            raise VideoError(f"{video.media_path}: toy failure for {video.video_id}")
        if video.video_id == self.cfg.die_on and self.cfg.die_once and _first_time(self.cfg.die_once):
            os.kill(os.getpid(), signal.SIGKILL)
        seed = int.from_bytes(prepared[:8].ljust(8, b"\0"), "little")
        rng = np.random.default_rng(seed)
        n = self.cfg.rows
        i = np.arange(n, dtype=np.float32)
        return {"emb": rng.standard_normal((n, 64)).astype(np.float32), "t0": i / 30, "t1": (i + 1) / 30,
                "valid": rng.random(n) > 0.3, "frame_index": np.arange(n, dtype=np.int64)}


def _first_time(marker: str) -> bool:
    """True for exactly one caller across processes (exclusive create of the marker file)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def toy_videos(root: Path, n: int, write: bool = True) -> list[Video]:
    """n tiny media files with distinct content (the toy reads only their bytes); write=False only
    describes files written before."""
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        p = media / f"vid{k:02d}.bin"
        if write:
            p.write_bytes(k.to_bytes(8, "little") + b"toy media")
        out.append(Video(f"vid{k:02d}", str(p), fps=30.0, num_frames=300, duration=10.0, has_audio=False,
                         split="train"))
    return out
