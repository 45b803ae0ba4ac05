"""What every dataset adapter shares: the declaration, the options, media discovery and the record.

An adapter is one module of this package with one class declared `@register_adapter("name")`
(a literal, read from the source by `pipeline.plugins.declarations`, so the CLI's `--adapter`
choices, the params schema and the `index` stage's code deps follow without importing it). The
class is a dataclass built as `Adapter(root, **options)`; subclass `AdapterOptions` for the options
every adapter takes, and fill each `Video` with `video_record`. Adapters import from this module
and lower ones (`pipeline.media`, `pipeline.labels`, `pipeline.records`), never from each other's
privates, so a new corpus is one new file (README "Extending").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline import media
from pipeline.datasets.scan_cache import ScanCache
from pipeline.labels import FRAMES, check_label_file
from pipeline.progress import progress_bar
from pipeline.records import Video

log = logging.getLogger(__name__)

# Every video container extension FFmpeg (PyAV) demuxes. The order is the priority between two files
# with the same stem (`ext_rank`): the first four stay first. The one list used by every adapter and
# by `affcache predict FOLDER`; a file with a video extension PyAV cannot open fails later, per file.
VIDEO_EXTS = (
    ".mp4", ".avi", ".mkv", ".webm",
    ".mov", ".qt", ".m4v", ".3gp", ".3g2", ".mj2", ".f4v", ".flv",  # ISO-BMFF / QuickTime, Flash
    ".ts", ".mts", ".m2ts", ".m2t", ".tp", ".trp",  # MPEG transport stream (camcorders, broadcast)
    ".mpg", ".mpeg", ".mpe", ".m1v", ".m2v", ".mpv", ".vob", ".mod", ".tod", ".evo",  # MPEG program stream
    ".wmv", ".asf", ".dvr-ms", ".wtv",  # Windows Media
    ".ogv", ".ogm", ".mxf", ".dv", ".dif", ".mk3d", ".divx", ".xvid", ".nut", ".rm", ".rmvb", ".amv",
    ".ivf", ".y4m", ".mjpeg", ".mjpg", ".h264", ".264", ".h265", ".265", ".hevc",  # raw / elementary
)
# Audio-only files: indexed on the fixed grid `pipeline.media.AUDIO_GRID_FPS` (`media.probe`).
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff",
              ".caf", ".amr", ".ac3", ".mka", ".au")
CROPS_DIR = "cropped_aligned"
PROGRESS_MIN = 8  # show a progress bar when probing more files than this


class DatasetError(Exception):
    """A dataset tree is unusable as given; the message names the path, the problem and a fix."""


# --------------------------------------------------------------------------- declaration

# Classes registered by importing their module (the declared ones once used, and any a program or a
# test defines itself).
ADAPTER_REGISTRY: dict[str, type] = {}


def register_adapter(name: str) -> Callable[[type], type]:
    """Class decorator and declaration of a dataset adapter: its registry name (`dataset.adapter`).

    The argument is a literal so that the declarations are read without importing the module
    (`pipeline.datasets.declared_adapters`)."""

    def deco(cls: type) -> type:
        if name in ADAPTER_REGISTRY and ADAPTER_REGISTRY[name] is not cls:
            raise DatasetError(f"adapter name {name!r} registered twice ({ADAPTER_REGISTRY[name]!r} and {cls!r})")
        cls.name = name
        ADAPTER_REGISTRY[name] = cls
        return cls

    return deco


# --------------------------------------------------------------------------- shared helpers


def note(warnings: list[str], message: str) -> None:
    """Log a warning and keep it for the caller's report (the index stage records them)."""
    log.warning(message)
    warnings.append(message)


def exts_text(limit: int = 8, exts: Sequence[str] = VIDEO_EXTS) -> str:
    """The media extensions for an error message: the first few and how many more."""
    shown = ", ".join(exts[:limit])
    return shown if len(exts) <= limit else f"{shown}, ... {len(exts) - limit} more"


def ext_rank(name: str, exts: Sequence[str] = VIDEO_EXTS) -> int:
    """Priority of a file's extension between two files with one stem (lower wins)."""
    ext = Path(name).suffix.lower()
    return exts.index(ext) if ext in exts else len(exts)


