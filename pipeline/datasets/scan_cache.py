"""This machine's memory of a dataset tree, so that re-indexing (at every `dvc repro`) costs a stat walk.

The index stage runs at every `dvc repro` (dvc.yaml: `always_changed`), because DVC hashing the dataset
folder itself costs minutes at Aff-Wild2 size (2.8M crop files). What it would otherwise redo each
time is kept here:
- container probes (`media.probe` demuxes every packet of a video for its frame times), reused while
  the file's size and mtime are unchanged;
- label row counts (parsing 600 label files takes seconds), reused by the file's content hash;
- crop sets' per-file names, sizes, mtimes and content digests (`pipeline.datasets.crops`).

One folder per dataset root (its resolved path, hashed) under the cache folder (`.affcache/index` in
the project). Nothing here is tracked or shared, and deleting it is always safe: the next index then
trusts what it finds, as a fresh clone does (`pipeline.datasets.crops`). A file modified less than
`RACY_NS` before the scan started is not trusted by its mtime on the next scan (a same-size rewrite
within the file system's timestamp granularity would otherwise go unnoticed).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.files import atomic_output, atomic_write_text, sha256_file
from pipeline.media import MediaInfo

RACY_NS = 2_000_000_000
DETAIL_ARRAYS = ("names", "sizes", "mtimes", "digests")


def root_key(root: str | Path) -> str:
    """The cache folder name of a dataset root: its resolved path, hashed."""
    return hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]


class ScanCache:
    """What the last index run on this machine saw under one dataset root (see the module docstring).

    `folder` None keeps everything in memory (a library caller without a project): each run is then
    a first sight.
    """

    def __init__(self, folder: str | Path | None, root: str | Path):
        self.root = Path(root)
        self.dir = None if folder is None else Path(folder) / root_key(root)
        self.started_ns = time.time_ns()
        self._lock = threading.Lock()
        self._probes: dict[str, dict] = self._load("probes.json")
        self._labels: dict[str, int] = self._load("labels.json")
        self.crops: dict[str, dict] = self._load("crops.json")
        self._details: dict[str, tuple[dict, dict[str, np.ndarray]]] = {}
        self._used: set[str] = set()  # probe and label keys of this run: the rest is dropped at `save`

    # -- shared rules
    def settled(self, mtime_ns: int) -> bool:
        """Whether a file's mtime is old enough to vouch for its content on the next scan."""
        return mtime_ns < self.started_ns - RACY_NS

    def _load(self, name: str) -> dict:
        if self.dir is None:
            return {}
        try:
            data = json.loads((self.dir / name).read_text())
        except (FileNotFoundError, ValueError):  # absent or torn: a cache, so start afresh
            return {}
        return data if isinstance(data, dict) else {}

    def _key(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    # -- container probes
    def probe(self, path: Path, compute: Callable[[], MediaInfo]) -> MediaInfo:
        """`compute()` (a probe of `path`), or its cached result while the file's size and mtime are
        those it had before it was last probed."""
        try:
            st = path.stat()
        except OSError:
            return compute()  # probing reports the problem
        key, stamp = self._key(path), [st.st_size, st.st_mtime_ns]
        self._used.add(key)
        hit = self._probes.get(key)
        if hit and hit.get("stat") == stamp:
            data = dict(hit["info"])
            data["frame_segments"] = tuple(tuple(p) for p in data.get("frame_segments", ()))
            return MediaInfo(path=str(path), **data)
        info = compute()
        if self.settled(st.st_mtime_ns):
            data = asdict(info)
            data.pop("path")
            with self._lock:
                self._probes[key] = {"stat": stamp, "info": data}
        return info

    # -- label files
    def label_rows(self, path: Path, task: str, count: Callable[[], int]) -> int:
        """Rows of a label file, parsed (`count`) only when its content is new to this cache."""
        key = f"{task}:{sha256_file(path)}"
        self._used.add(key)
        if key not in self._labels:
            rows = int(count())
            with self._lock:
                self._labels[key] = rows
        return self._labels[key]

    # -- crop sets (pipeline.datasets.crops)
    def crop_detail(self, rel: str) -> tuple[dict, dict[str, np.ndarray]] | None:
        """A crop set as last seen: its entry (key, layout, ...) and per-file names, sizes, mtimes and
        digests (None if unknown). The detail file is written before the summary (`crops`), so after
        an interrupted run it is the newer of the two, and its entry is the one to build on."""
        if rel in self._details:
            return self._details[rel]
        if self.dir is None:
            return None
        try:
            with np.load(self._detail_path(rel)) as z:
                return json.loads(str(z["entry"])), {k: z[k] for k in DETAIL_ARRAYS}
        except (FileNotFoundError, ValueError, KeyError, OSError):
            return None

    def put_crops(self, rel: str, entry: dict, detail: dict[str, np.ndarray]) -> None:
        with self._lock:
            self.crops[rel] = entry
            if self.dir is None:
                self._details[rel] = (entry, detail)
                return
        path = self._detail_path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, entry=np.array(json.dumps(entry, sort_keys=True)), **detail)

    def _detail_path(self, rel: str) -> Path:
        assert self.dir is not None
        return self.dir / "crops" / f"{hashlib.sha1(rel.encode()).hexdigest()[:20]}.npz"

    def keep_crops(self, names: set[str]) -> None:
        """Forget the crop sets not in `names` (no longer indexed); their detail files go at `save`."""
        with self._lock:
            self.crops = {k: v for k, v in self.crops.items() if k in names}

    # -- persistence
    def save(self) -> None:
        """Write the cache (a crash before leaves the previous one, which stays valid)."""
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "root.txt", f"{self.root.resolve()}\n")
        probes = {k: v for k, v in self._probes.items() if k in self._used}
        labels = {k: v for k, v in self._labels.items() if k in self._used}
        for name, data in (("probes.json", probes), ("labels.json", labels), ("crops.json", self.crops)):
            atomic_write_text(self.dir / name, json.dumps(data, sort_keys=True))
        kept = {self._detail_path(rel).name for rel in self.crops}
        for stale in (self.dir / "crops").glob("*.npz") if (self.dir / "crops").is_dir() else ():
            if stale.name not in kept:
                stale.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        return {"probes": len(self._probes), "labels": len(self._labels), "crop_sets": len(self.crops)}
