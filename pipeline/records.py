"""The `Video` record every dataset adapter yields and every stage consumes.

One record per *annotation id* (Aff-Wild2's unit), not per media file: the two people of a
`_left`/`_right` pair are two records that share one `media_path`. Everything a worker needs to
process one video travels in this record, so it must stay small, picklable and JSON-serialisable
(the index file and remote engines carry it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.files import atomic_write_json

SPLITS = ("train", "validation", "test")
TASKS = ("va", "expr")


@dataclass(frozen=True)
class Video:
    """One annotated subject in one media file.

    `fps`, `num_frames` and `duration` are read from the container, never from the file name.
    `labels` maps a task (`va`, `expr`) to the path of its annotation file; a test video has none.
    `label_frames` holds each label file's line count (the frame grid of that task) and
    `label_hashes` its content hash, so the index changes whenever a label file does and the
    training stages (which depend on the index, not on the raw tree) re-run.
    `media_key` identifies the media file; records that share it share audio.
    `rotation` is the display rotation (counter-clockwise degrees) that decoding applies, and
    `frame_segments` the decoded frames' real presentation times as straight pieces
    (`pipeline.media.frame_segments`; empty = frame i at i / fps, as in index files written
    before times were recorded); `frame_grid` expands them.
    """

    video_id: str
    media_path: str
    fps: float
    num_frames: int
    duration: float
    has_audio: bool
    split: str
    crops_dir: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    label_frames: dict[str, int] = field(default_factory=dict)
    label_hashes: dict[str, str] = field(default_factory=dict)
    rotation: int = 0
    frame_segments: list[list[float]] = field(default_factory=list)

    def frame_grid(self, num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(t0, t1) float64 [F] of frames 0..F-1 (F = `num_frames`, default the decoded count).

        Frame i spans [time of frame i, time of frame i + 1); frames past the recorded ones (a
        label file longer than the video) continue at the last piece's step, else 1 / fps.
        """
        f = int(self.num_frames if num_frames is None else num_frames)
        b = expand_segments(self.frame_segments, f + 1, self.fps)
        return b[:-1], b[1:]

    @property
    def side(self) -> str | None:
        """"left"/"right" for Aff-Wild2's two-person ids (`<name>_left`, `<name>_right`): the
        annotated subject is the face on that side of the shared media file; None otherwise."""
        for side in ("left", "right"):
            if self.video_id.endswith(f"_{side}"):
                return side
        return None

    @property
    def media_key(self) -> str:
        return str(Path(self.media_path).resolve())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Video":
        return cls(**data)


def expand_segments(segments, count: int, fps: float) -> np.ndarray:
    """`count` frame boundaries (float64 seconds) from (first, count, time, step) pieces.

    Boundaries past the last piece continue at its step (1 / fps when it has none); no pieces at
    all means boundary k is at k / fps.
    """
    out = np.arange(count, dtype=np.float64) / float(fps) if fps > 0 else np.zeros(count)
    if not segments or count <= 0:
        return out
    end, last_t, last_step = 0, 0.0, 1.0 / fps if fps > 0 else 0.0
    for first, n, t, step in segments:
        first, n = int(first), int(n)
        k = np.arange(first, min(first + n, count), dtype=np.float64)
        out[first:first + len(k)] = float(t) + (k - first) * float(step)
        if n > 1 and step > 0:
            last_step = float(step)
        end, last_t = first + n, float(t) + (n - 1) * float(step)
    if end < count:
        out[end:] = last_t + np.arange(1, count - end + 1, dtype=np.float64) * last_step
    return out


def write_index(videos: Iterable[Video], path: str | Path, warnings: Iterable[str] = ()) -> None:
    """Write the index as JSON (sorted by id so the file is stable for DVC).

    `warnings` (label/frame mismatches and the like) are kept in the file so the rule applied to
    each video stays visible after the log scrolled away.
    """
    records = sorted((v.to_dict() for v in videos), key=lambda r: r["video_id"])
    atomic_write_json(path, {"videos": records, "warnings": sorted(warnings)}, indent=1)


def read_index(path: str | Path) -> list[Video]:
    """Read an index written by `write_index`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: index not found; run `affcache index` (or `dvc repro index`) first")
    data = json.loads(path.read_text())
    return [Video.from_dict(r) for r in data["videos"]]
