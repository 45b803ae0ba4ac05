"""Feature-store benchmark: write and whole-split read of a synthetic face-feature store.

Why: training loads a whole split into RAM (Aff-Wild2 face features: ~3M frames x 256 fp16, ~1.5 GB,
~600 videos). The issue's acceptance target is that `FeatureStore.read_many` reaches at least 50 % of
the speed of the naive alternative, `np.load` of one `.npy` file per array per video.

Per video it writes t0, t1 (float32), valid (bool) and emb [N, D] (float16, tanh of Gaussian noise:
incompressible like real embeddings) with realistic, varied lengths summing to --frames, both as a
Zarr store (pipeline.store) and as .npy files. Reads are timed twice and the *second (warm page cache)*
figures are reported: dropping the page cache needs root, so cold-disk reads are not measured.
The `read_many` row goes through `pipeline.shard_reader` (the store's direct reader for local
files); `read_many(fast=False)` is zarr-python's own reader, kept as the comparison. Both check
the CRC32C of every chunk; `verify` reads every chunk. The write row includes every checksum the
store computes (CRC32C per chunk, Zip's CRC-32 per entry) and the NaN/inf check of embeddings.

    .venv/bin/python bench/store_bench.py                    # full size: ~1.5 GB each, check `df -h /tmp`
    .venv/bin/python bench/store_bench.py --frames 200000    # quick mode (~100 MB, seconds)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.records import Video  # noqa: E402
from pipeline.store import FeatureStore, verify  # noqa: E402

ARRAYS = ("t0", "t1", "valid", "emb")


def video_lengths(frames: int, videos: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths like Aff-Wild2's (a few hundred to tens of thousands of frames), summing to `frames`."""
    weights = rng.lognormal(0.0, 0.7, videos)
    lengths = np.maximum(1, np.floor(weights / weights.sum() * frames)).astype(int)
    lengths[0] += frames - lengths.sum()
    return lengths


def make_video(n: int, dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = np.arange(n, dtype=np.float32) / 30.0
    emb = np.tanh(rng.standard_normal((n, dim), dtype=np.float32)).astype(np.float16)
    return {"t0": t, "t1": t + np.float32(1 / 30), "valid": rng.random(n) > 0.1, "emb": emb}


def dir_stats(path: Path) -> tuple[int, int]:
    files = [Path(r) / f for r, _d, fs in os.walk(path) for f in fs]
    return sum(f.stat().st_size for f in files), len(files)


def write_both(store: FeatureStore, npy_dir: Path, lengths: np.ndarray, dim: int, seed: int) -> tuple[float, float, int]:
    """Write every video to the store and as .npy files; returns (store s, npy s, payload bytes)."""
    rng = np.random.default_rng(seed)
    t_store = t_npy = 0.0
    nbytes = 0
    for i, n in enumerate(lengths):
        vid = f"video{i:04d}"
        arrays = make_video(int(n), dim, rng)
        nbytes += sum(a.nbytes for a in arrays.values())
        t = time.perf_counter()
        store.write_video(vid, arrays, source={"synthetic": i})
        t_store += time.perf_counter() - t
        t = time.perf_counter()
        (npy_dir / vid).mkdir()
        for name, a in arrays.items():
            np.save(npy_dir / vid / f"{name}.npy", a)
        t_npy += time.perf_counter() - t
    return t_store, t_npy, nbytes


def load_npy(npy_dir: Path, ids: list[str]) -> dict:
    return {v: {n: np.load(npy_dir / v / f"{n}.npy") for n in ARRAYS} for v in ids}


def load_npy_threads(npy_dir: Path, ids: list[str]) -> dict:
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(ids, pool.map(lambda v: {n: np.load(npy_dir / v / f"{n}.npy") for n in ARRAYS}, ids)))


