"""One video's group of a feature store as a single Zip file holding a Zarr v3 hierarchy.

Why one file per video: DVC and object stores pay per object, not per byte. A Zarr group of k
arrays is 1 + 2k files (group metadata, then metadata and one shard per array): ~60 files per video
across the four feature stores, which made `dvc push`/`dvc pull` of Aff-Wild2's 600 videos take
minutes against a local S3 server (`bench/dvc_remote_bench.py`, figures in `bench/RESULTS.md`).
Packed, a video costs one object per store.

Why Zip: it is the container Zarr readers already know. Inside is the ordinary Zarr v3 hierarchy
(`zarr.json` of the group, `<array>/zarr.json`, `<array>/c/0[/0]`), so
`zarr.open_group(zarr.storage.ZipStore(path, mode="r"))` and `xarray.open_zarr` read it as they
would a folder.

Layout choices:
- *Entries stored, not compressed* (`ZIP_STORED`): every shard is one contiguous byte range of the
  file, which `pipeline.shard_reader` reads straight into the output array with its CRC32C checks.
  Metadata entries carry Zip's own CRC-32, checked on every read of them.
- *The group's `zarr.json` first*: a video's state (`complete`, `source`) is one small read of the
  archive's head (`head_group_meta`), which keeps `todo()` cheap on object storage.
- *Deterministic bytes*: fixed entry timestamps and a fixed entry order, so the same features give
  the same file (DVC deduplicates by content).
- *Plain numeric arrays written here, without zarr-python*: their metadata comes from a per-dtype
  template that zarr-python creates (so it is exactly what zarr writes), and their shard from
  `shard_reader.shard_pieces`, the mirror of the direct reader. zarr-python's own write path spent
  most of its time in per-array metadata I/O and buffer copies (`bench/store_bench.py`). Anything
  else (strings, empty arrays) is encoded by zarr-python into memory and copied in.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import struct
import sys
import zipfile
import zlib
from typing import Any, BinaryIO

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import cpu
from zarr.storage import MemoryStore

from pipeline.shard_reader import BufferRegion, FileRegion, read_shard, shard_layout, shard_pieces

GROUP_KEY = "zarr.json"
HEAD_BYTES = 16 * 1024  # what a state scan reads of each archive; a larger group metadata costs a second read
_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # Zip's epoch: same features, same bytes
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"
_END_MAGIC = b"PK\x05\x06"


class ArchiveError(Exception):
    """A video archive that cannot be read as written: not a Zip, truncated, or an entry damaged."""


# ------------------------------------------------------------------------------------------ writing


def chunk_layout(arr: np.ndarray, target_bytes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(inner chunk shape, shard shape): one shard holds the whole array; inner chunks ~target_bytes
    (the store uses 2 MiB: big enough for fast reads, small enough for cheap partial reads).

    Chunk rows are balanced (k chunks of ceil(N/k) rows) so the padding of the last chunk, which is
    stored uncompressed, stays under k rows instead of up to a whole chunk.
    """
    rows = arr.shape[0]
    tail = tuple(max(1, d) for d in arr.shape[1:])
    row_bytes = max(1, arr.dtype.itemsize * math.prod(tail)) if arr.dtype.kind != "U" else 64
    target_rows = max(1, target_bytes // row_bytes)
    if rows <= 0:
        return (1,) + tail, (1,) + tail
    n_chunks = math.ceil(rows / target_rows)
    chunk_rows = math.ceil(rows / n_chunks)
    return (chunk_rows,) + tail, (chunk_rows * n_chunks,) + tail


def _codecs(arr: np.ndarray) -> list:
    """A CRC32C after every inner chunk (the shard index has its own by default); zstd for strings."""
    return [ZstdCodec(level=0), Crc32cCodec()] if arr.dtype.kind == "U" else [Crc32cCodec()]


def _zarr_encoded(name: str, arr: np.ndarray, dims: tuple[str, ...], target_bytes: int) -> dict[str, bytes]:
    """An array's entries (`<name>/zarr.json`, its shard) as zarr-python writes them, in memory."""
    chunks, shards = chunk_layout(arr, target_bytes)
    entries: dict[str, Any] = {}
    is_str = arr.dtype.kind == "U"
    a = zarr.create_array(MemoryStore(entries), name=name, shape=arr.shape, dtype=str if is_str else arr.dtype,
                          chunks=chunks, shards=shards, compressors=_codecs(arr), dimension_names=dims,
                          # every chunk written, even all-fill ones: a missing shard means damage
                          config={"write_empty_chunks": True})
    if arr.size:
        a[...] = arr
    return {k: v.to_bytes() for k, v in sorted(entries.items()) if k.startswith(f"{name}/")}  # not the implicit root


@functools.lru_cache(maxsize=256)
def _plain_template(dtype: str, ndim: int, dims: tuple[str, ...]) -> str:
    """zarr-python's metadata (JSON) for a sharded, CRC32C-checked array of this dtype and rank (the
    shapes are filled in per array by `_plain_metadata`)."""
    probe = np.zeros((2,) + (1,) * (ndim - 1), dtype=np.dtype(dtype))
    return _zarr_encoded("a", probe, dims, probe.itemsize)["a/zarr.json"].decode()


def _plain_metadata(arr: np.ndarray, dims: tuple[str, ...], target_bytes: int) -> dict | None:
    """The array's metadata when the direct writer can encode it (the layout `shard_layout` reads):
    a numeric array with rows, in little-endian byte order."""
    little = arr.dtype.byteorder == "<" or arr.dtype.itemsize == 1 or (arr.dtype.isnative and sys.byteorder == "little")
    if arr.dtype.kind not in "biuf" or arr.size == 0 or not little:
        return None
    chunks, shards = chunk_layout(arr, target_bytes)
    meta = json.loads(_plain_template(arr.dtype.str, arr.ndim, dims))
    meta["shape"] = list(arr.shape)
    meta["chunk_grid"]["configuration"]["chunk_shape"] = list(shards)
    meta["codecs"][0]["configuration"]["chunk_shape"] = list(chunks)
    return meta if shard_layout(meta) is not None else None


def _entry(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.file_size = size  # known up front: Zip64 records only where an entry needs them
    return info


def _put(zf: zipfile.ZipFile, name: str, pieces: list) -> None:
    size = sum(memoryview(p).nbytes for p in pieces)
    with zf.open(_entry(name, size), "w") as dest:
        for p in pieces:
            dest.write(p)


def write_archive(out: BinaryIO, attrs: dict, arrays: dict[str, np.ndarray], dims: dict[str, tuple[str, ...]],
                  target_bytes: int) -> None:
    """Write one video's group (attrs, arrays with their dimension names) as a Zip to `out`, which
    must be seekable (a file, or BytesIO): the group metadata first, then each array's metadata and
    shard. Arrays must already be normalised (`pipeline.store`); data is written without copies."""
    group = {"attributes": attrs, "zarr_format": 3, "node_type": "group"}
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _put(zf, GROUP_KEY, [json.dumps(group, ensure_ascii=False).encode("utf-8")])
        for name, arr in arrays.items():
            meta = _plain_metadata(arr, dims[name], target_bytes)
            if meta is None:
                for key, data in _zarr_encoded(name, arr, dims[name], target_bytes).items():
                    _put(zf, key, [data])
                continue
            _put(zf, f"{name}/zarr.json", [json.dumps(meta).encode()])
            shard_key = f"{name}/c/" + "/".join(["0"] * arr.ndim)
            _put(zf, shard_key, shard_pieces(arr, meta["codecs"][0]["configuration"]["chunk_shape"][0]))


# ------------------------------------------------------------------------------------------ reading


def head_group_meta(head: bytes) -> tuple[dict | None, int]:
    """The group metadata from the first bytes of an archive: (metadata, 0), or (None, n) when the
    first entry is longer than `head` (read n bytes and call again), or (None, 0) when the head is
    not this layout's (not a Zip, another first entry, a damaged entry): read the whole archive."""
    if len(head) < _LOCAL_HEADER.size:
        return None, 0
    magic, _ver, flags, method, _t, _d, crc, csize, _size, nlen, xlen = _LOCAL_HEADER.unpack_from(head)
    start = _LOCAL_HEADER.size + nlen + xlen
    if magic != _LOCAL_MAGIC or method != zipfile.ZIP_STORED or flags & 0x08 or csize == 0xFFFFFFFF:
        return None, 0
    if head[_LOCAL_HEADER.size: _LOCAL_HEADER.size + nlen] != GROUP_KEY.encode():
        return None, 0
    if len(head) < start + csize:
        return None, start + csize
    body = head[start: start + csize]
    if zlib.crc32(body) != crc:
        return None, 0
    try:
        meta = json.loads(body)
    except ValueError:
        return None, 0
    return (meta if isinstance(meta, dict) else None), 0


class VideoArchive:
    """An open video archive: its entries, group and array metadata, and arrays.

    Opened from a local file (`open_file`: shards are read with positioned reads, never loaded
    whole) or from bytes fetched from object storage (`from_bytes`). `name` appears in every error.
    """

    def __init__(self, fileobj: BinaryIO, name: str, fd: int | None, data: memoryview | None):
        self.name = name
        self._file = fileobj
        self._fd = fd
        self._data = data
        try:
            self._zip = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            fileobj.close()
            raise ArchiveError(f"{name}: not a readable Zip archive ({e}): damaged, truncated or not written here") from None
        self.entries = {i.filename: i for i in self._zip.infolist()}

    @classmethod
    def open_file(cls, path: str) -> "VideoArchive":
        f = open(path, "rb")
        return cls(f, path, f.fileno(), None)

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> "VideoArchive":
        return cls(io.BytesIO(data), name, None, memoryview(data))

    @classmethod
    def open_stream(cls, fileobj: BinaryIO, name: str) -> "VideoArchive":
        """From a seekable file object (an object opened with ranged reads): for reading metadata;
        a shard read from it is loaded into memory first."""
        return cls(fileobj, name, None, None)

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def __enter__(self) -> "VideoArchive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- structure ---------------------------------------------------------------------------------

    def trailing_bytes(self) -> int:
        """Bytes after the Zip's end record (0 for an archive as written; Zip readers ignore them)."""
        size = self._size()
        tail = self._read(min(size, 22 + 65535 + 20), max(0, size - (22 + 65535 + 20)))
        at = tail.rfind(_END_MAGIC)
        if at < 0 or at + 22 > len(tail):
            return 0
        comment = int.from_bytes(tail[at + 20: at + 22], "little")
        return len(tail) - (at + 22 + comment)

    def read_entry(self, key: str) -> bytes:
        """An entry's bytes, its Zip CRC-32 checked (ArchiveError if damaged, KeyError if absent).

        Stored entries (all of this layout's) are read with one positioned read of the local header
        and the data together; zipfile's own reader, ~5x slower per small entry, reads the rest."""
        info = self.entries[key]
        if info.compress_type == zipfile.ZIP_STORED and info.flag_bits & 0x01 == 0:
            n = len(info.orig_filename.encode("utf-8"))
            raw = self._read(_LOCAL_HEADER.size + n + len(info.extra) + info.compress_size, info.header_offset)
            if len(raw) >= _LOCAL_HEADER.size and raw[:4] == _LOCAL_MAGIC:
                nlen, xlen = _LOCAL_HEADER.unpack_from(raw)[-2:]
                start = _LOCAL_HEADER.size + nlen + xlen
                data = raw[start: start + info.compress_size]
                if len(data) < info.compress_size:  # a longer local extra field than the directory's
                    data = self._read(info.compress_size, info.header_offset + start)
                if len(data) == info.compress_size and zlib.crc32(data) == info.CRC:
                    return data
                raise ArchiveError(f"{self.name}: entry {key} is damaged (Zip CRC-32 mismatch)")
        try:
            return self._zip.read(key)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
            raise ArchiveError(f"{self.name}: entry {key} is damaged ({e})") from None

    def json_entry(self, key: str) -> dict | None:
        """A metadata entry as a dict; None when it is absent, damaged or not a JSON object."""
        try:
            doc = json.loads(self.read_entry(key))
        except (KeyError, ArchiveError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def array_names(self) -> list[str]:
        """Names of the arrays whose metadata entry exists (whatever its state)."""
        return sorted({k.split("/", 1)[0] for k in self.entries if k.count("/") == 1 and k.endswith("/zarr.json")})

    def shard_keys(self, name: str, meta: dict) -> list[str]:
        """The chunk keys the array's metadata says exist (one per shard of its chunk grid)."""
        shape = meta.get("shape", [])
        if not shape or math.prod(shape) == 0:
            return []
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        counts = [math.ceil(s / g) for s, g in zip(shape, grid)]
        return [f"{name}/c/" + "/".join(map(str, idx)) for idx in np.ndindex(*counts)]

    def missing_shards(self, name: str, meta: dict) -> list[str]:
        return [k for k in self.shard_keys(name, meta) if k not in self.entries]

    # -- arrays ------------------------------------------------------------------------------------

    def read_array(self, name: str, meta: dict, fast: bool = True) -> np.ndarray:
        """One array. The direct reader for the plain layout (`fast`), zarr-python otherwise; both
        check every chunk's CRC32C. A missing shard raises (chunks are always written)."""
        lost = self.missing_shards(name, meta)
        if lost:
            raise FileNotFoundError(f"{self.name}: chunk entries {lost[:3]} missing")
        layout = shard_layout(meta) if fast else None
        if layout is not None:
            keys = self.shard_keys(name, meta)
            if not keys:
                return np.empty(layout["shape"], layout["dtype"])
            return read_shard(self._region(keys[0]), layout)
        prefix = f"{name}/"
        entries = {k: cpu.Buffer.from_bytes(self.read_entry(k)) for k in self.entries if k.startswith(prefix)}
        arr = zarr.open_array(MemoryStore(entries, read_only=True), path=name, mode="r", zarr_format=3)
        out = arr[...]
        # zarr returns numpy StringDType/object for strings: give callers plain fixed-width str arrays.
        return np.array(out.tolist(), dtype=np.str_).reshape(out.shape) if out.dtype.kind in "OT" else out

    def _region(self, key: str) -> FileRegion | BufferRegion:
        """Where an entry's bytes lie in the archive (its local header says how long the header is)."""
        info = self.entries[key]
        if info.compress_type != zipfile.ZIP_STORED:
            raise ArchiveError(f"{self.name}: entry {key} is compressed; this store writes stored entries")
        head = self._read(_LOCAL_HEADER.size, info.header_offset)
        if len(head) < _LOCAL_HEADER.size or head[:4] != _LOCAL_MAGIC:
            raise ArchiveError(f"{self.name}: entry {key}: damaged local header at {info.header_offset}")
        nlen, xlen = _LOCAL_HEADER.unpack(head)[-2:]
        start = info.header_offset + _LOCAL_HEADER.size + nlen + xlen
        name = f"{self.name}: {key}"
        if self._data is not None:
            return BufferRegion(self._data[start: start + info.compress_size], name)
        if self._fd is None:
            return BufferRegion(memoryview(self._read(info.compress_size, start)), name)
        return FileRegion(self._fd, start, min(info.compress_size, max(0, self._size() - start)), name)

    def _size(self) -> int:
        if self._data is not None:
            return len(self._data)
        if self._fd is not None:
            return os.fstat(self._fd).st_size
        return self._file.seek(0, io.SEEK_END)

    def _read(self, n: int, offset: int) -> bytes:
        if self._data is not None:
            return bytes(self._data[offset: offset + n])
        if self._fd is not None:
            return os.pread(self._fd, n, offset)
        self._file.seek(offset)
        return self._file.read(n)
