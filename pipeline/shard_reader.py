"""A direct reader (and its mirror, the writer) for the plain single-shard numeric arrays
`pipeline.store` writes.

Why it exists: zarr-python spends ~1-2 ms opening each array (metadata parsing, codec pipeline
objects) and copies every chunk twice; with ~600 videos x 4 arrays that overhead dominates a
whole-split read. Measured with `bench/store_bench.py` (Aff-Wild2-sized face cache, 1.5 GB; table in
`bench/RESULTS.md`): `FeatureStore.read_many` through this reader ran at 0.45-1.53x the speed of
`np.load` on one `.npy` per video (0.64x on a typical loaded run), zarr-python's own reader
(`read_many(fast=False)`) at 0.05-0.11x. Training wants a whole split in RAM fast, so the store
keeps this reader. Writing had the same overhead; `shard_pieces` encodes the same layout without it.

When it is used: only for arrays whose metadata is exactly the layout the store writes
(`sharding_indexed` over `bytes`, little-endian, shard index at the end, one shard holding the whole
array); `shard_layout` returns None for anything else (strings, foreign codecs, several shards) and
the caller falls back to zarr-python. The shard is a byte range of a video archive: `FileRegion`
(a local file: positioned reads) or `BufferRegion` (an archive fetched from object storage). Per the
Zarr v3 sharding spec, `read_shard` reads the shard index and each inner chunk straight into the
output array: one copy, GIL released during file reads.

Checksums: every inner chunk ends with its CRC32C (the `crc32c` codec) and so does the shard index.
This reader checks both, with one `google_crc32c.value` call per chunk (the library zarr's own
`Crc32cCodec` uses, ~9 GB/s here), and raises `ChecksumError` naming the file and the chunk: a
damaged chunk is never returned as data. The layout without per-chunk checksums (store schema 1)
is not accepted here (`shard_layout` returns None) and the store refuses such stores anyway.
"""

from __future__ import annotations

import os

import google_crc32c
import numpy as np


_SIMPLE_DTYPES = {
    "bool": "|b1", "int8": "|i1", "uint8": "|u1", "int16": "<i2", "uint16": "<u2", "int32": "<i4",
    "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "float16": "<f2", "float32": "<f4", "float64": "<f8",
}
_MISSING = np.uint64(2**64 - 1)
_CRC_BYTES = 4


class ChecksumError(OSError):
    """A chunk or shard index whose bytes do not match their CRC32C: the file is damaged."""


def _crc(data: np.ndarray) -> bytes:
    """CRC32C of a uint8 array, as the 4 little-endian bytes the `crc32c` codec appends.

    google_crc32c takes only read-only buffers, hence the read-only view (no copy)."""
    view = data.view()
    view.flags.writeable = False
    return np.uint32(google_crc32c.value(view)).tobytes()


def _read_at(fd: int, buffers: list[np.ndarray], offset: int) -> int:
    """Fill `buffers` from `offset` with one preadv (GIL released, no file position, no buffering);
    a loop of preads where the platform has no preadv. Returns the bytes read."""
    views = [memoryview(b).cast("B") for b in buffers]
    if hasattr(os, "preadv"):
        total = 0
        while views:  # preadv may return short on huge reads: continue where it stopped
            got = os.preadv(fd, views, offset + total)
            if got == 0:
                break
            total += got
            while views and got >= len(views[0]):
                got -= len(views[0])
                views.pop(0)
            if views and got:
                views[0] = views[0][got:]
        return total
    total = 0
    for view in views:
        while len(view):
            data = os.pread(fd, len(view), offset + total)
            if not data:
                return total
            view[: len(data)] = data
            total += len(data)
            view = view[len(data):]
    return total


def shard_layout(meta: dict) -> dict | None:
    """The plain layout `_create_array` writes for numeric arrays, or None if this array differs."""
    try:
        dtype = _SIMPLE_DTYPES.get(meta["data_type"]) if isinstance(meta["data_type"], str) else None
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        inner_names = [c["name"] for c in cfg["codecs"]]
        inner = cfg["codecs"][0]
        idx_names = [c["name"] for c in cfg["index_codecs"]]
        ok = (
            dtype is not None
            and codec["name"] == "sharding_indexed"
            and inner_names == ["bytes", "crc32c"]
            and inner.get("configuration", {}).get("endian", "little") == "little"
            and cfg.get("index_location", "end") == "end"
            and idx_names == ["bytes", "crc32c"]
            and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
            and not meta.get("storage_transformers")
        )
        shape = list(meta["shape"])
        shard = list(meta["chunk_grid"]["configuration"]["chunk_shape"])
        chunk = list(cfg["chunk_shape"])
        ok = (ok and len(shape) >= 1 and shard[1:] == shape[1:] == chunk[1:] and shard[0] >= shape[0]
              and shard[0] % chunk[0] == 0 and all(d > 0 for d in shape[1:]))
    except (KeyError, TypeError, ValueError):
        return None
    if not ok:
        return None
    return {"dtype": np.dtype(dtype), "shape": tuple(shape), "chunk_rows": chunk[0], "n_chunks": shard[0] // chunk[0],
            "fill": meta.get("fill_value")}


