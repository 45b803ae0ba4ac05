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

    @property
    def media_key(self) -> str:
        return str(Path(self.media_path).resolve())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Video":
        return cls(**data)


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
