"""The `Video` record every dataset adapter yields and every stage consumes.

One record per *annotation id* (Aff-Wild2's unit), not per media file: the two people of a
`_left`/`_right` pair are two records that share one `media_path`. Everything a worker needs to
process one video travels in this record, so it must stay small, picklable and JSON-serialisable
(the index file and remote engines carry it).

Paths in the index file are relative to the dataset root (`write_index(..., root=)`), so the same
dataset at another place (another machine, mount or teammate) gives the same bytes, and the stages
after `index` (which depend on the file, not on the root) keep their results; `read_index(path, root)`
turns them back into paths under this machine's root. What the files *are* stays in the index and
beside it: label content hashes, container probes, and each crop set's fingerprint
(`pipeline.datasets.crops`, written to `crops_index_path(index)`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline.files import atomic_write_text

SPLITS = ("train", "validation", "test")
TASKS = ("va", "expr")
ROOT_RELATIVE = "relative to dataset.root"  # the index file's `paths` marker
# Fields left out of an index file while they hold these values (what `Video` defaults them to), so
# an index written before they existed reads the same and one of per-frame labelled videos keeps
# its bytes (nothing after `index` re-runs for them).
INDEX_DEFAULTS: dict[str, Any] = {"label_formats": {}, "has_video": True}


class Fingerprinted(str):
    """A source path whose content fingerprint is already known (`pipeline.store.source_fingerprint`
    returns it instead of walking the folder): the index stage checked the crop set, so extraction
    need not stat millions of crop files again."""

    fingerprint: dict

    def __new__(cls, path: str, fingerprint: Mapping[str, Any]) -> "Fingerprinted":
        obj = super().__new__(cls, path)
        obj.fingerprint = dict(fingerprint)
        return obj

    def __reduce__(self):  # picklable for remote engines (str's default would drop the fingerprint)
        return (Fingerprinted, (str(self), self.fingerprint))


@dataclass(frozen=True)
class Video:
    """One annotated subject in one media file.

    `fps`, `num_frames` and `duration` are read from the container, never from the file name.
    `labels` maps a task (`va`, `expr`) to the path of its annotation file; a test video has none.
    `label_frames` holds each label file's line count (the frame grid of that task) and
    `label_hashes` its content hash, so the index changes whenever a label file does and the
    training stages (which depend on the index, not on the raw tree) re-run.
    `media_key` identifies the media file; records that share it share audio.
    `crops_fingerprint` (files, size, sha1, layout) identifies the content of `crops_dir` as the index
    stage last checked it (`pipeline.datasets.crops`); it travels in the crops file beside the index,
    not in the index, so a crop edit re-runs only the stages that read crops.
    `rotation` is the display rotation (counter-clockwise degrees) that decoding applies, and
    `frame_segments` the decoded frames' real presentation times as straight pieces
    (`pipeline.media.frame_segments`; empty = frame i at i / fps, as in index files written
    before times were recorded); `frame_grid` expands them.
    `label_formats` says how each task's label file is written (`pipeline.labels`: "frames", one
    line per frame, the default for a task not listed; "spans", `start,end,value(s)` per segment or
    utterance); `pipeline.labels.read_video_labels` reads either onto the frame grid.
    `has_video` is False for an audio-only file: its frames are the fixed grid of
    `pipeline.media.AUDIO_GRID_FPS`, and extractors that need pictures skip it.
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
    crops_fingerprint: dict[str, Any] | None = None
    label_formats: dict[str, str] = field(default_factory=dict)
    has_video: bool = True

    def crops_source(self) -> str | None:
        """`crops_dir`, carrying the index's fingerprint of it when there is one (None without crops)."""
        if not self.crops_dir:
            return None
        fp = self.crops_fingerprint
        if not fp:
            return self.crops_dir
        return Fingerprinted(self.crops_dir, {"kind": "dir", "files": fp["files"], "size": fp["size"],
                                              "sha1": fp["sha1"]})

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


def _relative(path: str, root: Path) -> str:
    """`path` relative to `root` (POSIX separators) when it lies under it, else unchanged."""
    p = Path(path)
    for base, target in ((root, p), (root.resolve(), p.resolve())):
        try:
            return target.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)


