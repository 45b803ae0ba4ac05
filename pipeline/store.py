"""The feature store: one folder per (modality, extractor fingerprint), one Zip archive per video.

Layout (README, "The feature store")::

    <name>-<hash8>.zarr/            zarr.json: a Zarr v3 group whose attrs are schema_version,
                                    extractor, fingerprint, fingerprint_hash, package_version,
                                    created_at (written only by `create`)
      <video_id>.zip                the video's group, a Zarr v3 hierarchy in a Zip (pipeline.video_archive):
        zarr.json                   group attrs: source (fingerprint of the media/crops), user attrs, complete
        t0, t1 [N] float32, valid [N] bool, emb [N, D] float16, extras ...
                                    every array: one shard, Zarr v3 `dimension_names` (`time`, `feature`, ...)

Why these choices:
- *One file per video* (schema 3): DVC and object stores pay per object; a folder per video cost
  1 + 2 x arrays files (~60 per video across the four stores). Inside the archive every array is one
  shard with inner chunks of ~2 MiB, so partial reads stay cheap.
- *Written whole, then renamed into place* (one PUT on object storage): a process killed mid-video
  (kill -9, a preempted GPU node) leaves no archive, or a `<id>.zip.partial` that the next
  write of that video deletes; `todo()` lists the video and `write_video()` writes it again, so
  resuming is always safe. `complete: true` in the group attrs is still what makes a video usable:
  `verify --repair` moves a damaged archive aside, which puts the video back in the todo list.
- *No compression for numeric arrays*: measured on this machine (100 videos x 1000-9000 rows x 256
  fp16, tanh-distributed like real embeddings): zstd level 1 saved 11 % of disk but halved read speed
  (~280 vs ~600-800 MB/s); blosc-lz4+shuffle saved nothing. Embeddings are essentially incompressible
  and training wants a whole split in RAM fast. Strings (behavior descriptions) are zstd-compressed:
  they are small and compress well.
- *A CRC32C on every inner chunk and on every shard index* (Zarr's `crc32c` codec), and Zip's
  CRC-32 on every metadata entry: flipped or lost bytes anywhere are caught by every read path
  (zarr-python's codec, the direct reader, `verify`), so damaged data is never returned as good data.
  Stores of schema 1 (written before checksums) are refused with a message to re-extract; stores of
  schema 2 (a folder per video) are converted in place by the next extraction run of their
  configuration (`create`) or by `affcache store upgrade` (`upgrade_store`); readers refuse them
  with that command.
- *Dimension names* on every array, so xarray opens a video (`open_xarray`, or
  `xr.open_zarr(zarr.storage.ZipStore(path, mode="r"))`) or the whole store: see `dimension_names`.
- *Direct writer and reader for the plain numeric arrays* (`pipeline.video_archive`,
  `pipeline.shard_reader`): zarr-python spends milliseconds of metadata I/O and copies per array,
  which made writes 5-15x slower than `np.save` and reads ~10x slower than `np.load`. The files
  remain ordinary Zarr v3: any Zarr reader that opens a Zip store can read them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from pipeline.files import (atomic_output, atomic_write_text, is_url, local_path, read_bytes, sampled_digest,
                            url_fs)
from pipeline.records import Fingerprinted, Video
from pipeline.video_archive import (GROUP_KEY, HEAD_BYTES, ArchiveError, VideoArchive, head_group_meta,
                                    write_archive)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: CRC32C on every inner chunk, dimension names; 3: one Zip archive per video
REQUIRED_ARRAYS = ("t0", "t1", "valid")
# Arrays stored in float16 (embeddings / hidden states): halves RAM and disk, ample for 256-d+ features.
HALF_PRECISION_ARRAYS = ("emb", "emb_mean", "lower")
# Arrays that must have one row per t0/t1/valid row.
ROW_ARRAYS = ("t0", "t1", "valid") + HALF_PRECISION_ARRAYS
RESERVED_GROUP_ATTRS = ("complete", "source")
TARGET_CHUNK_BYTES = 2 * 1024 * 1024  # inner chunk size: 4096 rows of 256-d fp16
ARCHIVE_SUFFIX = ".zip"
DAMAGED_SUFFIX = ".damaged"  # `verify --repair` moves a damaged archive to <id>.zip.damaged
_SCAN_CONCURRENCY = 64
_READ_THREADS = 4


class StoreError(Exception):
    """A store problem; the message names the store (and video) and suggests the fix."""


class VideoArrays(dict):
    """The arrays of one video (`{name: np.ndarray}`) plus the group's attrs in `.attrs`."""

    def __init__(self, arrays: dict[str, np.ndarray], attrs: dict[str, Any]):
        super().__init__(arrays)
        self.attrs = attrs


# ---------------------------------------------------------------------------------------- fingerprints


