"""Crop-set fingerprints: what each video's face crops are, checked by the index stage at a stat walk's cost.

Why: the face and reliability stores key a video's entry by its crop set (`Video.crops_source`). A
fingerprint of names and sizes misses an edited crop of the same size (a mirrored JPEG, or a whole
set replaced by another aligner's crops under the same names), and letting DVC hash the crop tree
costs minutes per `dvc status` at Aff-Wild2 size (2.8M files). So the index stage checks the crops
itself, incrementally, against this machine's scan cache (`pipeline.datasets.scan_cache`):

- `layout`: SHA-1 of the sorted (relative name, size) pairs; the same value as
  `pipeline.store.source_fingerprint` of the folder, so an untouched set keeps the store entries
  written before it was checked this way.
- A set not in the cache (the first index on this machine, a teammate's copy, a dataset moved to
  another root) is trusted by its layout, nothing is read: its key is the one the shared record
  (the previous crops file, e.g. pulled with DVC) gives for the same layout, else the layout itself.
- A set in the cache is walked (names, sizes, mtimes; no file read). If all match, its key stays.
  Otherwise each file whose size or mtime changed (and each new file) is read and hashed; a file
  whose content differs from its last known digest, or that has none yet, and every new or removed
  file change the key: SHA-1 of (previous key, layout, the changes). So `touch` alone re-keys a file
  once (no earlier digest to compare with) and never again, and the key depends on the content of
  every file ever seen to change, not on paths or mtimes.

Known limit (as for make): a rewrite that keeps both size and mtime
(`cp -p` of other bytes of the same length) is not seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.datasets.common import DatasetError
from pipeline.datasets.scan_cache import RACY_NS, ScanCache
from pipeline.progress import progress_bar
from pipeline.records import Video

log = logging.getLogger(__name__)

PROGRESS_MIN = 32  # crop sets; fewer show no bar


class CropError(DatasetError):
    """A crop folder cannot be listed or read (the message names the file)."""


@dataclass
class Listing:
    """A folder's regular files (recursive, sorted by relative POSIX name), as `stat` sees them."""

    names: np.ndarray  # str
    sizes: np.ndarray  # int64
    mtimes: np.ndarray  # int64 ns


@dataclass
class CheckStats:
    sets: int = 0
    files: int = 0
    hashed: int = 0
    changed: int = 0


def list_files(folder: Path) -> Listing:
    """Names, sizes and mtimes of every file under `folder` (symlinked folders are not entered, as
    `os.walk` does not; a symlinked file counts with its target's size).

    The walk is what a re-index with nothing changed costs (a stat per crop file, millions on
    Aff-Wild2), hence folder descriptors (`fstatat` by name instead of a path lookup per file) and
    the sort in numpy.
    """
    names: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise _unreadable(folder, err) from err
    _scan(fd, folder, "", names, sizes, mtimes)
    order = np.argsort(all_names := np.array(names, dtype=str), kind="stable")
    return Listing(all_names[order], np.array(sizes, np.int64)[order], np.array(mtimes, np.int64)[order])


def _scan(fd: int, base: Path, prefix: str, names: list[str], sizes: list[int], mtimes: list[int]) -> None:
    """Append the files under the open folder `fd` (`base/prefix`, closed here), names prefixed."""
    subdirs: list[str] = []
    name = ""
    try:
        with os.scandir(fd) as entries:
            for e in entries:
                name = e.name
                if e.is_dir():
                    if not e.is_symlink():
                        subdirs.append(name)
                    continue
                st = e.stat()
                names.append(prefix + name)
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
            name = ""
            for name in subdirs:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                _scan(sub, base, f"{prefix}{name}/", names, sizes, mtimes)
    except OSError as err:
        raise _unreadable(base / f"{prefix}{name}", err) from err
    finally:
        os.close(fd)


def _unreadable(path: Path, err: OSError) -> CropError:
    return CropError(f"{path}: cannot list or stat crop files ({err.strerror or err}); fix the file or its "
                     "permissions, then re-index")


def layout_digest(listing: Listing) -> str:
    """SHA-1 of the sorted (name, size) pairs, byte for byte what `pipeline.store` hashes for a folder."""
    pairs = [[n, s] for n, s in zip(listing.names.tolist(), listing.sizes.tolist())]
    return hashlib.sha1(json.dumps(pairs).encode()).hexdigest()