def time_todo(store: FeatureStore, ids: list[str], work: Path) -> tuple[float, int]:
    """Seconds for todo() over every video (group attrs scan + a tiny source file fingerprint each)."""
    source = work / "source.bin"
    source.write_bytes(b"x" * 1000)
    videos = [Video(v, str(source), 30.0, 1, 1 / 30, False, "train") for v in ids]
    t = time.perf_counter()
    n = len(store.todo(videos))
    return time.perf_counter() - t, n


def crc_seconds(videos: dict) -> float:
    """What the checksums alone cost a whole-split read: CRC32C over every array's bytes in RAM."""
    from pipeline.shard_reader import _crc

    flat = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for v in videos.values() for a in v.values()]
    t = time.perf_counter()
    for a in flat:
        _crc(a)
    return time.perf_counter() - t


def timed_twice(fn) -> float:
    """Seconds of the second (warm) run; the first run warms the page cache."""
    fn()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--videos", type=int, default=600)
    ap.add_argument("--dir", default=None, help="work directory (default: a fresh temp dir, deleted afterwards)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-zarr-path", action="store_true", help="skip the slow zarr-python read path row")
    args = ap.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="store_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    store_path, npy_dir = work / "bench.zarr", work / "npy"
    shutil.rmtree(store_path, ignore_errors=True)
    shutil.rmtree(npy_dir, ignore_errors=True)
    npy_dir.mkdir()
    try:
        lengths = video_lengths(args.frames, args.videos, np.random.default_rng(args.seed))
        print(f"{args.videos} videos, {args.frames} frames x {args.dim} fp16, lengths {lengths.min()}..{lengths.max()} "
              f"(median {int(np.median(lengths))}); work dir {work}")
        store = FeatureStore.create(str(store_path), extractor="bench", fingerprint={"bench": 1})
        t_store, t_npy, nbytes = write_both(store, npy_dir, lengths, args.dim, args.seed)
        t = time.perf_counter()
        store.consolidate()
        t_cons = time.perf_counter() - t
        ids = store.video_ids()
        mb = nbytes / 1e6

        rows = [("write", "np.save per array", t_npy, None), ("write", "FeatureStore.write_video", t_store, t_npy)]
        t_npy_read = timed_twice(lambda: load_npy(npy_dir, ids))
        rows.append(("read (warm)", "np.load per array, sequential [baseline]", t_npy_read, None))
        rows.append(("read (warm)", "np.load per array, 4 threads", timed_twice(lambda: load_npy_threads(npy_dir, ids)), t_npy_read))
        rows.append(("read (warm)", "FeatureStore.read_many (fast path)", timed_twice(lambda: store.read_many(ids)), t_npy_read))
        if not args.skip_zarr_path:
            rows.append(("read (warm)", "FeatureStore.read_many(fast=False) zarr-python",
                         timed_twice(lambda: store.read_many(ids, fast=False)), t_npy_read))
        rows.append(("read (warm)", "  of which: CRC32C of every chunk, in RAM", crc_seconds(store.read_many(ids)), t_npy_read))
        if not args.skip_zarr_path:
            t = time.perf_counter()
            problems = verify(str(store_path))
            rows.append(("verify", f"store verify, every chunk ({len(problems)} problems)", time.perf_counter() - t, t_npy_read))
        t_todo, n_todo = time_todo(store, ids, work)

        print(f"\npayload {mb:.0f} MB; consolidate {t_cons:.2f} s; todo() over {len(ids)} videos {t_todo:.2f} s "
              f"({n_todo} listed: sources differ on purpose)")
        print(f"{'op':<12} {'method':<48} {'s':>7} {'MB/s':>8} {'vs baseline':>12}")
        for op, method, secs, base in rows:
            ratio = f"{base / secs:.2f}" if base else "1.00"
            print(f"{op:<12} {method:<48} {secs:7.2f} {mb / secs:8.0f} {ratio:>12}")
        for label, path in (("zarr store", store_path), ("npy files", npy_dir)):
            size, files = dir_stats(path)
            print(f"{label:<12} {size / 1e6:9.0f} MB on disk, {files} files")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