def _under(rel: str, root: Path) -> str:
    return rel if os.path.isabs(rel) else str(root / rel)


def _map_paths(record: dict, fn) -> dict:
    out = dict(record)
    out["media_path"] = fn(out["media_path"])
    if out.get("crops_dir"):
        out["crops_dir"] = fn(out["crops_dir"])
    out["labels"] = {task: fn(p) for task, p in out.get("labels", {}).items()}
    return out


def write_if_changed(path: str | Path, data: Any, indent: int = 1) -> bool:
    """Write `data` as stable JSON unless the file already holds exactly those bytes (then its mtime
    stays, and DVC needs not even re-hash it). Returns whether it wrote."""
    text = json.dumps(data, indent=indent, sort_keys=True, default=float) + "\n"
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def write_index(videos: Iterable[Video], path: str | Path, warnings: Iterable[str] = (),
                root: str | Path | None = None) -> bool:
    """Write the index as JSON (sorted by id so the file is stable for DVC); False when unchanged.

    With `root`, every path under it is written relative to it (and so is every warning's mention of
    it), so the file does not depend on where the dataset sits. `warnings` (label/frame mismatches and
    the like) are kept in the file so the rule applied to each video stays visible after the log
    scrolled away. Crop fingerprints are not written here (`write_crops`).
    """
    records = sorted((v.to_dict() for v in videos), key=lambda r: r["video_id"])
    for r in records:
        r.pop("crops_fingerprint", None)
        for key, default in INDEX_DEFAULTS.items():  # index files of video datasets keep their bytes
            if r.get(key) == default:
                r.pop(key)
    data: dict[str, Any] = {"videos": records, "warnings": sorted(warnings)}
    if root is not None:
        base = Path(root)
        data["videos"] = [_map_paths(r, lambda p: _relative(p, base)) for r in records]
        prefixes = sorted({f"{b}{os.sep}" for b in (base, base.resolve()) if str(b) != "."}, key=len, reverse=True)
        data["warnings"] = sorted(_strip(w, prefixes) for w in warnings)
        data["paths"] = ROOT_RELATIVE
    return write_if_changed(path, data)


def _strip(text: str, prefixes: Iterable[str]) -> str:
    for prefix in prefixes:
        text = text.replace(prefix, "")
    return text


def read_index(path: str | Path, root: str | Path | None = None) -> list[Video]:
    """Read an index written by `write_index`; `root` (this machine's `dataset.root`) resolves the
    paths of an index written relative to its dataset root."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: index not found; run `affcache index` (or `dvc repro index`) first")
    data = json.loads(path.read_text())
    records = data["videos"]
    if data.get("paths") == ROOT_RELATIVE:
        if root is None:
            raise ValueError(f"{path}: paths are relative to the dataset root; pass root= (params `dataset.root`)")
        records = [_map_paths(r, lambda p: _under(p, Path(root))) for r in records]
    return [Video.from_dict(r) for r in records]


def crops_index_path(index_path: str | Path) -> Path:
    """The crop fingerprints written beside an index: `data/index.json` -> `data/index.crops.json`."""
    p = Path(index_path)
    return p.with_name(f"{p.stem}.crops.json")


def write_crops(videos: Iterable[Video], path: str | Path) -> bool:
    """Each video's crop fingerprint by id (the extraction stages that read crops depend on this
    file, the others on the index only); False when the file already held it."""
    crops = {v.video_id: v.crops_fingerprint for v in videos if v.crops_fingerprint}
    return write_if_changed(path, {"videos": dict(sorted(crops.items()))})


def read_crops(path: str | Path) -> dict[str, dict]:
    """The crop fingerprints of `write_crops` by video id ({} when there is no such file)."""
    try:
        return dict(json.loads(Path(path).read_text())["videos"])
    except FileNotFoundError:
        return {}


def with_crops(videos: Iterable[Video], crops: Mapping[str, dict]) -> list[Video]:
    """The videos with their crop fingerprints attached (extraction keys crop-based stores by them)."""
    return [replace(v, crops_fingerprint=crops.get(v.video_id)) if v.crops_dir else v for v in videos]