def source_fingerprint(path_or_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> dict:
    """Identify a source file or directory cheaply enough to check 600 videos at every stage start.

    A file: size, mtime_ns and sha1 of its first and last MiB (catches replaced/re-encoded media
    without hashing gigabytes). A directory (face crops): number of files, total size and a sha1 of
    the sorted relative names and sizes (a re-run of the cropper that changes any crop changes it).
    Modification times are recorded for information but never compared (`same_source`): a fresh
    clone or a `dvc pull` gives every file a new mtime, and that must not re-extract anything.
    A list/tuple of paths (a video whose arrays depend on several inputs, e.g. its crops and an
    external per-frame CSV) gives `{"kind": "multi", "parts": [...]}`, one fingerprint per path, so a
    change to any of them re-extracts that video.
    A `pipeline.records.Fingerprinted` path (a crop folder the index stage checked, content included:
    `pipeline.datasets.crops`) gives the fingerprint it carries, in the same form, without a walk.
    """
    if isinstance(path_or_dir, (list, tuple)):
        return {"kind": "multi", "parts": [source_fingerprint(p) for p in path_or_dir]}
    if isinstance(path_or_dir, Fingerprinted):
        if not os.path.isdir(path_or_dir):
            raise StoreError(f"{path_or_dir}: source folder not found; check `dataset.root` and re-index (`affcache index`)")
        return dict(path_or_dir.fingerprint)
    path = Path(path_or_dir)
    if path.is_dir():
        return _dir_fingerprint(path)
    if not path.is_file():
        raise StoreError(f"{path}: source not found; check the dataset index (`affcache index`) points at existing media")
    st = path.stat()
    digest = sampled_digest([("", path)])
    return {"kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha1": digest}


def _dir_fingerprint(path: Path) -> dict:
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = Path(root) / name
            st = full.stat()
            entries.append((full.relative_to(path).as_posix(), st.st_size))
    entries.sort()
    digest = hashlib.sha1(json.dumps(entries).encode())
    return {"kind": "dir", "files": len(entries), "size": sum(e[1] for e in entries), "sha1": digest.hexdigest()}


_VOLATILE_SOURCE_KEYS = frozenset({"mtime_ns"})


def same_source(stored: dict | None, current: dict) -> bool:
    """Whether a stored source fingerprint describes the same content as `current` (mtime ignored)."""
    if not stored:
        return False
    return _stable(stored) == _stable(current)


def _stable(fp: Any) -> Any:
    """A source fingerprint without its volatile keys, at any depth (multi-part sources nest)."""
    if isinstance(fp, dict):
        return {k: _stable(v) for k, v in fp.items() if k not in _VOLATILE_SOURCE_KEYS}
    if isinstance(fp, (list, tuple)):
        return [_stable(v) for v in fp]
    return fp


def fingerprint_hash(obj: dict) -> str:
    """Stable 12-hex-char hash of a JSON-able dict (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def store_url(root: str, modality: str, name: str, fingerprint: dict) -> str:
    """Where the store of one extractor configuration lives: a new config gets a new store."""
    return f"{str(root).rstrip('/')}/{modality}/{name}-{fingerprint_hash(fingerprint)[:8]}.zarr"


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("affcache")
    except PackageNotFoundError:
        return "0+unknown"


# ---------------------------------------------------------------------------------------- store access


def _is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def _local_path(url: str) -> str:
    return str(url)[len("file://"):] if str(url).startswith("file://") else str(url)


def _make_store(url: str, storage_options: dict | None, read_only: bool) -> Any:
    """LocalStore for paths, FsspecStore for URLs (s3://, memory://, gs://...)."""
    if _is_remote(url):
        return FsspecStore.from_url(url, storage_options=storage_options or {}, read_only=read_only)
    return LocalStore(_local_path(url), read_only=read_only)


async def _get_json(store: Any, key: str) -> dict | None:
    """A metadata document, or None when missing or unreadable (a crash mid-write truncates it)."""
    try:
        buf = await store.get(key, prototype=default_buffer_prototype())
    except FileNotFoundError:
        return None
    if buf is None:
        return None
    try:
        return json.loads(buf.to_bytes())
    except ValueError:
        return None


async def _root_metadata(store: Any, url: str) -> dict | None:
    """The store's root `zarr.json`: None when there is none, a StoreError naming the store and the
    recovery when it is there but damaged (a truncated write, bytes overwritten)."""
    try:
        buf = await store.get("zarr.json", prototype=default_buffer_prototype())
    except FileNotFoundError:
        return None
    if buf is None:
        return None
    try:
        meta = json.loads(buf.to_bytes().decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("node_type") != "group":
            raise ValueError("not the metadata of a Zarr group")
    except ValueError as exc:
        raise StoreError(
            f"{url}/zarr.json: the store's root metadata is damaged ({exc}); its video groups are untouched. "
            "Re-run the extraction stage: it rewrites the root metadata from its configuration and keeps "
            "every complete video (or restore the store with `dvc checkout`)") from None
    return meta


async def _gather_limited(coros: Iterable, limit: int = _SCAN_CONCURRENCY) -> list:
    sem = asyncio.Semaphore(limit)

    async def run(coro):
        async with sem:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


def _check_video_id(video_id: str) -> None:
    if not video_id or "/" in video_id or video_id.startswith("__") or video_id in (".", "..") or video_id == "zarr.json":
        raise StoreError(f"invalid video id {video_id!r}: ids must be non-empty, without '/', not start with '__'")


# ---------------------------------------------------------------------------------------- array encoding


def _prepare_array(video_id: str, name: str, value: Any) -> np.ndarray:
    """Normalise one array for storage: fp16 embeddings, str -> variable-length UTF-8."""
    arr = np.asarray(value)
    if arr.dtype.kind in "OUS":
        if arr.dtype.kind == "O" and not all(isinstance(x, str) for x in arr.ravel()):
            raise StoreError(f"video {video_id!r}: array {name!r} has object dtype with non-str items; store numbers or str")
        return arr.astype(str) if arr.dtype.kind != "S" else np.char.decode(arr, "utf-8")
    if arr.dtype.kind not in "biuf":
        raise StoreError(f"video {video_id!r}: array {name!r} has unsupported dtype {arr.dtype}; use numeric, bool or str")
    if arr.ndim == 0:
        raise StoreError(f"video {video_id!r}: array {name!r} is a scalar; store it in attrs instead")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if name in ("t0", "t1"):
        return arr.astype(np.float32, copy=False)
    if name == "valid":
        return arr.astype(bool, copy=False)
    if name in HALF_PRECISION_ARRAYS:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, with a fix
            half = arr.astype(np.float16, copy=False)
        if not _all_finite_half(half):
            raise StoreError(
                f"video {video_id!r}: array {name!r} has NaN/inf values (or overflows float16): "
                "write zeros with valid=False for rows without features, or normalise the features"
            )
        return half
    return arr


def _all_finite_half(half: np.ndarray) -> bool:
    """Whether a float16 array holds no NaN/inf: a float16 is finite iff its exponent bits are not
    all ones, i.e. its bits without the sign are below 0x7C00. Integer ops in 1M-element slices run
    ~30x faster than `np.isfinite` on float16, which numpy converts element by element."""
    bits = np.ascontiguousarray(half).reshape(-1).view(np.uint16)
    step = 1 << 20
    return all(int(np.bitwise_and(bits[i: i + step], 0x7FFF).max()) < 0x7C00 for i in range(0, bits.size, step))


def _validate_arrays(video_id: str, arrays: dict[str, np.ndarray]) -> None:
    missing = [n for n in REQUIRED_ARRAYS if n not in arrays]
    if missing:
        raise StoreError(f"video {video_id!r}: required arrays {missing} missing (every group needs t0, t1, valid)")
    lengths = {n: arrays[n].shape[0] for n in ROW_ARRAYS if n in arrays}
    if len(set(lengths.values())) > 1:
        raise StoreError(f"video {video_id!r}: row arrays disagree in length {lengths}; they must share one time axis")
    for n in REQUIRED_ARRAYS:
        if arrays[n].ndim != 1:
            raise StoreError(f"video {video_id!r}: {n!r} must be 1-D, got shape {arrays[n].shape}")


def dimension_names(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, ...]]:
    """Zarr v3 `dimension_names` for one video's arrays, chosen so xarray can open the group.

    First axis: `time` for every array with one entry per t0/t1 row; an array on another time grid
    `<p>_t0`/`<p>_t1` (reliability's `vad`, `vad_t0`, `vad_t1`) shares `<p>_time`; anything else gets
    `<name>_row`. Last axis of an embedding-like array (`emb`, `emb_mean`, `lower`): `feature` when
    its width equals `emb`'s, else `<name>_feature`. Other axes: `<name>_dim<k>`. One name never
    means two lengths within a group, which xarray would reject.
    """
    rows = arrays["t0"].shape[0] if "t0" in arrays else None
    width = arrays["emb"].shape[-1] if "emb" in arrays and arrays["emb"].ndim >= 2 else None
    out = {}
    for name, arr in arrays.items():
        n = arr.shape[0]
        if n == rows:
            first = "time"
        else:
            grids = [p for p in (name, name.rsplit("_", 1)[0]) if f"{p}_t0" in arrays
                     and arrays[f"{p}_t0"].shape[0] == n]
            first = f"{grids[0]}_time" if grids else f"{name}_row"
        rest = [f"{name}_dim{k}" for k in range(1, arr.ndim)]
        if name in HALF_PRECISION_ARRAYS and arr.ndim >= 2:
            rest[-1] = "feature" if arr.shape[-1] == width else f"{name}_feature"
        out[name] = (first, *rest)
    return out


def _archive_key(video_id: str) -> str:
    return f"{video_id}{ARCHIVE_SUFFIX}"


async def _list_video_ids(store: Any) -> list[str]:
    """Ids of the videos with an archive in the store (temporary and set-aside files are not)."""
    names = [name async for name in store.list_dir("")]
    return sorted({n[: -len(ARCHIVE_SUFFIX)] for n in names
                   if n.endswith(ARCHIVE_SUFFIX) and len(n) > len(ARCHIVE_SUFFIX) and not n.startswith(".")})


async def _head_meta(store: Any, key: str) -> dict | None:
    """A video's group metadata from the head of its archive (one small read; the whole archive
    only when the head is not this layout's). None when the archive is missing or unreadable."""
    proto = default_buffer_prototype()
    try:
        buf = await store.get(key, prototype=proto, byte_range=RangeByteRequest(0, HEAD_BYTES))
        if buf is None:
            return None
        meta, more = head_group_meta(buf.to_bytes())
        if more:
            buf = await store.get(key, prototype=proto, byte_range=RangeByteRequest(0, more))
            meta, more = head_group_meta(buf.to_bytes()) if buf is not None else (None, 0)
        if meta is None and buf is not None:
            whole = await store.get(key, prototype=proto)
            if whole is None:
                return None
            try:
                with VideoArchive.from_bytes(whole.to_bytes(), key) as archive:
                    meta = archive.json_entry(GROUP_KEY)
            except ArchiveError:
                return None
    except FileNotFoundError:
        return None
    if meta is None or meta.get("node_type") != "group":
        return None
    return meta


# ---------------------------------------------------------------------------------------- FeatureStore


class FeatureStore:
    """One extractor configuration's cached features: an archive per video, written once, read often."""

    def __init__(self, url: str, store: Any, attrs: dict, storage_options: dict | None):
        self.url = str(url)
        self._store = store
        self.attrs = attrs
        self._storage_options = storage_options

    # -- opening -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, url: str, *, extractor: str, fingerprint: dict, attrs: dict | None = None,
               storage_options: dict | None = None) -> "FeatureStore":
        """Open the store at `url` if it was written by the same configuration, else create it.

        A different fingerprint at the same URL means another configuration wrote it; mixing features
        of two models in one store would silently poison training, so this refuses. A store of the
        same configuration in the folder-per-video layout (schema 2) is converted in place
        (`upgrade_store`), so an extraction run after an update resumes instead of re-extracting.
        """
        url = str(url)
        store = _make_store(url, storage_options, read_only=False)
        fp_hash = fingerprint_hash(fingerprint)
        repair = False
        try:
            existing = sync(_root_metadata(store, url))
        except StoreError:
            if fp_hash[:8] not in url.rstrip("/").rsplit("/", 1)[-1]:
                raise
            # The store's name carries this configuration's fingerprint, so its root metadata can be
            # rewritten from the configuration; every video archive keeps its own metadata and flag.
            log.warning("%s: root metadata damaged; rewriting it from this extractor's configuration "
                        "(video archives are kept)", url)
            sync(store.delete("zarr.json"))
            existing, repair = None, True
        if existing is not None:
            root_attrs = existing.get("attributes", {})
            if "schema_version" not in root_attrs:
                raise StoreError(f"{url}: something that is not an affcache feature store already exists here; "
                                 "delete it or choose another store root")
            if root_attrs.get("fingerprint_hash") != fp_hash:
                raise StoreError(
                    f"{url}: a different extractor configuration wrote this store "
                    f"(stored extractor={root_attrs.get('extractor')!r}, fingerprint_hash="
                    f"{root_attrs.get('fingerprint_hash')!r}; yours: extractor={extractor!r}, {fp_hash!r}). "
                    "Delete the store or change the store name (store_url() derives a new one per fingerprint)."
                )
            if root_attrs.get("schema_version") == 2:
                # The same configuration in the folder-per-video layout: convert it rather than
                # re-extract (a writer may change the store; readers only name the command).
                log.warning("%s: converting the folder-per-video store to one archive per video", url)
                done = upgrade_store(url, storage_options)
                if done["dropped"]:
                    log.warning("%s: %d incomplete or damaged video(s) not converted, extracted again: %s",
                                url, len(done["dropped"]), ", ".join(done["dropped"]))
                root_attrs = {**root_attrs, "schema_version": SCHEMA_VERSION}
            _check_schema(url, root_attrs)
            return cls(url, store, root_attrs, storage_options)
        clash = sorted(set(attrs or {}) & {"schema_version", "extractor", "fingerprint", "fingerprint_hash",
                                           "package_version", "created_at"})
        if clash:
            raise StoreError(f"{url}: extra root attrs {clash} are reserved by the store; rename them")
        root_attrs = {
            **(attrs or {}),
            "schema_version": SCHEMA_VERSION,
            "extractor": extractor,
            "fingerprint": fingerprint,
            "fingerprint_hash": fp_hash,
            "package_version": _package_version(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _json_or_error(url, "root attrs", root_attrs)
        try:
            # "w-" refuses a store that holds anything; a repaired one keeps its video archives
            zarr.open_group(store, mode="a" if repair else "w-", attributes=root_attrs, zarr_format=3)
        except Exception:  # noqa: BLE001 - another worker created it first: validate theirs instead
            if sync(_get_json(store, "zarr.json")) is None:
                raise
            return cls.create(url, extractor=extractor, fingerprint=fingerprint, attrs=attrs,
                              storage_options=storage_options)
        return cls(url, store, root_attrs, storage_options)

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None) -> "FeatureStore":
        """Open an existing store for reading (StoreError if there is none)."""
        url = str(url)
        store, attrs = _open_root(url, storage_options)
        _check_schema(url, attrs)
        return cls(url, store, attrs, storage_options)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def _root(self) -> str | None:
        """The store's folder when it is local (plain file I/O), None on object storage."""
        return str(self._store.root) if isinstance(self._store, LocalStore) else None

    def _group_attrs_many(self, video_ids: Sequence[str]) -> list[dict | None]:
        """Group attrs of many videos with concurrent small reads of each archive's head."""
        metas = sync(_gather_limited(_head_meta(self._store, _archive_key(v)) for v in video_ids))
        return [m.get("attributes", {}) if m is not None else None for m in metas]

    def _all_group_ids(self) -> list[str]:
        return sync(_list_video_ids(self._store))

    def video_ids(self) -> list[str]:
        """Ids of complete videos only (an archive without `complete` is waiting to be rewritten)."""
        ids = self._all_group_ids()
        return [v for v, a in zip(ids, self._group_attrs_many(ids)) if a and a.get("complete") is True]

    def is_complete(self, video_id: str) -> bool:
        (attrs,) = self._group_attrs_many([video_id])
        return bool(attrs and attrs.get("complete") is True)

    def todo(self, videos: Sequence[Video],
             source: Callable[[Video], str | Sequence[str]] = lambda v: v.media_path) -> list[Video]:
        """Videos that need (re-)extraction: archive missing, incomplete, or its source changed."""
        attrs = self._group_attrs_many([v.video_id for v in videos])
        out = []
        for video, a in zip(videos, attrs):
            if not a or a.get("complete") is not True:
                out.append(video)
                continue
            try:
                current = source_fingerprint(source(video))
            except StoreError:
                out.append(video)  # the extractor will report the missing source with its own error
                continue
            if not same_source(a.get("source"), current):
                out.append(video)
        return out

    # -- writing -------------------------------------------------------------------------------------

    def write_video(self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict | None = None,
                    source: dict | None = None) -> None:
        """Write one video's archive (replacing any earlier one) whole, then move it into place.

        `source` should be `source_fingerprint(<the video's source path>)`: `todo()` compares it with
        the current file, so a video written without it is always listed as needing work.

        Safe from several threads and processes for different ids: each call touches only its own
        archive (a temporary file beside it, renamed over it; one PUT on object storage).
        """
        _check_video_id(video_id)
        prepared = {name: _prepare_array(video_id, name, a) for name, a in arrays.items()}
        _validate_arrays(video_id, prepared)
        bad = [n for n in prepared if not n or "/" in n or n.startswith(".") or n == GROUP_KEY]
        if bad:
            raise StoreError(f"video {video_id!r}: array names {bad} are not allowed (no '/', not empty, not zarr.json)")
        attrs = dict(attrs or {})
        clash = [k for k in RESERVED_GROUP_ATTRS if k in attrs]
        if clash:
            raise StoreError(f"video {video_id!r}: attrs {clash} are reserved by the store; rename them")
        group_attrs = {**attrs, "source": source, "complete": True}
        _json_or_error(self.url, f"attrs of video {video_id!r}", group_attrs)
        dims = dimension_names(prepared)
        key = _archive_key(video_id)
        try:
            if self._root is not None:
                _write_local(os.path.join(self._root, key), group_attrs, prepared, dims)
            else:
                buf = io.BytesIO()
                write_archive(buf, group_attrs, prepared, dims, TARGET_CHUNK_BYTES)
                sync(self._store.set(key, cpu.Buffer.from_bytes(buf.getbuffer())))
            self._delete(key + DAMAGED_SUFFIX)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the store and video named
            raise StoreError(f"{self.url}: writing video {video_id!r} failed ({type(e).__name__}: {e}); "
                             "nothing was stored for it and the next run writes it again") from e

    def _delete(self, key: str) -> None:
        if self._root is not None:
            try:
                os.unlink(os.path.join(self._root, key))
            except FileNotFoundError:
                pass
        elif sync(self._store.exists(key)):
            sync(self._store.delete(key))

    def _set_aside(self, video_id: str) -> str:
        """Move a video's archive to `<id>.zip.damaged` (kept for inspection, deleted by the next
        write of the video); returns the new name. The video is then missing: `todo()` lists it."""
        key = _archive_key(video_id)
        aside = key + DAMAGED_SUFFIX
        if self._root is not None:
            os.replace(os.path.join(self._root, key), os.path.join(self._root, aside))
        else:
            data = sync(self._store.get(key, prototype=default_buffer_prototype()))
            if data is not None:
                sync(self._store.set(aside, data))
            sync(self._store.delete(key))
        return aside

    def consolidate(self) -> None:
        """End-of-stage hook kept for every writer: nothing to gather, because each video archive
        carries its own metadata and the store's root is written once, by `create`."""

    # -- reading -------------------------------------------------------------------------------------

    def _open_archive(self, video_id: str) -> VideoArchive | None:
        """A video's archive, open (None when there is none); ArchiveError when it is not a Zip."""
        key = _archive_key(video_id)
        if self._root is not None:
            try:
                return VideoArchive.open_file(os.path.join(self._root, key))
            except FileNotFoundError:
                return None
        try:
            buf = sync(self._store.get(key, prototype=default_buffer_prototype()))
        except FileNotFoundError:
            return None
        return None if buf is None else VideoArchive.from_bytes(buf.to_bytes(), f"{self.url}/{key}")

    def read_video(self, video_id: str, arrays: Sequence[str] | None = None, fast: bool = True) -> VideoArrays:
        """One complete video's arrays in RAM (StoreError if it is missing, incomplete or damaged).

        `fast=False` reads every array through zarr-python instead of the direct reader (both check
        every checksum; the benchmark and the tests compare them)."""
        repair = (f"run `affcache store verify --repair {self.url}` (it marks every damaged video for "
                  "re-extraction), then re-run the extraction stage")
        try:
            archive = self._open_archive(video_id)
        except ArchiveError as e:
            raise StoreError(f"{self.url}: video {video_id!r} is unreadable or damaged ({e}); {repair}") from e
        meta = archive.json_entry(GROUP_KEY) if archive is not None else None
        try:
            attrs = (meta or {}).get("attributes", {})
            if meta is None or attrs.get("complete") is not True:
                state = ("missing (or its group metadata is unreadable)" if meta is None
                         else "incomplete (written by another tool, or marked damaged)")
                raise StoreError(f"{self.url}: video {video_id!r} is {state}; run the extraction stage again "
                                 "(it lists this video in its todo)")
            names = archive.array_names()
            lost = [n for n in REQUIRED_ARRAYS if n not in names]
            if lost:
                raise StoreError(f"{self.url}: video {video_id!r} has lost its required arrays {lost} (damaged); {repair}")
            wanted = list(names) if arrays is None else list(arrays)
            unknown = [n for n in wanted if n not in names]
            if unknown:
                raise StoreError(f"{self.url}: video {video_id!r} has no arrays {unknown} (it has {names}); "
                                 "check the array names or the extractor that wrote this store")
            out = {}
            for name in wanted:
                try:
                    out[name] = archive.read_array(name, _array_meta(archive, name), fast)
                except Exception as e:  # noqa: BLE001 - damaged chunk/shard: name it and say what to do
                    raise StoreError(f"{self.url}: video {video_id!r} array {name!r} is unreadable or damaged "
                                     f"({type(e).__name__}: {e}); {repair}") from e
            return VideoArrays(out, attrs)
        finally:
            if archive is not None:
                archive.close()

    def read_many(self, video_ids: Sequence[str], arrays: Sequence[str] | None = None,
                  fast: bool = True) -> dict[str, VideoArrays]:
        """Load many videos (a whole split) into RAM with a thread pool across videos.

        File reads release the GIL, so threads overlap I/O and copies. `fast=False` forces the
        zarr-python path (used by the benchmark to show the difference).
        """
        ids = list(video_ids)
        workers = max(1, min(_READ_THREADS, len(ids)))
        with ThreadPoolExecutor(workers, thread_name_prefix="store-read") as pool:
            results = list(pool.map(lambda v: self.read_video(v, arrays, fast), ids))
        return dict(zip(ids, results))


def _array_meta(archive: VideoArchive, name: str) -> dict:
    """An array's metadata from its archive; ArchiveError when it is missing or not an array's."""
    meta = archive.json_entry(f"{name}/zarr.json")
    if meta is None or meta.get("node_type") != "array":
        raise ArchiveError(f"metadata ({name}/zarr.json) missing or damaged")
    return meta


def _write_local(path: str, attrs: dict, arrays: dict[str, np.ndarray], dims: dict[str, tuple[str, ...]]) -> None:
    """Write an archive to `<path>.partial`, then rename it into place (readers never see a part).

    A `.partial` already there was left by a killed writer of this video: a video is written by
    one process at a time (the claim it holds), so it is nobody's and is replaced."""
    tmp = f"{path}.partial"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    try:
        with open(tmp, "xb") as f:
            write_archive(f, attrs, arrays, dims, TARGET_CHUNK_BYTES)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _open_root(url: str, storage_options: dict | None) -> tuple[Any, dict]:
    """(zarr store, root attrs) of an existing feature store of any schema (StoreError otherwise)."""
    missing = StoreError(f"{url}: no feature store here; run the extraction stage first (or check the path/URL)")
    if "://" not in url and not Path(url).exists():
        raise missing  # before opening: a local zarr store would create the folder it opens
    store = _make_store(url, storage_options, read_only=False)
    root = sync(_root_metadata(store, url))
    if root is None:
        raise missing
    attrs = root.get("attributes", {})
    if "schema_version" not in attrs:
        raise StoreError(f"{url}: a Zarr group but not an affcache feature store (no schema_version attr)")
    return store, attrs


def _check_schema(url: str, attrs: dict) -> None:
    """Refuse stores of another schema: schema 1 (no chunk checksums) cannot promise that what it
    returns is undamaged; schema 2 (a folder per video) converts in place without re-extraction; a
    newer one may hold what this version cannot read."""
    found = attrs.get("schema_version")
    if found == SCHEMA_VERSION:
        return
    if found == 2:
        raise StoreError(f"{url}: store schema_version 2 (a folder per video), this affcache reads {SCHEMA_VERSION} "
                         f"(one archive per video). Convert it in place, no re-extraction: "
                         f"`affcache store upgrade {url}`")
    why = ("it was written before chunk checksums (schema 2)" if isinstance(found, int) and found < SCHEMA_VERSION
           else "it was written by a newer affcache")
    raise StoreError(f"{url}: store schema_version {found!r}, this affcache reads {SCHEMA_VERSION}: {why}. "
                     f"Re-extract: delete the store (`rm -r {url}`) and re-run the extraction stage")


def _json_or_error(url: str, what: str, obj: dict) -> None:
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{url}: {what} are not JSON-serialisable ({e}); convert numpy values with .item()/.tolist()") from e


# ---------------------------------------------------------------------------------------- side files


def write_failures(path: str | os.PathLike, failures: list[dict]) -> None:
    """Write a stage's failed videos ({video_id, file, error}) as JSON, atomically (a file or an object)."""
    bad = [f for f in failures if not {"video_id", "file", "error"} <= set(f)]
    if bad:
        raise StoreError(f"{path}: failure records need video_id, file and error keys, got {bad[:2]}")
    atomic_write_text(path, json.dumps(sorted(failures, key=lambda f: f["video_id"]), indent=1) + "\n")


def read_failures(path: str | os.PathLike) -> list[dict]:
    """The failures recorded by the last run ([] when the file does not exist: nothing failed)."""
    try:
        data = json.loads(read_bytes(path))
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise StoreError(f"{path}: not valid JSON ({e}); delete it and re-run the stage") from e
    if not isinstance(data, list):
        raise StoreError(f"{path}: expected a JSON list of failures; delete it and re-run the stage")
    return data


def prune_stores(dir: str | os.PathLike, keep: str) -> list[str]:
    """Delete sibling `*.zarr` stores of old configurations in `dir` (and their claims folders),
    keeping `keep` (path or name). `dir` may be a URL (`s3://bucket/features/face`)."""
    keep_name = str(keep).rstrip("/").rsplit("/", 1)[-1]
    keep = {keep_name, f"{keep_name}.claims"}
    if is_url(dir):
        fs, inner = url_fs(str(dir))
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(inner, detail=False)]
        except FileNotFoundError:
            return []
        doomed = [n for n in sorted(names) if n.endswith((".zarr", ".zarr.claims")) and n not in keep]
        for n in doomed:
            fs.rm(f"{inner.rstrip('/')}/{n}", recursive=True)
        return [f"{str(dir).rstrip('/')}/{n}" for n in doomed if n.endswith(".zarr")]
    folder = Path(local_path(dir))
    removed = []
    for p in sorted(folder.glob("*.zarr")) + sorted(folder.glob("*.zarr.claims")):
        if p.name not in keep and p.is_dir():  # claims: leases left by killed runs of old configurations
            shutil.rmtree(p)
            if p.suffix == ".zarr":
                removed.append(str(p))
    return removed


def write_current(dir: str | os.PathLike, url: str) -> None:
    """Record the active store of a modality in dir/current.json (relative path for local stores,
    so a moved or cloned checkout still resolves it; the full URL for a store in object storage)."""
    if _is_remote(url) or is_url(dir):
        value = str(url)
    else:
        value = os.path.relpath(os.path.abspath(_local_path(url)), os.path.abspath(local_path(dir)))
    atomic_write_text(f"{str(dir).rstrip('/')}/current.json", json.dumps({"store": value}, indent=1) + "\n")


def read_current(dir: str | os.PathLike) -> str:
    """The active store URL/path of a modality (local paths resolved against `dir`)."""
    path = f"{str(dir).rstrip('/')}/current.json"
    try:
        value = json.loads(read_bytes(path))["store"]
    except FileNotFoundError:
        raise StoreError(f"{path}: not found; run the extraction stage for this modality first") from None
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: malformed ({e}); delete it and re-run the extraction stage") from e
    return value if _is_remote(value) else os.path.normpath(os.path.join(local_path(dir), value))


# ---------------------------------------------------------------------------------------- inspection


def _disk_usage(fs_store: Any, url: str) -> tuple[int, int]:
    """(bytes, files) of a store: os.walk locally, fsspec `find` remotely."""
    if isinstance(fs_store, LocalStore):
        total = files = 0
        for root, _d, names in os.walk(str(fs_store.root)):
            for n in names:
                total += os.path.getsize(os.path.join(root, n))
                files += 1
        return total, files
    async def usage() -> tuple[int, int]:
        keys = [k async for k in fs_store.list()]
        sizes = await _gather_limited(fs_store.getsize(k) for k in keys)
        return sum(sizes), len(keys)

    return sync(usage())


def _array_metas(fs: FeatureStore, video_id: str) -> dict[str, dict]:
    """Every array's metadata of one video. On object storage the archive is opened with ranged
    reads (its directory and metadata entries), never downloaded whole."""
    key = _archive_key(video_id)
    if fs._root is not None:
        archive = VideoArchive.open_file(os.path.join(fs._root, key))
    else:
        import fsspec

        ofs, inner = fsspec.core.url_to_fs(fs.url, **(fs._storage_options or {}))
        archive = VideoArchive.open_stream(ofs.open(f"{inner.rstrip('/')}/{key}", "rb", block_size=2**16), f"{fs.url}/{key}")
    with archive:
        metas = {n: archive.json_entry(f"{n}/zarr.json") for n in archive.array_names()}
    return {n: m for n, m in metas.items() if m is not None and m.get("node_type") == "array"}


def store_info(url: str, storage_options: dict | None = None) -> dict:
    """A summary for `affcache store info`: attrs, video counts, arrays and sizes."""
    fs = FeatureStore.open(url, storage_options)
    ids = fs._all_group_ids()
    attrs = fs._group_attrs_many(ids)
    complete = [v for v, a in zip(ids, attrs) if a and a.get("complete") is True]
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        metas = list(pool.map(lambda v: _array_metas(fs, v), complete))
    arrays: dict[str, dict] = {}
    total_rows = 0
    for per_video in metas:
        total_rows += per_video.get("t0", {}).get("shape", [0])[0]
        for name, m in per_video.items():
            s = arrays.setdefault(name, {"dtype": str(m.get("data_type")), "row_shape": m["shape"][1:], "videos": 0, "rows": 0})
            s["videos"] += 1
            s["rows"] += m["shape"][0] if m["shape"] else 0
    nbytes, nfiles = _disk_usage(fs._store, url)
    return {"url": fs.url, "attrs": fs.attrs, "videos_complete": len(complete), "videos_incomplete": len(ids) - len(complete),
            "arrays": arrays, "total_rows": total_rows, "bytes": nbytes, "files": nfiles}


def verify(url: str, storage_options: dict | None = None, repair: bool = False) -> list[str]:
    """Check integrity (`affcache store verify`); returns human-readable problems, [] when healthy.

    Reads every chunk of every array of every video and checks its CRC32C and each shard index's
    (through the direct reader for numeric arrays, zarr-python for the rest, which checks the same
    checksums), and Zip's CRC-32 of every metadata entry. What it catches, per video: flipped or
    overwritten bytes in any chunk, shard index or metadata entry, a truncated archive, bytes
    appended to one, a missing shard, damaged or missing array metadata, damaged or missing group
    metadata, arrays without checksums, missing required arrays, row arrays of different lengths,
    NaN/inf embeddings, t0 > t1. Damaged root metadata raises a StoreError naming the recovery.

    A damaged video stays in the store as it is, and `todo()` does not re-read chunks (that would
    cost a full read at every stage start), so `repair=True` moves each damaged complete video's
    archive aside (`<id>.zip.damaged`): the next extraction run lists it in its todo and rewrites
    it. Videos whose archive or group metadata is unreadable, and incomplete ones, are rewritten by
    the next run already.
    """
    fs = FeatureStore.open(url, storage_options)
    problems: list[str] = []
    rerun = "the next extraction run rewrites it"
    ids = fs._all_group_ids()
    for vid, head in zip(ids, fs._group_attrs_many(ids)):
        found = _verify_archive(fs, vid)
        if not found:
            continue
        if repair:
            found.append(f"moved aside to {fs._set_aside(vid)}: {rerun}")
        elif head is None or head.get("complete") is not True:  # `todo()` lists it already
            found[-1] += f"; {rerun}"
        else:
            found.append(f"run `affcache store verify --repair {fs.url}` to mark it for re-extraction")
        problems += [f"{vid}: {p}" for p in found]
    return problems


def _verify_archive(fs: FeatureStore, vid: str) -> list[str]:
    key = _archive_key(vid)
    try:
        archive = fs._open_archive(vid)
    except ArchiveError as e:
        return [f"video archive ({key}) damaged ({e})"]
    if archive is None:  # removed since the listing
        return []
    with archive:
        meta = archive.json_entry(GROUP_KEY)
        if meta is None or meta.get("node_type") != "group":
            what = "damaged (not the JSON of a Zarr group)" if GROUP_KEY in archive.entries else "missing"
            return [f"group metadata ({key}: {GROUP_KEY}) {what}"]
        if meta.get("attributes", {}).get("complete") is not True:
            return ["incomplete group (written by another tool, or marked damaged)"]
        return _verify_video(archive)


def _has_checksums(meta: dict) -> bool:
    """Whether an array's codecs put a CRC32C after every inner chunk of a shard (or every chunk)."""
    codecs = meta.get("codecs") or []
    names = [c.get("name") for c in codecs if isinstance(c, dict)]
    if names and names[0] == "sharding_indexed":
        inner = codecs[0].get("configuration", {}).get("codecs", [])
        names = [c.get("name") for c in inner if isinstance(c, dict)]
    return "crc32c" in names


def _verify_video(archive: VideoArchive) -> list[str]:
    problems = []
    extra = archive.trailing_bytes()
    if extra:
        problems.append(f"{extra} bytes after the end of the archive (the file was extended)")
    names = archive.array_names()
    metas = {}
    for name in names:
        meta = archive.json_entry(f"{name}/zarr.json")
        if meta is None or meta.get("node_type") != "array":
            problems.append(f"array {name!r}: metadata ({name}/zarr.json) missing or damaged")
        else:
            metas[name] = meta
    missing = [n for n in REQUIRED_ARRAYS if n not in names]
    if missing:
        problems.append(f"missing required arrays {missing}")
    data: dict[str, np.ndarray] = {}
    for name, meta in metas.items():
        try:
            lost = archive.missing_shards(name, meta)
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"array {name!r}: metadata ({name}/zarr.json) damaged ({type(e).__name__}: {e})")
            continue
        if lost:
            problems.append(f"array {name!r}: missing chunk files {lost[:3]}")
            continue
        if not _has_checksums(meta):
            problems.append(f"array {name!r}: chunks without checksums (not written by this store)")
        try:
            data[name] = archive.read_array(name, meta, fast=True)
        except Exception as e:  # noqa: BLE001 - any decode or checksum error is a finding
            problems.append(f"array {name!r}: damaged chunk or shard ({type(e).__name__}: {e})")
    lengths = {n: len(data[n]) for n in ROW_ARRAYS if n in data}
    if len(set(lengths.values())) > 1:
        problems.append(f"row arrays disagree in length {lengths}")
    for name in HALF_PRECISION_ARRAYS:
        if name in data and data[name].size and not np.isfinite(data[name]).all():
            problems.append(f"array {name!r} has NaN/inf values")
    if "t0" in data and "t1" in data and len(data["t0"]) == len(data["t1"]) and (data["t0"] > data["t1"]).any():
        problems.append(f"t0 > t1 in {int((data['t0'] > data['t1']).sum())} rows")
    return problems


