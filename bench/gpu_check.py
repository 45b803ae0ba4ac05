"""The real-size check for the day a GPU is available: one run, rows for bench/RESULTS.md in one file.

On the real-resolution media set (`bench/media_set.py`) it
1. builds the paper profile's three encoders at their published sizes with random weights, on the
   device (GRADA EfficientNet-B1, WavLM-Large, Qwen3-VL-4B with the real tokenizer ids and processor
   settings; `bench/real_size.py`'s builders);
2. runs each through the unchanged extractor and engine (`run_extraction`: decode threads, the paper
   profile's batch sizes, bf16, Zarr writes) and through a naive loop measured in the same run (one
   frame / one 4 s audio chunk / one segment per forward, fp32, decode and model in sequence,
   nothing written), and reports both throughputs and their ratio, peak GPU memory and the largest
   engine-vs-naive embedding difference (bf16 against fp32);
3. trains the face, audio and behaviour heads for a few steps on the stores it just wrote, at the
   real feature widths (256 / 1024 / 2560), with `bench/train_bench.py`'s timing (in-RAM batches
   against re-reading each sample's video group from the store);
4. writes `gpu_check.md` (a machine line and one markdown table) under `--out`.

    bash bench/gpu_check.sh                                     # the GPU machine (see that script)
    python bench/gpu_check.py --tiny --device cpu --out DIR     # dry run: tiny widths, small clips

`--tiny` keeps every step and code path but uses the demo's tiny WavLM and Qwen3-VL widths (with
the real vocabulary and special-token ids), 8 faces at 64 px, a small pixel budget, 1-layer heads
and small 2.5 s clips: the CPU dry run in tests/test_gpu_check.py, which also passes
`--simulate-gpu-machine` (import only what the GPU machine has plus the wheels).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if "--simulate-gpu-machine" in sys.argv:  # before anything else is imported (see bench/gpu_env.py)
    from bench import gpu_env

    gpu_env.simulate()

from bench import real_size  # noqa: E402

# The paper profile's engine batch sizes (affcache/profiles/paper.yaml; audio: the library default).
ENGINE_BATCH = {"face": 256, "audio": 8, "behavior": 16}
# --tiny: what shrinks so the CPU dry run takes seconds (every step and code path stays).
TINY_FACE_FRAMES = 8
TINY_PIXELS = {"min_pixels": 64 * 64, "max_pixels": 96 * 96}
# Clips of 34 s hold 16 segments: one full batch of the paper profile's size, so its peak GPU memory is
# measured. The naive loops run on the first video only (their throughput is what counts; time is short).
SECONDS = 34.0
TINY_HEADS = {"face": {"layers": 1, "window": 32, "hop": 16}, "behavior": {"layers": 1, "segments": 4, "stride": 2},
              "audio": {}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def _emb_diff(url: str, naive: dict[str, np.ndarray]) -> float:
    """Largest |engine - naive| over the naive rows, relative to the largest |naive| value (the engine
    runs bf16 and stores fp16, the naive loop runs fp32)."""
    from pipeline.store import FeatureStore

    got = FeatureStore.open(url).read_many(list(naive), ["emb"])
    diff = max(float(np.abs(np.asarray(got[k]["emb"], np.float32)[:len(v)] - v).max()) for k, v in naive.items())
    return diff / max(max(float(np.abs(v).max()) for v in naive.values()), 1e-12)


# ----------------------------------------------------------------------------------------- face
def check_face(args: argparse.Namespace, videos: list, work: Path, device: torch.device) -> dict:
    from bench.extract_bench import _naive_face
    from extractors.face import FaceConfig, GradaEmbedder, GradaFaceExtractor

    weights = real_size.build_grada(work / "models" / "grada_b1.pth")
    size = 64 if args.tiny else 240
    limit = TINY_FACE_FRAMES if args.tiny else None
    cfg = FaceConfig(weights=str(weights), image_size=size, batch_size=ENGINE_BATCH["face"], device=str(device),
                     bf16=True, source="crops", cpu_freeze=False, max_frames=limit)
    _reset_peak(device)
    ext = GradaFaceExtractor(cfg)
    t_load, t_run, rep, written = real_size.load_and_extract(ext, videos, work / "features")
    engine_gpu = real_size.gpu_peak_gb(device)
    del ext
    _reset_peak(device)
    model = GradaEmbedder("b1").eval().to(device)
    model.load_state_dict(torch.load(weights, map_location=device))
    naive, t_naive = {}, 0.0
    for v in videos[:1]:
        files = sorted(Path(v.crops_dir).glob("*.jpg"))[:limit or 300]
        t, emb = _timed(device, lambda files=files: _naive_face(model, files, size, device, False))
        naive[v.video_id], t_naive = emb, t_naive + t
    frames = sum(min(v.num_frames, limit or v.num_frames) for v in videos)
    naive_frames = sum(len(e) for e in naive.values())
    return {"check": "face", "model": "GRADA EfficientNet-B1", "params": real_size.n_params(model),
            "input": f"{frames} crops (112 px JPEG) at {size} px", "unit": "frames/s",
            "engine": frames / t_run, "naive": naive_frames / t_naive, "engine_gpu_gb": engine_gpu,
            "naive_gpu_gb": real_size.gpu_peak_gb(device), "max_abs_diff": _emb_diff(rep.url, naive),
            "load_s": t_load, "engine_batch": ENGINE_BATCH["face"], "store": rep.url,
            "bytes_per_input_s": written / sum(v.duration for v in videos)}


# ----------------------------------------------------------------------------------------- audio
def check_audio(args: argparse.Namespace, videos: list, work: Path, device: torch.device) -> dict:
    from extractors.audio import AudioConfig, SpeechSSLExtractor

    model_dir = real_size.build_wavlm(work / "models" / "wavlm-large", tiny=args.tiny)

    def config(batch: int, bf16: bool) -> AudioConfig:  # the paper profile's per-clip mode
        return AudioConfig(model=str(model_dir), mode="per_clip", chunk_seconds=4.0, overlap_seconds=2.0,
                           keep_lower_layers=4 if not args.tiny else 1, batch_size=batch, device=str(device),
                           bf16=bf16, cache_size=0, vad_backend="energy")

    _reset_peak(device)
    ext = SpeechSSLExtractor(config(ENGINE_BATCH["audio"], True))
    t_load, t_run, rep, written = real_size.load_and_extract(ext, videos, work / "features")
    engine_gpu = real_size.gpu_peak_gb(device)
    params = real_size.n_params(ext.model)
    del ext
    _reset_peak(device)
    naive_ext = SpeechSSLExtractor(config(1, False))
    naive_ext.load()
    naive, t_naive = {}, 0.0
    for v in videos[:1]:
        t, out = _timed(device, lambda v=v: naive_ext.encode(naive_ext._read(v)))  # decode, VAD, one chunk per forward
        naive[v.video_id], t_naive = out["emb"], t_naive + t
    seconds = sum(v.duration for v in videos)
    return {"check": "audio", "model": "WavLM-Large, per_clip 4 s / 2 s" if not args.tiny else "WavLM (tiny widths)",
            "params": params, "input": f"{seconds:.0f} s of 48 kHz AAC", "unit": "x real time",
            "engine": seconds / t_run, "naive": videos[0].duration / t_naive, "engine_gpu_gb": engine_gpu,
            "naive_gpu_gb": real_size.gpu_peak_gb(device), "max_abs_diff": _emb_diff(rep.url, naive),
            "load_s": t_load, "engine_batch": ENGINE_BATCH["audio"], "store": rep.url,
            "bytes_per_input_s": written / seconds}


# ----------------------------------------------------------------------------------------- behaviour
def _naive_behavior(ext: Any, videos: list) -> dict[str, np.ndarray]:
    """One segment per forward, frames decoded right before it (no decode thread), nothing written."""
    from extractors.behavior import frame_bounds, segment_frames, segments

    out = {}
    for v in videos:
        bounds = frame_bounds(v)
        segs = segments(float(bounds[-1]), ext.cfg)
        fr = [segment_frames(a, b, v.fps, bounds) for a, b in segs]
        fs, fe = np.array([f[0] for f in fr]), np.array([f[1] for f in fr])
        embs = [ext.encode(b.frames, b.rel_indices, v.fps)["emb"] for b in ext.iter_batches(v.media_path, fs, fe,
                                                                                             v.fps, bounds)]
        out[v.video_id] = np.concatenate(embs)
    return out


def check_behavior(args: argparse.Namespace, videos: list, work: Path, device: torch.device) -> dict:
    from extractors.behavior import BehaviorConfig, QwenVLBehaviorExtractor

    t_build = time.perf_counter()
    model_dir = real_size.build_qwen3vl(work / "models" / "qwen3vl-4b", tiny=args.tiny, device=str(device))
    t_build = time.perf_counter() - t_build
    budget = TINY_PIXELS if args.tiny else real_size.paper_pixel_budget()

    def config(batch: int, bf16: bool) -> BehaviorConfig:
        return BehaviorConfig(model=str(model_dir), batch_size=batch, device=str(device), bf16=bf16, **budget)

    _reset_peak(device)
    ext = QwenVLBehaviorExtractor(config(ENGINE_BATCH["behavior"], True))
    ext.load()
    counter = real_size.TokenCounter(ext.model)
    t_load, t_run, rep, written = real_size.load_and_extract(ext, videos, work / "features")
    engine_gpu = real_size.gpu_peak_gb(device)
    params = real_size.n_params(ext.model)
    del ext
    _reset_peak(device)
    naive_ext = QwenVLBehaviorExtractor(config(1, False))  # fp32 weights and arithmetic
    naive_ext.load()
    t_naive, naive = _timed(device, lambda: _naive_behavior(naive_ext, videos[:1]))
    segments = len(counter.segments)
    _, seq, video_tokens = counter.calls[0]
    return {"check": "behavior", "model": "Qwen3-VL-4B-Instruct" if not args.tiny else "Qwen3-VL (tiny widths)",
            "params": params, "input": f"{segments} segments of 16 frames, {video_tokens} video tokens each "
                                       f"(sequence {seq} with the prompt), batches of up to {counter.largest}",
            "unit": "segments/s",
            "engine": segments / t_run, "naive": sum(len(e) for e in naive.values()) / t_naive,
            "engine_gpu_gb": engine_gpu,
            "naive_gpu_gb": real_size.gpu_peak_gb(device), "max_abs_diff": _emb_diff(rep.url, naive),
            "load_s": t_load, "build_s": t_build, "engine_batch": f"{ENGINE_BATCH['behavior']} (one video's segments)",
            "store": rep.url, "bytes_per_input_s": written / sum(v.duration for v in videos),
            "tokens_per_segment": seq, "video_tokens_per_segment": video_tokens, "largest_batch": counter.largest}


# ----------------------------------------------------------------------------------------- heads
def check_heads(args: argparse.Namespace, videos: list, stores: dict[str, str], device: torch.device) -> list[dict]:
    """A few training steps of each published head on the stores just written (real widths)."""
    from bench.train_bench import bench_head
    from pipeline.labels import read_video_labels

    labels = {v.video_id: read_video_labels(v, "va") for v in videos}  # on each video's label grid
    plan = [{"id": v.video_id, "split": "train", "fps": v.fps, "F": len(labels[v.video_id])} for v in videos]
    hargs = argparse.Namespace(device=str(device), steps=args.steps or (1 if args.tiny else 10),
                               naive_batches=1 if args.tiny else 3)
    rows = []
    for head, url in stores.items():
        _reset_peak(device)
        r = bench_head(head, url, plan, labels, {}, hargs, TINY_HEADS[head] if args.tiny else None)
        r["gpu_gb"] = real_size.gpu_peak_gb(device)
        rows.append(r)
    return rows


# ----------------------------------------------------------------------------------------- report
def _machine(device: torch.device) -> str:
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    return (f"{gpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def _gb(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} GB"


def markdown(machine: str, args: argparse.Namespace, encoders: list[dict], heads: list[dict], total_s: float) -> str:
    lines = [f"GPU check ({'tiny dry run' if args.tiny else 'real size'}): {machine}; "
             f"`bash bench/gpu_check.sh`, {total_s:.0f} s in all.", "",
             "| check | model | params | input | engine: bf16, batched, decode threads, writes | "
             "naive: fp32, one item per forward, in sequence | engine / naive | peak GPU memory (engine / naive) | "
             "max emb diff, relative |", "|---|---|---|---|---|---|---|---|---|"]
    for r in encoders:
        lines.append(f"| {r['check']} | {r['model']} | {r['params']:,} | {r['input']} | {r['engine']:.2f} {r['unit']} "
                     f"| {r['naive']:.2f} {r['unit']} | {r['engine'] / r['naive']:.2f}x | "
                     f"{_gb(r['engine_gpu_gb'])} / {_gb(r['naive_gpu_gb'])} | {r['max_abs_diff']:.2e} |")
    for h in heads:
        what = "the published head" if not args.tiny else "the head, shrunk (tiny)"
        lines.append(f"| train {h['head']} head | {what}, on the store above | - | {h['train_samples']} windows, "
                     f"{h['measured_steps']} steps | {h['data_ms'] + h['step_ms']:.1f} ms per step (batches in RAM) | "
                     f"{h['naive_data_ms'] + h['step_ms']:.1f} ms per step (each sample re-read from the store) | "
                     f"{(h['naive_data_ms'] + h['step_ms']) / (h['data_ms'] + h['step_ms']):.2f}x | "
                     f"{_gb(h['gpu_gb'])} | - |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "out"))
    ap.add_argument("--work", type=Path, default=None, help="models, media and stores (default: <out>/../gpu_check_work"
                                                             " or a temp dir)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny widths, small short clips (the CPU dry run)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per clip (default 34; tiny: 2.5)")
    ap.add_argument("--source", default="auto", help="clip to loop for the media set ('auto': the real clip if present)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per head (default 10; tiny: 1)")
    ap.add_argument("--only", default="face,audio,behavior", help="encoders to check")
    ap.add_argument("--simulate-gpu-machine", action="store_true",
                    help="import only what the GPU machine has plus the wheels (bench/gpu_env.py)")
    ap.add_argument("--modules-out", type=Path, default=None,
                    help="write the loaded third-party modules and their distributions here (JSON)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    from bench.media_set import make_media_set
    from extractors.base import torch_device

    device = torch_device(args.device)
    if args.tiny:
        torch.set_num_threads(1)  # tiny models: one thread is fastest, and never spins on a busy CPU
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the naive baseline is plain fp32
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        seconds = args.seconds or (2.5 if args.tiny else SECONDS)
        sizes = [(160, 90), (192, 108)] if args.tiny else [(1280, 720), (1920, 1080)]
        source = None if args.source == "none" else args.source
        videos = make_media_set(work / "media", seconds, sizes, source)
        print(f"media: {[(v.video_id, v.num_frames, round(v.duration, 2)) for v in videos]}", flush=True)
        checks = {"face": check_face, "audio": check_audio, "behavior": check_behavior}
        encoders = []
        for name in args.only.split(","):
            t = time.perf_counter()
            r = checks[name](args, videos, work / name, device)
            r["check_seconds"] = round(time.perf_counter() - t, 1)
            print(json.dumps({k: v for k, v in r.items() if k != "store"}), flush=True)
            encoders.append(r)
        heads = check_heads(args, videos, {r["check"]: r["store"] for r in encoders}, device)
        for h in heads:
            print(json.dumps(h), flush=True)
    if args.modules_out:
        from bench import gpu_env

        mods = {k: sorted(v) for k, v in sorted(gpu_env.imported_distributions().items())}
        args.modules_out.write_text(json.dumps(mods, indent=1))
    text = markdown(_machine(device), args, encoders, heads, time.perf_counter() - t0)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
