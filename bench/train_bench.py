"""Head training benchmark: what an epoch costs, and what loading the cache into RAM buys.

Builds a synthetic feature cache shaped like Aff-Wild2 (real per-video lengths, fps and invalid
label spans from --labels-from when present; random otherwise) in a temp dir through the real
FeatureStore, then for each head (published dims) times a fixed number of training steps through
the real `heads.train.fit` loop and extrapolates one epoch (steps/epoch x mean step time).
It prints, per head: store->RAM load time, tensor build time, data (batch gather) vs compute time
per step, and the naive baseline: reading each sample's video group from the Zarr store at every
step (what a per-step Dataset.__getitem__ over the store would do).

    .venv/bin/python bench/train_bench.py --frames 60000 --steps 10
    .venv/bin/python bench/train_bench.py               # full scale: 2.9M frames (needs ~RAM)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heads import audio_pooling as ap  # noqa: E402
from heads.data import HeadVideo, frame_features  # noqa: E402
from heads.train import Batches, TrainConfig, fit  # noqa: E402
from heads.windows import frame_windows  # noqa: E402
from pipeline.labels import FrameLabels, count_label_lines, read_va  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402

DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared/realdata/affwild2-va-labels/VA_Estimation_Challenge"
SPLIT_DIRS = {"Train_Set": "train", "Validation_Set": "validation", "Test_Set": "test"}


# ----------------------------------------------------------------------------- synthetic cache

def plan_videos(labels_from: Path | None, frames: int, seed: int) -> list[dict]:
    """Videos (id, split, F, fps, label path) totalling about `frames` label frames."""
    rng = np.random.default_rng(seed)
    plan = []
    if labels_from is not None and labels_from.is_dir():
        fps_csv = labels_from.parent / "videos_fps.csv"
        fps = {}
        if fps_csv.exists():
            for line in fps_csv.read_text().splitlines()[1:]:
                name, _, val = line.rpartition(",")
                fps[Path(name).stem] = float(val)
        for d, split in SPLIT_DIRS.items():
            for p in sorted((labels_from / d).glob("*.txt")):
                base = p.stem.replace("_left", "").replace("_right", "")
                plan.append({"id": p.stem, "split": split, "path": p, "fps": fps.get(base, 30.0)})
        rng.shuffle(plan)
        out, total = [], 0
        for v in plan:
            if total >= frames:
                break
            v["F"] = count_label_lines(v["path"])
            out.append(v)
            total += v["F"]
        return out
    total, k = 0, 0
    while total < frames:
        f = int(np.clip(rng.lognormal(np.log(4500), 0.7), 300, 40000))
        split = rng.choice(["train", "validation", "test"], p=[0.6, 0.13, 0.27])
        plan.append({"id": f"syn{k:04d}", "split": str(split), "path": None, "fps": 30.0, "F": f})
        total, k = total + f, k + 1
    return plan


def labels_for(v: dict, rng) -> FrameLabels | None:
    if v["split"] == "test":
        return None
    if v["path"] is not None:
        lab = read_va(v["path"])
        if lab.valid.any():
            return lab
    f = v["F"]
    t = np.arange(f) / v["fps"]
    y = 0.7 * np.sin(2 * np.pi * t[:, None] / rng.uniform(10, 40, 2) + rng.uniform(0, 6, 2))
    return FrameLabels("va", y.astype(np.float32), np.ones(f, bool))


def write_stores(plan: list[dict], root: Path, dims: dict, heads: list[str], seed: int) -> dict[str, str]:
    """Random embeddings in one FeatureStore per modality (the real store code, sharded Zarr v3)."""
    rng = np.random.default_rng(seed)
    urls = {}
    for head in heads:
        url = str(root / f"{head}.zarr")
        store = FeatureStore.create(url, extractor=f"bench-{head}", fingerprint={"bench": head, "dims": dims})
        for v in plan:
            f, fps = v["F"], v["fps"]
            if head == "face":
                i = np.arange(f)
                arrays = {"emb": rng.standard_normal((f, dims["face"]), np.float32).astype(np.float16),
                          "t0": (i / fps).astype(np.float32), "t1": ((i + 1) / fps).astype(np.float32),
                          "valid": rng.random(f) > 0.05, "frame_index": i}
            elif head == "behavior":
                dur = f / fps
                starts = np.arange(0.0, max(dur - 1.0, 0.0) + 1e-9, 2.0)
                ends = np.minimum(starts + 4.0, dur)
                arrays = {"emb": rng.standard_normal((len(starts), dims["behavior"]), np.float32).astype(np.float16),
                          "t0": starts.astype(np.float32), "t1": ends.astype(np.float32),
                          "valid": np.ones(len(starts), bool),
                          "frame_start": np.round(starts * fps).astype(np.int64),
                          "frame_end": np.round(ends * fps).astype(np.int64)}
            else:
                m = int(f / fps / 0.02)
                t = np.arange(m) * 0.02
                arrays = {"emb": rng.standard_normal((m, dims["audio"]), np.float32).astype(np.float16),
                          "t0": t.astype(np.float32), "t1": (t + 0.025).astype(np.float32),
                          "valid": np.ones(m, bool), "vad": rng.random(m).astype(np.float32)}
            store.write_video(v["id"], arrays)
        store.consolidate()
        urls[head] = url
    return urls


# ----------------------------------------------------------------------------- per-head timing

def head_setup(head: str, videos: list[HeadVideo], dims: dict, device: str, overrides: dict | None = None):
    """(model, bank, loss_fn, train cfg) with the published model dims (or `overrides` of the head's
    config fields), built through the head contract."""
    from heads.registry import spec

    entry = spec(head, "head")
    cfg = entry.config_class()(**({"filter_mode": "off"} if head == "audio" else {}), **(overrides or {}))
    h = entry.build(cfg)
    inputs = h.prepare(videos)
    shapes = h.dims(inputs)
    bank, _ = h.build_bank(videos, inputs, shapes)
    return h.build_model(shapes), bank, h.loss(), cfg.train


def naive_batches(head: str, store: FeatureStore, videos: list[HeadVideo], batch: int, n: int, seed: int) -> float:
    """Seconds per batch when every sample re-reads its video group from the store (the baseline)."""
    rng = np.random.default_rng(seed)
    train = [v for v in videos if v.split == "train" and v.labels is not None]
    size, hop = {"face": (400, 150), "behavior": (16, 8), "audio": (4, 2)}[head]
    samples = []
    for v in train:
        steps = {"face": v.num_frames, "behavior": len(v.features.get("t0", [])),
                 "audio": math.ceil(v.num_frames / v.fps)}[head]
        samples += [(v, s, e) for s, e in frame_windows(steps, size, hop)]
    t = time.perf_counter()
    for _ in range(n):
        for k in rng.integers(0, len(samples), batch):
            v, s, e = samples[k]
            g = store.read_video(v.video_id, ["emb", "t0", "t1", "valid"])
            hv = HeadVideo(v.video_id, v.split, v.fps, v.num_frames, v.labels, dict(g))
            if head == "face":
                x, _ = frame_features(hv)
                _ = x[s:e]
            elif head == "behavior":
                _ = np.asarray(g["emb"], np.float32)[s:e]
            else:
                d = ap.video_bins(hv, ap.AudioPoolingConfig(), "emb")
                _ = d.x[d.bin_start[s]:d.bin_start[min(e, len(d.bin_start)) - 1] + d.bin_count[min(e, len(d.bin_start)) - 1]]
    return (time.perf_counter() - t) / n


def bench_head(head: str, url: str, plan: list[dict], labels: dict, dims: dict, args,
               overrides: dict | None = None) -> dict:
    store = FeatureStore.open(url)
    t = time.perf_counter()
    groups = store.read_many([v["id"] for v in plan])
    load_s = time.perf_counter() - t
    videos = [HeadVideo(v["id"], v["split"], v["fps"], v["F"], labels[v["id"]], dict(groups[v["id"]]))
              for v in plan]
    t = time.perf_counter()
    model, bank, loss_fn, tcfg = head_setup(head, videos, dims, args.device, overrides)
    build_s = time.perf_counter() - t
    batches = Batches(len(bank), tcfg.batch_size, bank.gather, seed=0)
    cfg = TrainConfig(epochs=1, lr=tcfg.lr, weight_decay=tcfg.weight_decay, batch_size=tcfg.batch_size,
                      device=args.device, max_steps_per_epoch=2, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        fit(model, batches, loss_fn, lambda m: {}, cfg, tmp)  # warm-up (lazy init, allocator), not timed
        cfg.max_steps_per_epoch = args.steps
        hist = fit(model, batches, loss_fn, lambda m: {}, cfg, tmp)[0]
    steps = hist["steps"]
    data_ms, step_ms = 1e3 * hist["data_seconds"] / steps, 1e3 * hist["step_seconds"] / steps
    naive_ms = 1e3 * naive_batches(head, store, videos, tcfg.batch_size, args.naive_batches, 0)
    return {"head": head, "videos": len(plan), "train_samples": len(bank), "steps_per_epoch": len(batches),
            "load_s": load_s, "build_s": build_s, "data_ms": data_ms, "step_ms": step_ms,
            "data_fraction": data_ms / (data_ms + step_ms), "naive_data_ms": naive_ms,
            "naive_over_inram": naive_ms / max(data_ms, 1e-9),
            "epoch_s_extrapolated": len(batches) * (data_ms + step_ms) / 1e3,
            "naive_epoch_s_extrapolated": len(batches) * (naive_ms + step_ms) / 1e3, "measured_steps": steps}


def main() -> None:
    ap_ = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap_.add_argument("--frames", type=int, default=2_900_000, help="total label frames of the synthetic cache")
    ap_.add_argument("--labels-from", type=Path, default=DEFAULT_LABELS)
    ap_.add_argument("--heads", default="face,behavior,audio")
    ap_.add_argument("--steps", type=int, default=20, help="timed training steps per head (epoch extrapolated)")
    ap_.add_argument("--naive-batches", type=int, default=5)
    ap_.add_argument("--face-dim", type=int, default=256)
    ap_.add_argument("--behavior-dim", type=int, default=2560, help="Qwen3-VL-4B hidden size")
    ap_.add_argument("--audio-dim", type=int, default=1024, help="WavLM-Large hidden size (full scale: ~10 GB!)")
    ap_.add_argument("--device", default="cpu", help="cpu | cuda")
    ap_.add_argument("--threads", type=int, default=1)
    ap_.add_argument("--workdir", type=Path, default=None, help="where to build the cache (default: a temp dir)")
    ap_.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap_.add_argument("--seed", type=int, default=0)
    args = ap_.parse_args()
    torch.set_num_threads(args.threads)
    heads = args.heads.split(",")
    dims = {"face": args.face_dim, "behavior": args.behavior_dim, "audio": args.audio_dim}
    labels_from = args.labels_from if args.labels_from and args.labels_from.is_dir() else None
    plan = plan_videos(labels_from, args.frames, args.seed)
    rng = np.random.default_rng(args.seed)
    labels = {v["id"]: labels_for(v, rng) for v in plan}
    total = sum(v["F"] for v in plan)
    print(f"cache: {len(plan)} videos, {total} frames ({'real Aff-Wild2 lengths' if labels_from else 'random lengths'}), "
          f"splits " + ", ".join(f"{s}={sum(v['split'] == s for v in plan)}" for s in ("train", "validation", "test")),
          f"| device {args.device}, torch threads {args.threads}, cpu count {os.cpu_count()}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t = time.perf_counter()
        urls = write_stores(plan, Path(tmp), dims, heads, args.seed)
        print(f"wrote stores in {time.perf_counter() - t:.1f} s")
        results = [bench_head(h, urls[h], plan, labels, dims, args) for h in heads]
    hdr = (f"{'head':9} {'samples':>8} {'steps/ep':>8} {'load s':>7} {'build s':>7} {'data ms':>8} {'step ms':>8} "
           f"{'data %':>6} {'naive ms':>9} {'naive/RAM':>9} {'epoch s':>8} {'naive ep s':>10}")
    print(hdr)
    for r in results:
        print(f"{r['head']:9} {r['train_samples']:8d} {r['steps_per_epoch']:8d} {r['load_s']:7.2f} {r['build_s']:7.2f} "
              f"{r['data_ms']:8.2f} {r['step_ms']:8.1f} {100 * r['data_fraction']:5.1f}% {r['naive_data_ms']:9.1f} "
              f"{r['naive_over_inram']:8.0f}x {r['epoch_s_extrapolated']:8.1f} {r['naive_epoch_s_extrapolated']:10.1f}")
    print(f"(epoch s = steps/epoch x mean of {args.steps} measured steps after 2 warm-up steps; data = in-RAM batch "
          "gather, naive = per-sample read of its video group from the Zarr store at every step)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