# ---------------------------------------------------------------------------------------- conversions


def upgrade_store(url: str, storage_options: dict | None = None) -> dict:
    """Convert a schema-2 store (a Zarr folder per video) in place to this schema (an archive per
    video), without re-extraction (`affcache store upgrade`). Returns {"converted": [...], "dropped": [...]}.

    Each complete video is read through zarr-python (every chunk's checksum checked) and written as
    an archive before its folder is deleted; the root's schema_version changes last. So a run that
    is interrupted can simply be run again. Incomplete or damaged videos are dropped (named in
    "dropped"): the next extraction run extracts them again, as it would have. One process at a
    time: conversions do not take the per-video claims.
    """
    store, attrs = _open_root(str(url), storage_options)
    if attrs.get("schema_version") == SCHEMA_VERSION:
        return {"converted": [], "dropped": []}
    if attrs.get("schema_version") != 2:
        _check_schema(str(url), attrs)
    fs = FeatureStore(str(url), store, attrs, storage_options)
    converted, dropped = [], []

    async def folders() -> list[str]:
        names = [n.rstrip("/") async for n in store.list_dir("")]
        keep = [n for n in names if n and n != "zarr.json" and not n.endswith((ARCHIVE_SUFFIX, ".partial", DAMAGED_SUFFIX))]
        metas = await _gather_limited(_get_json(store, f"{n}/zarr.json") for n in keep)
        return sorted(n for n, m in zip(keep, metas) if m is not None and m.get("node_type") == "group")

    for vid in sync(folders()):
        try:
            arrays, group_attrs = _read_folder_group(store, vid)
        except Exception as e:  # noqa: BLE001 - damaged or incomplete: re-extracted by the next run
            log.warning("%s: video %s not converted (%s); the next extraction run extracts it again", url, vid, e)
            dropped.append(vid)
        else:
            user = {k: v for k, v in group_attrs.items() if k not in RESERVED_GROUP_ATTRS}
            fs.write_video(vid, arrays, attrs=user, source=group_attrs.get("source"))
            converted.append(vid)
        sync(store.delete_dir(vid))
    root = {"zarr_format": 3, "node_type": "group", "attributes": {**attrs, "schema_version": SCHEMA_VERSION}}
    sync(store.set("zarr.json", cpu.Buffer.from_bytes(json.dumps(root, indent=2).encode())))
    return {"converted": converted, "dropped": dropped}


