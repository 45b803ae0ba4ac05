"""`dvc push` / `dvc pull` of Aff-Wild2-sized feature stores to a local S3 server: cost per video.

Why: a team shares the feature stores through a DVC remote, and DVC moves one object per file.
Each store keeps one group per video, so what a video costs a push or a pull is mostly the number of
files its groups hold, times the per-object cost of the remote. This script measures that cost.

What it does, in a fresh temporary project (git + DVC):
1. writes four feature stores with `pipeline.store.FeatureStore` and the array sets the extractors
   write (face: emb 256-d, t0, t1, valid, frame_index; audio: emb 1024-d, vad (+ `lower` with
   --audio-lower); behavior: emb, emb_mean 2560-d, text, frame_start/frame_end; reliability: ten
   per-row arrays), --videos groups each. Row counts are scaled down (--rows + 0..videos-1, distinct
   per video like real lengths, so DVC cannot deduplicate one video's metadata against another's) so
   that the in-memory S3 server holds them: the figure of interest is the per-object cost; bytes
   are printed beside it;
2. `dvc add`s each `data/features/<modality>` (as the extraction stages' outputs are);
3. starts moto's S3 server (`moto_server`, a subprocess on 127.0.0.1), pushes (`dvc push`),
   deletes the workspace stores and the DVC cache, pulls (`dvc pull`), and checks that every pulled
   store verifies (`pipeline.store.verify`) and equals what was written.

    python bench/dvc_remote_bench.py                     # 600 videos (Aff-Wild2 has 594)
    python bench/dvc_remote_bench.py --videos 50         # quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.store import FeatureStore, verify, write_current  # noqa: E402

MODALITIES = ("face", "audio", "behavior", "reliability")


def video_arrays(modality: str, rows: int, rng: np.random.Generator, audio_lower: bool) -> dict[str, np.ndarray]:
    """One video's arrays with the names, dtypes and widths the extractors write."""
    t = np.arange(rows, dtype=np.float32)
    base = {"t0": t / 30, "t1": (t + 1) / 30, "valid": rng.random(rows) > 0.1}

    def emb(dim: int) -> np.ndarray:
        return np.tanh(rng.standard_normal((rows, dim), dtype=np.float32)).astype(np.float16)

    if modality == "face":
        return {**base, "emb": emb(256), "frame_index": np.arange(rows, dtype=np.int64)}
    if modality == "audio":
        out = {**base, "emb": emb(1024), "vad": rng.random(rows, dtype=np.float32)}
        if audio_lower:
            out["lower"] = emb(1024)
        return out
    if modality == "behavior":
        segs = max(1, rows // 60)
        tb = np.arange(segs, dtype=np.float32) * 2
        return {"t0": tb, "t1": tb + 4, "valid": np.ones(segs, bool), "emb": emb(2560)[:segs],
                "emb_mean": emb(2560)[:segs], "frame_start": np.arange(segs, dtype=np.int64) * 60,
                "frame_end": np.arange(segs, dtype=np.int64) * 60 + 120,
                "text": np.array([f"segment {i}: a calm face, speaking" for i in range(segs)])}
    f32 = lambda: rng.random(rows, dtype=np.float32)  # noqa: E731
    vt = np.arange(rows * 5 // 3, dtype=np.float32) / 50
    return {**base, "face": f32(), "mouth": f32(), "mouth_raw": f32(), "mouth_open": rng.random(rows) > 0.5,
            "vad": rng.random(len(vt), dtype=np.float32), "vad_t0": vt, "vad_t1": vt + np.float32(0.02)}


def write_stores(project: Path, videos: int, rows: int, seed: int, audio_lower: bool) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    lengths = rows + rng.permutation(videos)  # distinct, as real videos' are: no two metadata files alike
    urls = {}
    for modality in MODALITIES:
        folder = project / "data" / "features" / modality
        url = str(folder / f"{modality}-bench.zarr")
        store = FeatureStore.create(url, extractor=modality, fingerprint={"bench": modality})
        for i, n in enumerate(lengths):
            store.write_video(f"video{i:04d}", video_arrays(modality, int(n), rng, audio_lower),
                              attrs={"extractor": modality}, source={"kind": "file", "size": int(n), "sha1": str(i)})
        store.consolidate()
        write_current(folder, url)
        urls[modality] = url
    return urls


def tree_stats(path: Path) -> tuple[int, int]:
    files = [Path(r) / f for r, _d, fs in os.walk(path) for f in fs]
    return len(files), sum(f.stat().st_size for f in files)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cwd: Path, *cmd: str, env: dict | None = None) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - t


def start_moto(port: int, env: dict) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=600)
    ap.add_argument("--rows", type=int, default=50, help="fewest rows per video (scaled down; see the docstring)")
    ap.add_argument("--audio-lower", action="store_true", help="audio stores also hold `lower`")
    ap.add_argument("--jobs", type=int, default=None, help="dvc push/pull --jobs (default: DVC's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work directory (default: a fresh temp dir, deleted afterwards)")
    args = ap.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dvc_remote_bench_"))
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("AWS_ENDPOINT_URL", None)
    dvc = str(Path(sys.executable).with_name("dvc"))
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []
    moto = None
    try:
        t = time.perf_counter()
        urls = write_stores(project, args.videos, args.rows, args.seed, args.audio_lower)
        t_write = time.perf_counter() - t
        files, nbytes = tree_stats(project / "data" / "features")
        per_store = {m: tree_stats(Path(u))[0] for m, u in urls.items()}
        print(f"{args.videos} videos, {args.rows}..{args.rows + args.videos - 1} rows each; stores written in {t_write:.1f} s; "
              f"{files} files ({files / args.videos:.1f} per video), {nbytes / 1e6:.0f} MB")
        print("files per store: " + ", ".join(f"{m} {n} ({n / args.videos:.1f}/video)" for m, n in per_store.items()))

        run(project, "git", "init", "-q")
        run(project, dvc, "init", "-q")
        run(project, dvc, "config", "core.analytics", "false")
        t_add = run(project, dvc, "add", "-q", *[f"data/features/{m}" for m in MODALITIES], env=env)

        moto = start_moto(port, env)
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="bench")
        run(project, dvc, "remote", "add", "-d", "s3", "s3://bench/dvc")
        run(project, dvc, "remote", "modify", "s3", "endpointurl", f"http://127.0.0.1:{port}")
        t_push = run(project, dvc, "push", "-q", *jobs, env=env)

        saved = {m: FeatureStore.open(u).read_many(FeatureStore.open(u).video_ids()[:3]) for m, u in urls.items()}
        for m in MODALITIES:
            shutil.rmtree(project / "data" / "features" / m)  # the .dvc files beside them stay
        shutil.rmtree(project / ".dvc" / "cache")
        t_pull = run(project, dvc, "pull", "-q", *jobs, env=env)
        for m, u in urls.items():
            problems = verify(u)
            if problems:
                raise SystemExit(f"{u}: pulled store does not verify: {problems[:3]}")
            got = FeatureStore.open(u).read_many(list(saved[m]))
            for vid, arrays in saved[m].items():
                for name, a in arrays.items():
                    np.testing.assert_array_equal(got[vid][name], a)

        objects = files + 4  # + one .dir listing per tracked folder
        print(f"\n{'step':<28} {'s':>7} {'ms/video':>9} {'objects/s':>10}")
        for step, secs in (("dvc add (hash, cache)", t_add), ("dvc push (to moto S3)", t_push),
                           ("dvc pull (from moto S3)", t_pull)):
            print(f"{step:<28} {secs:7.1f} {1000 * secs / args.videos:9.1f} {objects / secs:10.0f}")
        print(f"pulled stores verify and equal the written ones; {objects} objects, {nbytes / 1e6:.0f} MB")
    finally:
        if moto is not None:
            moto.terminate()
            try:
                moto.wait(10)
            except subprocess.TimeoutExpired:
                moto.kill()
                moto.wait()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