class FileRegion:
    """A byte range of an open file (a shard stored in a video archive): positioned reads only, so
    several readers may share the descriptor."""

    def __init__(self, fd: int, start: int, size: int, name: str):
        self.fd, self.start, self.size, self.name = fd, start, size, name

    def read_into(self, buffers: list[np.ndarray], offset: int) -> int:
        want = sum(b.nbytes for b in buffers)
        if offset + want > self.size:
            return max(0, self.size - offset)
        return _read_at(self.fd, buffers, self.start + offset)

    def read(self, n: int, offset: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        return os.pread(self.fd, n, self.start + offset) if n else b""


class BufferRegion:
    """A shard already in memory (an archive fetched from object storage)."""

    def __init__(self, data: memoryview, name: str):
        self.data, self.size, self.name = data, len(data), name

    def read_into(self, buffers: list[np.ndarray], offset: int) -> int:
        total = 0
        for b in buffers:
            view = memoryview(b).cast("B")
            got = self.data[offset + total: offset + total + len(view)]
            view[: len(got)] = got
            total += len(got)
            if len(got) < len(view):
                break
        return total

    def read(self, n: int, offset: int) -> bytes:
        return bytes(self.data[offset: offset + n])


def read_shard(src: FileRegion | BufferRegion, layout: dict) -> np.ndarray:
    """Read one single-shard array straight into its output (one copy, GIL released during file
    reads), checking the CRC32C of the shard index and of every inner chunk."""
    shape, dtype = layout["shape"], layout["dtype"]
    out = np.empty(shape, dtype=dtype)
    if out.size == 0:
        return out
    shard_path = src.name
    flat = out.reshape(shape[0], -1).view(np.uint8).reshape(shape[0], -1)
    row_bytes = flat.shape[1]
    chunk_rows, n_chunks = layout["chunk_rows"], layout["n_chunks"]
    chunk_bytes = chunk_rows * row_bytes  # every inner chunk is encoded whole, padding rows included
    index_bytes = n_chunks * 16 + _CRC_BYTES
    size = src.size
    if size < index_bytes:
        raise ChecksumError(f"{shard_path}: truncated shard ({size} bytes, its index alone needs {index_bytes})")
    raw = np.frombuffer(src.read(index_bytes, size - index_bytes), dtype=np.uint8)
    if _crc(raw[:-_CRC_BYTES]) != raw[-_CRC_BYTES:].tobytes():
        raise ChecksumError(f"{shard_path}: shard index checksum mismatch (damaged or truncated file)")
    index = raw[:-_CRC_BYTES].view("<u8").reshape(-1, 2)
    stored = np.empty(_CRC_BYTES, np.uint8)
    tail = None
    for j, (offset, nbytes) in enumerate(index):
        r0 = j * chunk_rows
        r1 = min(r0 + chunk_rows, shape[0])
        if r0 >= r1:
            break
        if offset == _MISSING:
            out[r0:r1] = layout["fill"] if layout["fill"] is not None else 0
            continue
        if nbytes != chunk_bytes + _CRC_BYTES or offset + nbytes > size - index_bytes:
            raise ChecksumError(f"{shard_path}: inner chunk {j} is {nbytes} bytes at {offset}, expected "
                                f"{chunk_bytes + _CRC_BYTES} inside the {size}-byte shard")
        if r1 - r0 == chunk_rows:
            data = flat[r0:r1].reshape(-1)
        else:  # the last chunk carries padding rows beyond the array: read it whole, keep the rows
            tail = np.empty(chunk_bytes, np.uint8)
            data = tail
        # one positioned read per chunk: its bytes straight into the output, its checksum beside
        if src.read_into([data, stored], int(offset)) != chunk_bytes + _CRC_BYTES:
            raise ChecksumError(f"{shard_path}: truncated shard (inner chunk {j})")
        if _crc(data) != stored.tobytes():
            raise ChecksumError(f"{shard_path}: checksum mismatch in inner chunk {j} (rows {r0}-{r1 - 1}): "
                                "the file is damaged")
        if data is tail:
            flat[r0:r1] = tail[: (r1 - r0) * row_bytes].reshape(r1 - r0, row_bytes)
    return out


def shard_pieces(arr: np.ndarray, chunk_rows: int) -> list[memoryview | bytes]:
    """The bytes of `arr` encoded as one shard of the plain layout, as a list of pieces to write in
    order (no copy of the data: views of `arr`, each chunk's CRC32C, padding, the index).

    The mirror of `read_shard`: inner chunks of `chunk_rows` rows in row order, each followed by its
    CRC32C (the `crc32c` codec), the last one padded with zero bytes (the fill value of every
    numeric dtype) to a whole chunk, then the shard index (offset, nbytes as little-endian uint64
    per chunk) and its CRC32C.
    """
    flat = np.ascontiguousarray(arr).reshape(arr.shape[0], -1).view(np.uint8)
    rows, row_bytes = flat.shape
    n_chunks = -(-rows // chunk_rows)
    chunk_bytes = chunk_rows * row_bytes
    pieces: list[memoryview | bytes] = []
    index = np.empty((n_chunks, 2), "<u8")
    for j in range(n_chunks):
        data = flat[j * chunk_rows: (j + 1) * chunk_rows].reshape(-1)
        view = data.view()
        view.flags.writeable = False
        crc = google_crc32c.value(view)
        pieces.append(memoryview(view))
        pad = chunk_bytes - data.nbytes
        if pad:
            zeros = bytes(pad)
            crc = google_crc32c.extend(crc, zeros)
            pieces.append(zeros)
        pieces.append(np.uint32(crc).tobytes())
        index[j] = (j * (chunk_bytes + _CRC_BYTES), chunk_bytes + _CRC_BYTES)
    raw = index.reshape(-1).view(np.uint8)
    pieces += [raw.tobytes(), _crc(raw)]
    return pieces