def _read_folder_group(store: Any, vid: str) -> tuple[dict[str, np.ndarray], dict]:
    """A complete schema-2 video group (arrays, attrs); an error when incomplete or damaged."""
    group = zarr.open_group(store, path=vid, mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    if attrs.get("complete") is not True:
        raise StoreError("incomplete group")
    arrays = {}
    for name, arr in group.arrays():
        meta = arr.metadata.to_dict()
        shape, grid = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        keys = [f"{vid}/{name}/c/" + "/".join(map(str, idx))
                for idx in np.ndindex(*[-(-s // g) for s, g in zip(shape, grid)])] if np.prod(shape) else []
        if not all(sync(_gather_limited(store.exists(k) for k in keys))):
            raise StoreError(f"array {name!r}: chunk files missing")  # zarr would read them as zeros
        value = arr[...]
        arrays[name] = np.array(value.tolist(), dtype=np.str_).reshape(value.shape) if value.dtype.kind in "OT" else value
    return arrays, attrs


def open_xarray(url: str, video: str | None = None, storage_options: dict | None = None) -> Any:
    """An `xarray.Dataset` of one complete video, or an `xarray.DataTree` of the whole store (one
    node per complete video, the store's attrs at the root). Dimension names come from the store."""
    import xarray as xr

    fs = FeatureStore.open(url, storage_options)

    def dataset(vid: str) -> Any:
        if fs._root is not None:
            zstore = zarr.storage.ZipStore(os.path.join(fs._root, _archive_key(vid)), mode="r")
        else:
            archive = fs._open_archive(vid)
            if archive is None:
                raise StoreError(f"{fs.url}: video {vid!r} is missing")
            with archive:
                entries = {k: cpu.Buffer.from_bytes(archive.read_entry(k)) for k in archive.entries}
            zstore = zarr.storage.MemoryStore(entries, read_only=True)
        return xr.open_zarr(zstore, consolidated=False, zarr_format=3)

    if video is not None:
        if not fs.is_complete(video):
            raise StoreError(f"{fs.url}: video {video!r} is missing or incomplete; run the extraction stage")
        return dataset(video)
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=fs.attrs), **{v: dataset(v) for v in fs.video_ids()}})


def export_h5(url: str, out_path: str | os.PathLike, storage_options: dict | None = None) -> None:
    """Export every complete video to one HDF5 file (`affcache store export-h5`), for tools that want
    one file. Dict-valued attrs are stored as JSON strings (HDF5 attrs cannot hold dicts)."""
    import h5py

    fs = FeatureStore.open(url, storage_options)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as h5:
        _copy_attrs(h5.attrs, fs.attrs)
        for vid in fs.video_ids():
            video = fs.read_video(vid)
            g = h5.create_group(vid)
            _copy_attrs(g.attrs, video.attrs)
            for name, arr in video.items():
                if arr.dtype.kind == "U":
                    g.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype("utf-8"))
                else:
                    g.create_dataset(name, data=arr)


def _copy_attrs(target: Any, attrs: dict) -> None:
    for key, value in attrs.items():
        if value is None or isinstance(value, (dict, list)):
            target[key] = json.dumps(value)
        else:
            target[key] = value