def prunable(dirname: str, extra: Sequence[str] = ()) -> bool:
    """Folders that never hold media (hidden ones, the crops folder, and `extra`); skipping them
    matters: cropped_aligned holds ~3M jpgs."""
    return dirname.startswith(".") or dirname.startswith(CROPS_DIR) or dirname in extra


def probe_many(
    paths: Sequence[Path], workers: int = 4, progress: bool | None = None, cache: ScanCache | None = None
) -> dict[Path, media.MediaInfo | media.MediaError]:
    """Probe files in a thread pool (PyAV releases the GIL); errors are returned, not raised.

    Returning errors lets the caller decide per file (fail, or skip with a warning) after all
    files were looked at, so a user sees every bad file of a dataset in one run. With `cache`, a
    file probed before with the same size and mtime is not opened again (the index re-runs at every
    `dvc repro`, and a probe demuxes every packet).
    """

    def one(path: Path) -> media.MediaInfo | media.MediaError:
        try:
            if cache is not None:
                return cache.probe(path, lambda: media.probe(path))
            return media.probe(path)
        except media.MediaError as e:
            return e

    show = len(paths) > PROGRESS_MIN if progress is None else progress
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(progress_bar(enabled=show, iterable=pool.map(one, paths), total=len(paths), desc="probe",
                                    unit="video"))
    return dict(zip(paths, results, strict=True))


def find_crops(root: Path, video_id: str) -> str | None:
    """`cropped_aligned/<video_id>` when present (crops are per person, so per annotation id)."""
    crops = root / CROPS_DIR / video_id
    return str(crops) if crops.is_dir() else None


def video_record(vid: str, info: media.MediaInfo, split: str, root: Path, labels: dict[str, str],
                 label_frames: dict[str, int], label_formats: dict[str, str] | None = None) -> Video:
    """The `Video` of one annotation id: what the container says (`info`, from `probe_many`), its
    split, its crops folder under `root`, its label files and their formats (`pipeline.labels`;
    only the tasks whose file is not per-frame need an entry)."""
    formats = {t: f for t, f in (label_formats or {}).items() if f != FRAMES and t in labels}
    return Video(
        video_id=vid,
        media_path=info.path,
        fps=info.fps,
        num_frames=info.num_frames,
        duration=info.duration,
        has_audio=info.has_audio,
        split=split,
        crops_dir=find_crops(root, vid),
        labels=labels,
        label_frames=dict(label_frames),
        rotation=int(info.rotation),
        frame_segments=[list(p) for p in info.frame_segments],
        label_formats=formats,
        has_video=bool(getattr(info, "has_video", True)),
    )


# --------------------------------------------------------------------------- options


@dataclass
class AdapterOptions:
    """The options every adapter takes: `root`; `skip_missing` (an unreadable media file becomes a
    warning instead of an error); `workers` / `progress` (probing thread pool size; tqdm bar, None =
    when more than a few files). `warnings` is filled by `build()`; `cache` is set by `build_index`."""

    root: str | Path
    skip_missing: bool = False
    workers: int = 4
    progress: bool | None = None
    warnings: list[str] = field(default_factory=list, init=False)
    cache: ScanCache | None = field(default=None, init=False, repr=False)  # set by `build_index`

    def label_rows(self, path: Path, task: str, fmt: str = FRAMES) -> int:
        """Rows of a label file (parsed, so a bad file fails here: per-frame lines, or spans for
        `fmt` "spans"); memoised by content in `cache`."""
        if self.cache is None:
            return check_label_file(path, task, fmt)
        key = task if fmt == FRAMES else f"{task}:{fmt}"
        return self.cache.label_rows(path, key, lambda: check_label_file(path, task, fmt))


__all__ = [
    "ADAPTER_REGISTRY", "AUDIO_EXTS", "AdapterOptions", "CROPS_DIR", "DatasetError", "VIDEO_EXTS", "ext_rank",
    "exts_text", "find_crops", "note", "probe_many", "prunable", "register_adapter", "video_record",
]
