"""Adapter for "any folder of videos": in-the-wild use without the Aff-Wild2 tree.

    root/
      clip1.mp4              any video container FFmpeg demuxes (.mp4 .avi .mkv .webm .mov .m4v .3gp
                             .ts .mts .m2ts .mpg .flv .wmv .ogv .mxf ...; `VIDEO_EXTS`), in root or subfolders
      talk2.wav              or an audio-only file (.wav .flac .mp3 .m4a ...; `AUDIO_EXTS`): indexed on the
                             fixed 25 Hz grid of `pipeline.media.AUDIO_GRID_FPS`
      clip1.csv              optional labels; its header says the task and the format
                             (`pipeline.labels.sniff_label_file`): `valence,arousal` (one line per frame, as
                             Aff-Wild2's VA txt), the 8 expression names (per frame, as Aff-Wild2's EXPR
                             txt), `start,end,valence,arousal` or `start,end,expression` (one line per
                             segment or utterance, times in seconds, expanded onto the frame grid)
      cropped_aligned/clip1/ optional face crops (%05d.jpg, 1-based)
      splits.csv             optional `video_id,split` (split: train / validation / test)

The video id is the file stem (so ids must be unique across subfolders). Without `splits.csv`, a
labelled video goes to `labeled_split` (default "train") and an unlabelled one to "test" (only
predictions can be made for it). Label files are parsed here so a bad one fails before extraction.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipeline import media
from pipeline.datasets.common import (
    AUDIO_EXTS,
    CROPS_DIR,
    VIDEO_EXTS,
    AdapterOptions,
    DatasetError,
    exts_text,
    note,
    probe_many,
    prunable,
    register_adapter,
    video_record,
)
from pipeline.labels import FRAMES, mismatch_message, sniff_label_file
from pipeline.records import SPLITS, Video

SPLITS_FILE = "splits.csv"
MEDIA_EXTS = VIDEO_EXTS + AUDIO_EXTS
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "training": "train"}


def read_splits(path: Path) -> dict[str, str]:
    """Parse `splits.csv` (`video_id,split`); a bad line is an error naming the line."""
    rows: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if header != ["video_id", "split"]:
            raise DatasetError(
                f"{path}, line 1: header must be `video_id,split`, got `{','.join(header)}`; fix the header"
            )
        for lineno, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise DatasetError(f"{path}, line {lineno}: expected `video_id,split`, got {row}; fix the line")
            vid, split = row[0].strip(), row[1].strip().lower()
            split = _SPLIT_ALIASES.get(split, split)
            if split not in SPLITS:
                raise DatasetError(f"{path}, line {lineno}: unknown split {row[1]!r}; fix: use one of {list(SPLITS)}")
            rows[vid] = split
    return rows


def find_videos(root: Path, recursive: bool = True) -> dict[str, Path]:
    """Map stem -> video file; duplicate stems are an error (the id must identify one file)."""
    candidates = root.rglob("*") if recursive else root.iterdir()
    found: dict[str, Path] = {}
    for path in sorted(candidates):
        if path.suffix.lower() not in MEDIA_EXTS or not path.is_file():
            continue
        if any(prunable(part) for part in path.relative_to(root).parts[:-1]):
            continue
        if path.stem in found:
            raise DatasetError(
                f"{path}: video id {path.stem!r} also used by {found[path.stem]}; fix: rename one (ids are file stems)"
            )
        found[path.stem] = path
    return found


@register_adapter("folder")
@dataclass
class FolderAdapter(AdapterOptions):
    """Index a plain folder of videos. Call `build()`; read `warnings` afterwards.

    skip_missing: an unreadable video becomes a warning (left out) instead of an error.
    """

    recursive: bool = True
    labeled_split: str = "train"

    def build(self) -> list[Video]:
        root = Path(self.root)
        if not root.is_dir():
            raise DatasetError(f"{root}: folder not found; fix: pass a directory that contains videos")
        if self.labeled_split not in SPLITS:
            raise DatasetError(f"labeled_split={self.labeled_split!r} is not a split; fix: use one of {list(SPLITS)}")
        self.warnings = []
        videos = find_videos(root, self.recursive)
        if not videos:
            raise DatasetError(f"{root}: no video or audio files ({exts_text()}; {exts_text(4, AUDIO_EXTS)}) found; "
                               "fix: check the folder")
        splits = read_splits(root / SPLITS_FILE) if (root / SPLITS_FILE).is_file() else {}
        for vid in sorted(set(splits) - set(videos)):
            note(self.warnings, f"{root / SPLITS_FILE}: {vid!r} has no video file; ignored")
        infos = probe_many(sorted(videos.values()), self.workers, self.progress, self.cache)
        records = []
        for vid, path in sorted(videos.items()):
            info = infos[path]
            if isinstance(info, media.MediaError):
                if not self.skip_missing:
                    raise info
                note(self.warnings, f"{vid}: skipped, media unreadable: {info}")
                continue
            records.append(self._record(root, vid, path, info, splits))
        return records

    def _record(self, root: Path, vid: str, path: Path, info: media.MediaInfo, splits: dict[str, str]) -> Video:
        label_path = path.with_suffix(".csv")
        labels: dict[str, str] = {}
        label_frames: dict[str, int] = {}
        formats: dict[str, str] = {}
        if label_path.is_file():
            task, fmt = sniff_label_file(label_path)  # an unknown header: a LabelError naming the file
            labels[task], formats[task] = str(label_path), fmt
            rows = self.label_rows(label_path, task, fmt)
            # spans are expanded onto the media's own frame grid: their grid is the decoded frames
            label_frames[task] = rows if fmt == FRAMES else info.num_frames
            message = mismatch_message(vid, rows, info.num_frames, task) if fmt == FRAMES else None
            if message:
                note(self.warnings, message)
        split = splits.get(vid) or (self.labeled_split if labels else "test")
        if split != "test" and not labels:
            note(self.warnings, f"{vid}: split {split!r} but no label file {label_path.name}; it cannot be trained on")
        return video_record(vid, info, split, root, labels, label_frames, formats)


__all__ = ["FolderAdapter", "read_splits", "find_videos", "SPLITS_FILE", "CROPS_DIR", "MEDIA_EXTS"]