def stat_digest(names: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray) -> str:
    """What a walk saw (names, sizes, mtimes): equal digests, nothing to look at."""
    h = hashlib.sha1(np.ascontiguousarray(names, dtype=str).tobytes())
    h.update(np.ascontiguousarray(sizes, np.int64).tobytes())
    h.update(np.ascontiguousarray(mtimes, np.int64).tobytes())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-1 of a file's content."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as err:
        raise CropError(f"{path}: cannot read crop file ({err.strerror or err}); fix it, then re-index") from err
    return h.hexdigest()


def check_crop_set(folder: Path, rel: str, cache: ScanCache, shared: Mapping | None = None) -> tuple[dict, int]:
    """The fingerprint {files, size, sha1, layout} of one crop folder and how many files were read.

    `rel` names the set in the cache (its path under the dataset root); `shared` is its record in
    the previous crops file (trusted by layout on first sight).
    """
    listing = list_files(folder)
    settled = listing.mtimes < cache.started_ns - RACY_NS
    kept_mtimes = np.where(settled, listing.mtimes, -1)  # an unsettled file is re-read next time
    entry = cache.crops.get(rel)
    if entry is not None and entry.get("stat") == stat_digest(listing.names, listing.sizes, listing.mtimes):
        return {k: entry[k] for k in ("files", "size", "sha1", "layout")}, 0
    layout = layout_digest(listing)
    n = len(listing.names)
    digests = [""] * n
    hashed = 0
    seen = cache.crop_detail(rel)
    old = None
    if seen is not None:
        entry, old = seen
    if old is None:  # first sight here: trust the layout; read only files too fresh to vouch for later
        prior = entry or shared
        key = prior["sha1"] if prior and prior.get("layout") == layout and prior.get("sha1") else layout
        for i in np.flatnonzero(~settled):
            digests[i] = file_digest(folder / str(listing.names[i]))
            hashed += 1
    else:
        known = {name: (s, m, d) for name, s, m, d in zip(old["names"].tolist(), old["sizes"].tolist(),
                                                          old["mtimes"].tolist(), old["digests"].tolist())}
        changes: list[list] = []
        names = listing.names.tolist()
        for i, (name, size, mtime) in enumerate(zip(names, listing.sizes.tolist(), listing.mtimes.tolist())):
            was = known.get(name)
            if was is not None and was[0] == size and was[1] == mtime:  # -1 (unsettled) never matches
                digests[i] = was[2]
                continue
            digests[i] = file_digest(folder / name)
            hashed += 1
            if not (was is not None and was[0] == size and was[2] and was[2] == digests[i]):
                changes.append([name, size, digests[i]])
        current = set(names)
        changes += [[name, -1, ""] for name in sorted(known) if name not in current]
        key = entry["sha1"]
        if changes:
            key = hashlib.sha1(json.dumps([key, layout, sorted(changes)]).encode()).hexdigest()
    fp = {"files": n, "size": int(listing.sizes.sum()), "sha1": key, "layout": layout}
    detail = {"names": listing.names, "sizes": listing.sizes, "mtimes": kept_mtimes,
              "digests": np.array(digests, dtype="U40")}
    cache.put_crops(rel, {**fp, "stat": stat_digest(listing.names, listing.sizes, kept_mtimes)}, detail)
    return fp, hashed


def check_crops(videos: Sequence[Video], cache: ScanCache, shared: Mapping[str, Mapping] | None = None,
                progress: bool | None = None) -> tuple[list[Video], CheckStats]:
    """Attach `crops_fingerprint` to every video with a crops folder.

    `shared` maps video id -> its record in the previous crops file. Crop sets no longer indexed are
    dropped from the cache (which the caller saves). One thread: the walk is a stat call plus a little
    Python per file, which the GIL serialises anyway.
    """
    shared = shared or {}
    todo = [(i, v) for i, v in enumerate(videos) if v.crops_dir]
    rels = {i: cache_name(cache, v.crops_dir) for i, v in todo}
    stats = CheckStats(sets=len(todo))
    out = list(videos)
    show = len(todo) > PROGRESS_MIN if progress is None else progress
    for i, v in progress_bar(enabled=show, iterable=todo, total=len(todo), desc="crops", unit="video"):
        fp, hashed = check_crop_set(Path(v.crops_dir), rels[i], cache, shared.get(v.video_id))
        before = shared.get(v.video_id)
        stats.files += fp["files"]
        stats.hashed += hashed
        stats.changed += int(bool(before) and before.get("sha1") != fp["sha1"])
        out[i] = replace(v, crops_fingerprint=fp)
    cache.keep_crops(set(rels.values()))
    return out, stats


def cache_name(cache: ScanCache, crops_dir: str) -> str:
    """A crop folder's name in the cache: its path under the dataset root."""
    try:
        return Path(crops_dir).relative_to(cache.root).as_posix()
    except ValueError:
        return str(crops_dir)
