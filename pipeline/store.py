"""The feature store: one Zarr v3 hierarchy per (modality, extractor fingerprint).

Layout (see DESIGN.md "Feature store")::

    <name>-<hash8>.zarr/            root attrs: schema_version, extractor, fingerprint, fingerprint_hash,
                                    package_version, created_at (written only by `create`/`consolidate`)
      <video_id>/                   group attrs: source (fingerprint of the media/crops), user attrs,
                                    complete (True written LAST, after every array)
        t0, t1 [N] float32, valid [N] bool, emb [N, D] float16, extras ...
                                    every array: Zarr v3 `dimension_names` (`time`, `feature`, ...)

Why these choices:
- *One shard per array per video* (sharding codec, inner chunks of ~2 MiB): a video costs ~one file
  per array, which DVC and object stores handle well, while inner chunks keep partial reads cheap.
- *`complete` last*: a process killed mid-video (kill -9, preempted GPU node) leaves a group without
  `complete`; `todo()` lists it and `write_video()` deletes and rewrites it, so resuming is always safe.
- *No compression for numeric arrays*: measured on this machine (100 videos x 1000-9000 rows x 256
  fp16, tanh-distributed like real embeddings): zstd level 1 saved 11 % of disk but halved read speed
  (~280 vs ~600-800 MB/s); blosc-lz4+shuffle saved nothing. Embeddings are essentially incompressible
  and training wants a whole split in RAM fast. Strings (behavior descriptions) are zstd-compressed:
  they are small and compress well.
- *A CRC32C on every inner chunk and on every shard index* (Zarr's `crc32c` codec): flipped or lost
  bytes in any chunk are caught by every read path (zarr-python's codec, the direct reader below,
  `verify`), so damaged data is never returned as good data. Cost measured in `bench/RESULTS.md`.
  Stores of schema 1 (written before checksums) are refused with a message to re-extract: reading
  them would silently drop the guarantee.
- *Dimension names* on every array, so xarray opens a video group (`xr.open_zarr(store,
  group=video_id)`) or the whole store (`xr.open_datatree(store, engine="zarr")`): see
  `dimension_names`.
- *A direct reader for our own layout* (`pipeline.shard_reader`): for local stores, `read_many`
  bypasses zarr-python for the plain numeric arrays written here; see that module for why and when.
  The files remain ordinary Zarr v3: any Zarr reader can open them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from pipeline.files import (atomic_output, atomic_write_text, is_url, local_path, read_bytes, sampled_digest,
                            url_fs)
from pipeline.records import Fingerprinted, Video
from pipeline.shard_reader import read_shard, shard_layout

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: CRC32C on every inner chunk, dimension names on every array
REQUIRED_ARRAYS = ("t0", "t1", "valid")
# Arrays stored in float16 (embeddings / hidden states): halves RAM and disk, ample for 256-d+ features.
HALF_PRECISION_ARRAYS = ("emb", "emb_mean", "lower")
# Arrays that must have one row per t0/t1/valid row.
ROW_ARRAYS = ("t0", "t1", "valid") + HALF_PRECISION_ARRAYS
RESERVED_GROUP_ATTRS = ("complete", "source")
TARGET_CHUNK_BYTES = 2 * 1024 * 1024  # inner chunk size: 4096 rows of 256-d fp16
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


async def _list_children(store: Any, prefix: str = "") -> list[str]:
    names = []
    async for name in store.list_dir(prefix):
        name = name.rstrip("/")
        if name and name != "zarr.json" and not name.startswith(".") and not name.endswith(".partial"):
            names.append(name)
    return sorted(set(names))


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
    if name in ("t0", "t1"):
        return arr.astype(np.float32, copy=False)
    if name == "valid":
        return arr.astype(bool, copy=False)
    if name in HALF_PRECISION_ARRAYS:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, with a fix
            half = arr.astype(np.float16, copy=False)
        if not np.isfinite(half).all():
            raise StoreError(
                f"video {video_id!r}: array {name!r} has NaN/inf values (or overflows float16): "
                "write zeros with valid=False for rows without features, or normalise the features"
            )
        return half
    return arr


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


def _chunk_layout(arr: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(inner chunk shape, shard shape): one shard holds the whole array; inner chunks ~2 MiB.

    Chunk rows are balanced (k chunks of ceil(N/k) rows) so the padding of the last chunk, which is
    stored uncompressed, stays under k rows instead of up to a whole chunk.
    """
    rows = arr.shape[0]
    tail = tuple(max(1, d) for d in arr.shape[1:])
    row_bytes = max(1, arr.dtype.itemsize * math.prod(tail)) if arr.dtype.kind != "U" else 64
    target_rows = max(1, TARGET_CHUNK_BYTES // row_bytes)
    if rows <= 0:
        return (1,) + tail, (1,) + tail
    n_chunks = math.ceil(rows / target_rows)
    chunk_rows = math.ceil(rows / n_chunks)
    return (chunk_rows,) + tail, (chunk_rows * n_chunks,) + tail


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


async def _create_array(group: Any, name: str, arr: np.ndarray, dims: tuple[str, ...]) -> None:
    chunks, shards = _chunk_layout(arr)
    is_str = arr.dtype.kind == "U"
    a = await group.create_array(
        name,
        shape=arr.shape,
        dtype=str if is_str else arr.dtype,
        chunks=chunks,
        shards=shards,
        # a CRC32C after every inner chunk (the shard index has its own by default); zstd for strings
        compressors=[ZstdCodec(level=0), Crc32cCodec()] if is_str else [Crc32cCodec()],
        dimension_names=dims,
        # Always write chunks, even all-fill ones: a missing shard file then means damage (verify).
        config={"write_empty_chunks": True},
    )
    if arr.size:
        await a.setitem(Ellipsis, arr)


async def _write_group(store: Any, video_id: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Create the group (deleting an old one), all arrays concurrently, then mark it complete.

    One coroutine on zarr's event loop instead of ~10 blocking round trips: zarr-python spends most
    of a small write in metadata I/O, which overlaps when the arrays are created concurrently.
    """
    group = await zarr.api.asynchronous.create_group(
        store=store, path=video_id, overwrite=True, attributes=attrs, zarr_format=3)
    dims = dimension_names(arrays)
    await asyncio.gather(*(_create_array(group, n, a, dims[n]) for n, a in arrays.items()))
    await group.update_attributes({"complete": True})  # LAST: marks the group as usable


# ---------------------------------------------------------------------------------------- FeatureStore


class FeatureStore:
    """One extractor configuration's cached features: a group per video, written once, read often."""

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
        of two models in one store would silently poison training, so this refuses.
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
            # rewritten from the configuration; every video group keeps its own metadata and flag.
            log.warning("%s: root metadata damaged; rewriting it from this extractor's configuration "
                        "(video groups are kept)", url)
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
            # "w-" refuses a store that holds anything; a repaired one keeps its video groups
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
        _check_schema(url, attrs)
        return cls(url, store, attrs, storage_options)

    # -- state ---------------------------------------------------------------------------------------

    def _group_attrs_many(self, video_ids: Sequence[str]) -> list[dict | None]:
        """Group attrs of many videos with concurrent small reads (no zarr objects: ~50x faster)."""
        async def one(vid: str) -> dict | None:
            meta = await _get_json(self._store, f"{vid}/zarr.json")
            if meta is None or meta.get("node_type") != "group":
                return None
            return meta.get("attributes", {})

        return sync(_gather_limited(one(v) for v in video_ids))

    def _all_group_ids(self) -> list[str]:
        return sync(_list_children(self._store, ""))

    def video_ids(self) -> list[str]:
        """Ids of complete groups only (incomplete ones are garbage waiting to be rewritten)."""
        ids = self._all_group_ids()
        return [v for v, a in zip(ids, self._group_attrs_many(ids)) if a and a.get("complete") is True]

    def is_complete(self, video_id: str) -> bool:
        (attrs,) = self._group_attrs_many([video_id])
        return bool(attrs and attrs.get("complete") is True)

    def todo(self, videos: Sequence[Video],
             source: Callable[[Video], str | Sequence[str]] = lambda v: v.media_path) -> list[Video]:
        """Videos that need (re-)extraction: group missing, incomplete, or its source changed."""
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
        """Write one video's group: delete any old/partial group, arrays, then `complete: True` last.

        `source` should be `source_fingerprint(<the video's source path>)`: `todo()` compares it with
        the current file, so a group written without it is always listed as needing work.

        Safe from several threads for different ids: each call touches only its own group (parents
        are created with set-if-not-exists, so the root attrs are never rewritten here).
        """
        _check_video_id(video_id)
        prepared = {name: _prepare_array(video_id, name, a) for name, a in arrays.items()}
        _validate_arrays(video_id, prepared)
        attrs = dict(attrs or {})
        clash = [k for k in RESERVED_GROUP_ATTRS if k in attrs]
        if clash:
            raise StoreError(f"video {video_id!r}: attrs {clash} are reserved by the store; rename them")
        group_attrs = {**attrs, "source": source, "complete": False}
        _json_or_error(self.url, f"attrs of video {video_id!r}", group_attrs)
        try:
            sync(_write_group(self._store, video_id, prepared, group_attrs))
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the store and video named
            raise StoreError(f"{self.url}: writing video {video_id!r} failed ({type(e).__name__}: {e}); "
                             "the group stays incomplete and is rewritten on the next run") from e

    def consolidate(self) -> None:
        """Refresh the consolidated metadata at the root (end of a stage; helps remote readers)."""
        with warnings.catch_warnings():  # "not part of the v3 spec yet": known, and readers fall back
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self._store, zarr_format=3)

    # -- reading -------------------------------------------------------------------------------------

    def read_video(self, video_id: str, arrays: Sequence[str] | None = None, fast: bool = True) -> VideoArrays:
        """One complete video's arrays in RAM (StoreError if it is missing or incomplete)."""
        meta, names = self._group_listing(video_id, fast)
        attrs = (meta or {}).get("attributes", {})
        if meta is None or attrs.get("complete") is not True:
            state = ("missing (or its group metadata is unreadable)" if meta is None
                     else "incomplete (its extraction was interrupted, or `store verify --repair` marked it damaged)")
            raise StoreError(f"{self.url}: video {video_id!r} is {state}; run the extraction stage again "
                             "(it lists this video in its todo)")
        lost = [n for n in REQUIRED_ARRAYS if n not in names]
        if lost:
            raise StoreError(f"{self.url}: video {video_id!r} has lost its required arrays {lost} (damaged); run "
                             f"`affcache store verify --repair {self.url}`, then re-run the extraction stage")
        wanted = list(names) if arrays is None else list(arrays)
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise StoreError(f"{self.url}: video {video_id!r} has no arrays {unknown} (it has {names}); "
                             "check the array names or the extractor that wrote this store")
        out = {}
        for name in wanted:
            try:
                out[name] = self._read_array(video_id, name, fast)
            except Exception as e:  # noqa: BLE001 - damaged chunk/shard: name it and say what to do
                raise StoreError(
                    f"{self.url}: video {video_id!r} array {name!r} is unreadable or damaged ({type(e).__name__}: "
                    f"{e}); run `affcache store verify --repair {self.url}` (it marks every damaged video for "
                    "re-extraction), then re-run the extraction stage") from e
        return VideoArrays(out, attrs)

    def _group_listing(self, video_id: str, fast: bool) -> tuple[dict | None, list[str]]:
        """(group metadata or None, array names). Local fast path: plain file calls, because a hop
        through zarr's event-loop thread per call costs more than the read on a busy machine."""
        if fast and isinstance(self._store, LocalStore):
            group_dir = os.path.join(str(self._store.root), video_id)
            try:
                with open(os.path.join(group_dir, "zarr.json"), "rb") as f:
                    meta = json.load(f)
                names = sorted(n for n in os.listdir(group_dir)
                               if os.path.isfile(os.path.join(group_dir, n, "zarr.json")))
                return meta, names
            except (OSError, ValueError):
                return None, []
        meta = sync(_get_json(self._store, f"{video_id}/zarr.json"))
        return meta, (sync(_list_children(self._store, video_id)) if meta is not None else [])

    def _read_array(self, video_id: str, name: str, fast: bool) -> np.ndarray:
        if fast and isinstance(self._store, LocalStore):
            array_dir = os.path.join(str(self._store.root), video_id, name)
            try:
                with open(os.path.join(array_dir, "zarr.json"), "rb") as f:
                    layout = shard_layout(json.load(f))
            except (OSError, ValueError):
                layout = None
            if layout is not None:
                return read_shard(array_dir, layout)
        arr = zarr.open_array(self._store, path=f"{video_id}/{name}", mode="r", zarr_format=3)
        # zarr reads a missing chunk file as fill values; this store always writes every chunk, so a
        # missing one is damage, not zeros
        lost = _missing_shards(self._store, video_id, name, arr.metadata.to_dict())
        if lost:
            raise FileNotFoundError(f"chunk files {lost[:3]} missing")
        out = arr[...]
        # zarr returns numpy StringDType/object for strings: give callers plain fixed-width str arrays.
        return np.array(out.tolist(), dtype=np.str_).reshape(out.shape) if out.dtype.kind in "OT" else out

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


def _check_schema(url: str, attrs: dict) -> None:
    """Refuse stores of another schema: an old one (1: no chunk checksums) cannot promise that what
    it returns is undamaged, and a newer one may hold what this version cannot read."""
    found = attrs.get("schema_version")
    if found == SCHEMA_VERSION:
        return
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


async def _array_metas(store: Any, video_id: str) -> dict[str, dict]:
    names = await _list_children(store, video_id)
    metas = await asyncio.gather(*(_get_json(store, f"{video_id}/{n}/zarr.json") for n in names))
    return {n: m for n, m in zip(names, metas) if m is not None and m.get("node_type") == "array"}


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


def store_info(url: str, storage_options: dict | None = None) -> dict:
    """A summary for `affcache store info`: attrs, video counts, arrays and sizes."""
    fs = FeatureStore.open(url, storage_options)
    ids = fs._all_group_ids()
    attrs = fs._group_attrs_many(ids)
    complete = [v for v, a in zip(ids, attrs) if a and a.get("complete") is True]
    metas = sync(_gather_limited(_array_metas(fs._store, v) for v in complete))
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
    (through the direct reader for local numeric arrays, ~10x faster than zarr-python, which checks
    the same checksums and reads everything else), and checks that every shard file exists (chunks
    are always written, so a missing one means damage). What it catches, per video: flipped or
    overwritten bytes in any chunk or shard index, a truncated or extended shard, a missing shard,
    damaged or missing array metadata, damaged or missing group metadata, an interrupted write,
    arrays without checksums, missing required arrays, row arrays of different lengths, NaN/inf
    embeddings, t0 > t1. Damaged root metadata raises a StoreError naming the recovery.

    A damaged video stays in the store as it is, and `todo()` does not re-read chunks (that would
    cost a full read at every stage start), so `repair=True` marks each damaged complete video
    incomplete: the next extraction run lists it in its todo and rewrites it. Videos whose group
    metadata is damaged or missing, and interrupted ones, are rewritten by the next run already.
    """
    fs = FeatureStore.open(url, storage_options)
    ids = fs._all_group_ids()
    problems: list[str] = []
    rerun = "the next extraction run rewrites it"
    for vid, a in zip(ids, fs._group_attrs_many(ids)):
        if a is None:
            there = sync(fs._store.exists(f"{vid}/zarr.json"))
            what = "damaged (not the JSON of a Zarr group)" if there else "missing"
            problems.append(f"{vid}: group metadata ({vid}/zarr.json) {what}; {rerun}")
            continue
        if a.get("complete") is not True:
            problems.append(f"{vid}: incomplete group (interrupted write or marked damaged); {rerun}")
            continue
        found = _verify_video(fs, vid)
        if found and repair:
            zarr.open_group(fs._store, path=vid, mode="r+", zarr_format=3).update_attributes({"complete": False})
            found.append(f"marked incomplete: {rerun}")
        elif found:
            found.append(f"run `affcache store verify --repair {fs.url}` to mark it for re-extraction")
        problems += [f"{vid}: {p}" for p in found]
    return problems


def _has_checksums(meta: dict) -> bool:
    """Whether an array's codecs put a CRC32C after every inner chunk of a shard (or every chunk)."""
    codecs = meta.get("codecs") or []
    names = [c.get("name") for c in codecs if isinstance(c, dict)]
    if names and names[0] == "sharding_indexed":
        inner = codecs[0].get("configuration", {}).get("codecs", [])
        names = [c.get("name") for c in inner if isinstance(c, dict)]
    return "crc32c" in names


def _verify_video(fs: FeatureStore, vid: str) -> list[str]:
    problems = []
    names = sync(_list_children(fs._store, vid))
    raw = sync(_gather_limited(_get_json(fs._store, f"{vid}/{n}/zarr.json") for n in names))
    metas = {}
    for name, meta in zip(names, raw):
        if not isinstance(meta, dict) or meta.get("node_type") != "array":
            problems.append(f"array {name!r}: metadata ({vid}/{name}/zarr.json) missing or damaged")
        else:
            metas[name] = meta
    missing = [n for n in REQUIRED_ARRAYS if n not in names]
    if missing:
        problems.append(f"missing required arrays {missing}")
    data: dict[str, np.ndarray] = {}
    for name, meta in metas.items():
        try:
            lost = _missing_shards(fs._store, vid, name, meta)
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"array {name!r}: metadata ({vid}/{name}/zarr.json) damaged ({type(e).__name__}: {e})")
            continue
        if lost:
            problems.append(f"array {name!r}: missing chunk files {lost[:3]}")
            continue
        if not _has_checksums(meta):
            problems.append(f"array {name!r}: chunks without checksums (not written by this store)")
        try:
            data[name] = fs._read_array(vid, name, fast=True)
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


def _missing_shards(store: Any, vid: str, name: str, meta: dict) -> list[str]:
    shape = meta.get("shape", [])
    if not shape or math.prod(shape) == 0:
        return []
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
    counts = [math.ceil(s / g) for s, g in zip(shape, grid)]
    keys = [f"{vid}/{name}/c/" + "/".join(map(str, idx)) for idx in np.ndindex(*counts)]
    exists = sync(_gather_limited(store.exists(k) for k in keys))
    return [k for k, ok in zip(keys, exists) if not ok]


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
