"""Adapter for the official Aff-Wild2 / ABAW tree (also what the synthetic demo generator writes).

Expected layout under `root` (annotation folders may also sit one level down, as in ABAW releases
that unpack into e.g. `6th_ABAW_Annotations/`):

    videos/ (or batch1/, batch2/, new_vids/, any other subfolder)  <name>.{mp4,avi,mkv,webm}
    cropped_aligned/<video_id>/%05d.jpg                            1-based; a missing file = no face
    VA_Estimation_Challenge/{Train_Set,Validation_Set,Test_Set}/<video_id>.txt
    EXPR_Recognition_Challenge/{Train_Set,Validation_Set,Test_Set}/<video_id>.txt

One `Video` per annotation id. `<name>_left` / `<name>_right` are two people in one clip: both
point at `<name>.<ext>` and share its audio. The split comes from the annotation folder (VA's
folder wins when VA and EXPR disagree, because VA is this project's primary task). fps, frame
count, duration and audio presence come from `media.probe`, never from the name.

Label/video length mismatches are expected in real data; they are logged, kept in
`adapter.warnings`, and resolved later by `labels.reconcile` (the label grid wins).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import media
from pipeline.datasets.common import (
    VIDEO_EXTS,
    AdapterOptions,
    DatasetError,
    ext_rank,
    exts_text,
    note,
    probe_many,
    prunable,
    register_adapter,
    video_record,
)
from pipeline.labels import mismatch_message
from pipeline.records import SPLITS, TASKS, Video

MEDIA_DIRS = ("videos", "batch1", "batch2", "new_vids")  # searched first, in this order
ANNOTATION_DIRS = {"va": "VA_Estimation_Challenge", "expr": "EXPR_Recognition_Challenge"}
SPLIT_DIRS = {"Train_Set": "train", "Validation_Set": "validation", "Test_Set": "test"}
PAIR_SUFFIXES = ("_left", "_right")


# --------------------------------------------------------------------------- helpers


def media_stem(video_id: str) -> str:
    """The media file name (without extension) of an annotation id: `_left`/`_right` stripped."""
    for suffix in PAIR_SUFFIXES:
        if video_id.endswith(suffix):
            return video_id[: -len(suffix)]
    return video_id


# --------------------------------------------------------------------------- discovery


@dataclass
class _Annotation:
    split: str
    path: Path


def _annotation_roots(root: Path, task: str) -> list[Path]:
    """The task's annotation folder: directly under root, or one level down (ABAW release zips)."""
    name = ANNOTATION_DIRS[task]
    direct = root / name
    if direct.is_dir():
        return [direct]
    return sorted(p for p in root.glob(f"*/{name}") if p.is_dir())


def find_annotations(root: Path, tasks: Iterable[str]) -> dict[str, dict[str, _Annotation]]:
    """Map task -> video_id -> (split, file). An id listed in two splits of one task is an error."""
    found: dict[str, dict[str, _Annotation]] = {}
    for task in tasks:
        per_id: dict[str, _Annotation] = {}
        for ann_root in _annotation_roots(root, task):
            for split_dir, split in SPLIT_DIRS.items():
                for path in sorted((ann_root / split_dir).glob("*.txt")):
                    previous = per_id.get(path.stem)
                    if previous is not None:
                        raise DatasetError(
                            f"{path}: video id {path.stem!r} is also annotated in {previous.path} "
                            f"({previous.split}); fix: keep each id in exactly one split folder"
                        )
                    per_id[path.stem] = _Annotation(split, path)
        found[task] = per_id
    return found


def _prunable(dirname: str) -> bool:
    """Folders that never hold media: `common.prunable`, and the annotation folders."""
    return prunable(dirname, tuple(ANNOTATION_DIRS.values()))


def find_media(root: Path, warnings: list[str]) -> dict[str, Path]:
    """Map media stem -> file. Known folders first (videos/, batch1/, ...), then any other subfolder.

    If a stem appears twice (same clip as .mp4 and .avi, or in two folders), the first found by
    that priority wins and a warning names both.
    """
    table: dict[str, Path] = {}
    ordered = [root / d for d in MEDIA_DIRS if (root / d).is_dir()]
    ordered += sorted(p for p in root.iterdir() if p.is_dir() and p not in ordered and not _prunable(p.name))
    for top in ordered:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not _prunable(d))
            for name in sorted(filenames, key=lambda n: (Path(n).stem, ext_rank(n))):
                if Path(name).suffix.lower() not in VIDEO_EXTS:
                    continue
                path = Path(dirpath) / name
                stem = path.stem
                if stem in table:
                    note(warnings, f"{path}: duplicate media for {stem!r}; using {table[stem]}")
                    continue
                table[stem] = path
    return table


# --------------------------------------------------------------------------- adapter


