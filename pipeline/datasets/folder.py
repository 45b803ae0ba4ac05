"""Adapter for "any folder of videos": in-the-wild use without the Aff-Wild2 tree.

    root/
      clip1.mp4              any video container FFmpeg demuxes (.mp4 .avi .mkv .webm .mov .m4v .3gp
                             .ts .mts .m2ts .mpg .flv .wmv .ogv .mxf ...; `VIDEO_EXTS`), in root or subfolders
      clip1.csv              optional VA labels, same format as Aff-Wild2 VA txt (`valence,arousal`)
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
from pipeline.datasets.affwild2 import (
    AdapterOptions,
    CROPS_DIR,
    VIDEO_EXTS,
    DatasetError,
    exts_text,
    _prunable,
    note,
    probe_many,
    video_record,
)
from pipeline.labels import mismatch_message
from pipeline.records import SPLITS, Video

SPLITS_FILE = "splits.csv"
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
        if path.suffix.lower() not in VIDEO_EXTS or not path.is_file():
            continue
        if any(_prunable(part) for part in path.relative_to(root).parts[:-1]):
            continue
        if path.stem in found:
            raise DatasetError(
                f"{path}: video id {path.stem!r} also used by {found[path.stem]}; fix: rename one (ids are file stems)"
            )
        found[path.stem] = path
    return found


@dataclass
class FolderAdapter(AdapterOptions):
    """Index a plain folder of videos. Call `build()`; read `warnings` afterwards.

    skip_missing: an unreadable video becomes a warning (left out) instead of an error.
    """

    recursive: bool = True
    labeled_split: str = "train"

    name = "folder"

    def build(self) -> list[Video]:
        root = Path(self.root)
        if not root.is_dir():
            raise DatasetError(f"{root}: folder not found; fix: pass a directory that contains videos")
        if self.labeled_split not in SPLITS:
            raise DatasetError(f"labeled_split={self.labeled_split!r} is not a split; fix: use one of {list(SPLITS)}")
        self.warnings = []
        videos = find_videos(root, self.recursive)
        if not videos:
            raise DatasetError(f"{root}: no video files ({exts_text()}) found; fix: check the folder")
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
        labels, label_frames = {}, {}
        if label_path.is_file():
            labels["va"] = str(label_path)
            label_frames["va"] = self.label_rows(label_path, "va")
            message = mismatch_message(vid, label_frames["va"], info.num_frames, "va")
            if message:
                note(self.warnings, message)
        split = splits.get(vid) or (self.labeled_split if labels else "test")
        if split != "test" and not labels:
            note(self.warnings, f"{vid}: split {split!r} but no label file {label_path.name}; it cannot be trained on")
        return video_record(vid, info, split, root, labels, label_frames)


__all__ = ["FolderAdapter", "read_splits", "find_videos", "SPLITS_FILE", "CROPS_DIR"]
