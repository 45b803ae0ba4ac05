"""A direct reader for the plain single-shard numeric arrays `pipeline.store` writes.

Why it exists: zarr-python spends ~1-2 ms opening each array (metadata parsing, codec pipeline
objects) and copies every chunk twice; with ~600 videos x 4 arrays that overhead dominates a
whole-split read. Measured with `bench/store_bench.py` (Aff-Wild2-sized face cache, 1.5 GB; table in
`bench/RESULTS.md`): `FeatureStore.read_many` through this reader ran at 0.45-1.53x the speed of
`np.load` on one `.npy` per video (0.64x on a typical loaded run), zarr-python's own reader
(`read_many(fast=False)`) at 0.05-0.11x. Training wants a whole split in RAM fast, so the store
keeps this reader for local files.

When it is used: only for local arrays whose metadata is exactly the layout the store writes
(`sharding_indexed` over `bytes`, little-endian, shard index at the end, one shard holding the whole
array); `shard_layout` returns None for anything else (strings, foreign codecs, several shards) and
the caller falls back to zarr-python, as it does for remote URLs. Per the Zarr v3 sharding spec,
`read_shard` reads the shard index and `readinto()`s each inner chunk straight into the output
array: one copy, GIL released during the reads.

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
        ok = ok and len(shape) >= 1 and shard[1:] == shape[1:] == chunk[1:] and shard[0] >= shape[0]
    except (KeyError, TypeError, ValueError):
        return None
    if not ok:
        return None
    return {"dtype": np.dtype(dtype), "shape": tuple(shape), "chunk_rows": chunk[0], "n_chunks": shard[0] // chunk[0],
            "fill": meta.get("fill_value")}


def read_shard(array_dir: str, layout: dict) -> np.ndarray:
    """Read one single-shard array straight into its output (one copy, GIL released during reads),
    checking the CRC32C of the shard index and of every inner chunk."""
    shape, dtype = layout["shape"], layout["dtype"]
    out = np.empty(shape, dtype=dtype)
    if out.size == 0:
        return out
    shard_path = os.path.join(array_dir, "c", *(["0"] * len(shape)))
    flat = out.reshape(shape[0], -1).view(np.uint8).reshape(shape[0], -1)
    row_bytes = flat.shape[1]
    chunk_rows, n_chunks = layout["chunk_rows"], layout["n_chunks"]
    chunk_bytes = chunk_rows * row_bytes  # every inner chunk is encoded whole, padding rows included
    index_bytes = n_chunks * 16 + _CRC_BYTES
    fd = os.open(shard_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size = os.fstat(fd).st_size
        if size < index_bytes:
            raise ChecksumError(f"{shard_path}: truncated shard ({size} bytes, its index alone needs {index_bytes})")
        raw = np.frombuffer(os.pread(fd, index_bytes, size - index_bytes), dtype=np.uint8)
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
            if _read_at(fd, [data, stored], int(offset)) != chunk_bytes + _CRC_BYTES:
                raise ChecksumError(f"{shard_path}: truncated shard (inner chunk {j})")
            if _crc(data) != stored.tobytes():
                raise ChecksumError(f"{shard_path}: checksum mismatch in inner chunk {j} (rows {r0}-{r1 - 1}): "
                                    "the file is damaged")
            if data is tail:
                flat[r0:r1] = tail[: (r1 - r0) * row_bytes].reshape(r1 - r0, row_bytes)
    finally:
        os.close(fd)
    return out