@register_adapter("affwild2")
@dataclass
class AffWild2Adapter(AdapterOptions):
    """Index an Aff-Wild2-shaped tree. Call `build()`; read `warnings` afterwards.

    Options:
      tasks: which annotation folders to read.
      skip_missing: a label file without media, or an unreadable media file, becomes a warning
        (and the id is left out) instead of an error.
      test_labels: keep label paths of Test_Set ids in `Video.labels`. Off by default: test labels
        are placeholders in real releases and must not reach training. `label_frames` is always
        filled, because the label line count is the frame grid a submission must follow.
      test_list: a file naming the test set, one id per line (the form ABAW releases the test set in;
        blank lines and `#` comments skipped, a `.txt`/video extension stripped). Relative paths are
        read from the working directory, else from `root`. Listed ids without an annotation file
        become unlabeled `test` records: the frame grid is the container's frame count, and
        `export --split test` writes them without placeholder label files.
      workers / progress: probing thread pool size; tqdm bar (None = when more than a few files).
    """

    tasks: Sequence[str] = TASKS
    test_labels: bool = False
    test_list: str | None = None

    def build(self) -> list[Video]:
        root = Path(self.root)
        if not root.is_dir():
            raise DatasetError(
                f"{root}: dataset root not found; fix: pass the folder that holds videos/ and the annotation folders"
            )
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise DatasetError(f"{root}: unknown task(s) {sorted(unknown)}; fix: use a subset of {list(TASKS)}")
        self.warnings = []
        annotations = find_annotations(root, self.tasks)
        listed = self._test_ids(root, annotations)
        ids = sorted({vid for per_id in annotations.values() for vid in per_id} | set(listed))
        if not ids:
            wanted = ", ".join(f"{ANNOTATION_DIRS[t]}/{{{','.join(SPLIT_DIRS)}}}/*.txt" for t in self.tasks)
            raise DatasetError(f"{root}: no annotation files found; fix: expected {wanted} under the root")
        label_frames = self._label_frames(annotations)
        for vid in listed:
            label_frames.setdefault(vid, {})
        media_paths = self._resolve_media(root, ids)
        infos = probe_many(sorted(set(media_paths.values())), self.workers, self.progress, self.cache)
        videos = []
        for vid in ids:
            if vid not in media_paths:
                continue
            info = infos[media_paths[vid]]
            if isinstance(info, media.MediaError):
                if not self.skip_missing:
                    raise info
                note(self.warnings, f"{vid}: skipped, media unreadable: {info}")
                continue
            videos.append(self._record(root, vid, info, annotations, label_frames[vid]))
        return videos

    def _test_ids(self, root: Path, annotations: dict[str, dict[str, _Annotation]]) -> list[str]:
        """Ids of `test_list` (empty without one); an id annotated in another split is an error."""
        if not self.test_list:
            return []
        path = Path(self.test_list)
        if not path.is_file() and not path.is_absolute() and (root / path).is_file():
            path = root / path
        if not path.is_file():
            raise DatasetError(f"{self.test_list}: test list not found (looked in the working directory and in {root}); "
                               "fix dataset.options.test_list")
        ids: list[str] = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if "/" in name or "," in name or " " in name:
                raise DatasetError(f"{path}, line {number}: {name!r} is not a video id (one id per line, e.g. 2-30-640x360)")
            stem = Path(name).stem if Path(name).suffix.lower() in (".txt", *VIDEO_EXTS) else name
            for task, per_id in annotations.items():
                ann = per_id.get(stem)
                if ann is not None and ann.split != "test":
                    raise DatasetError(f"{path}, line {number}: {stem!r} is annotated as {ann.split} in {ann.path}; "
                                       "a test id cannot be in another split")
            ids.append(stem)
        if not ids:
            raise DatasetError(f"{path}: test list names no video id")
        return sorted(set(ids))

    def _label_frames(self, annotations: dict[str, dict[str, _Annotation]]) -> dict[str, dict[str, int]]:
        """Parse every label file now (fail before any expensive stage) and keep its line count."""
        counts: dict[str, dict[str, int]] = {}
        for task, per_id in annotations.items():
            for vid, ann in per_id.items():
                counts.setdefault(vid, {})[task] = self.label_rows(ann.path, task)
        return counts

    def _resolve_media(self, root: Path, ids: list[str]) -> dict[str, Path]:
        table = find_media(root, self.warnings)
        found: dict[str, Path] = {}
        for vid in ids:
            path = table.get(vid) or table.get(media_stem(vid))
            if path is not None:
                found[vid] = path
                continue
            searched = [d for d in MEDIA_DIRS] + ["any other subfolder"]
            names = sorted({vid, media_stem(vid)})
            message = (
                f"{vid}: annotation has no media file; searched {root}/{{{','.join(searched)}}} for "
                f"{' or '.join(names)} with a video extension ({exts_text()}); fix: put the video there, "
                "or pass skip_missing=True to leave this id out"
            )
            if not self.skip_missing:
                raise DatasetError(message)
            note(self.warnings, message)
        return found

    def _record(
        self,
        root: Path,
        vid: str,
        info: media.MediaInfo,
        annotations: dict[str, dict[str, _Annotation]],
        label_frames: dict[str, int],
    ) -> Video:
        split = self._split(vid, annotations)
        labels: dict[str, str] = {}
        for task, per_id in annotations.items():
            if vid not in per_id:
                continue
            if split != "test" or self.test_labels:
                labels[task] = str(per_id[vid].path)
            message = mismatch_message(vid, label_frames[task], info.num_frames, task)
            if message:
                note(self.warnings, message)
        return video_record(vid, info, split, root, labels, label_frames)

    def _split(self, vid: str, annotations: dict[str, dict[str, _Annotation]]) -> str:
        """VA's split folder wins over EXPR's (VA is the primary task); a conflict is reported.
        An id known only from the test list is a test video."""
        splits = {task: per_id[vid].split for task, per_id in annotations.items() if vid in per_id}
        if not splits:
            return "test"
        chosen = splits.get("va") or next(iter(splits.values()))
        if len(set(splits.values())) > 1:
            note(self.warnings, f"{vid}: split differs between tasks {splits}; using {chosen!r} (VA wins)")
        assert chosen in SPLITS
        return chosen
