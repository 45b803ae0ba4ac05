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
"""

from __future__ import annotations

import os

import numpy as np


_SIMPLE_DTYPES = {
    "bool": "|b1", "int8": "|i1", "uint8": "|u1", "int16": "<i2", "uint16": "<u2", "int32": "<i4",
    "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "float16": "<f2", "float32": "<f4", "float64": "<f8",
}
_MISSING = np.uint64(2**64 - 1)


def shard_layout(meta: dict) -> dict | None:
    """The plain layout `_create_array` writes for numeric arrays, or None if this array differs."""
    try:
        dtype = _SIMPLE_DTYPES.get(meta["data_type"]) if isinstance(meta["data_type"], str) else None
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        (inner,) = cfg["codecs"]
        idx_names = [c["name"] for c in cfg["index_codecs"]]
        ok = (
            dtype is not None
            and codec["name"] == "sharding_indexed"
            and inner["name"] == "bytes"
            and inner.get("configuration", {}).get("endian", "little") == "little"
            and cfg.get("index_location", "end") == "end"
            and idx_names in (["bytes"], ["bytes", "crc32c"])
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
            "crc": len(idx_names) == 2, "fill": meta.get("fill_value")}


def read_shard(array_dir: str, layout: dict) -> np.ndarray:
    """Read one single-shard array straight into its output (one copy, GIL released during reads)."""
    shape, dtype = layout["shape"], layout["dtype"]
    out = np.empty(shape, dtype=dtype)
    if out.size == 0:
        return out
    shard_path = os.path.join(array_dir, "c", *(["0"] * len(shape)))
    flat = out.reshape(shape[0], -1).view(np.uint8).reshape(shape[0], -1)
    row_bytes = flat.shape[1]
    index_bytes = layout["n_chunks"] * 16 + (4 if layout["crc"] else 0)
    with open(shard_path, "rb") as f:
        f.seek(-index_bytes, os.SEEK_END)
        index = np.frombuffer(f.read(index_bytes)[: layout["n_chunks"] * 16], dtype="<u8").reshape(-1, 2)
        for j, (offset, nbytes) in enumerate(index):
            r0 = j * layout["chunk_rows"]
            r1 = min(r0 + layout["chunk_rows"], shape[0])
            if r0 >= r1:
                break
            if offset == _MISSING:
                out[r0:r1] = layout["fill"] if layout["fill"] is not None else 0
                continue
            if nbytes < (r1 - r0) * row_bytes:
                raise OSError(f"{shard_path}: inner chunk {j} is {nbytes} bytes, expected >= {(r1 - r0) * row_bytes}")
            f.seek(int(offset))
            view = memoryview(flat[r0:r1]).cast("B")
            if f.readinto(view) != len(view):
                raise OSError(f"{shard_path}: truncated shard (inner chunk {j})")
    return out
