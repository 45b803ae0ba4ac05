"""The paper profile's encoders at their published sizes, random weights, through the unchanged extractors.

Builds each encoder from its published configuration (`extractors.published_sizes`), saves it where an
extractor loads it (a `save_pretrained` folder in bf16, or the GRADA state-dict file), runs the
extractor's normal engine (`run_extraction`) on generated clips and prints, last, one JSON line:
modality, model, params, device, dtype, input size, throughput, peak RSS (and peak GPU memory on a
GPU), bytes written per input second.

    .venv/bin/python bench/real_size.py --modality audio --seconds 12
    .venv/bin/python bench/real_size.py --modality face --frames 480
    .venv/bin/python bench/real_size.py --modality audio --device cuda

The behaviour encoder (Qwen3-VL-4B) is counted here (`--modality behavior` builds it on the meta
device and checks its size) but not yet run: on CPU its extractor loads fp32 weights (~18 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _gpu_peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _load_and_extract(ext, videos: list, out: Path) -> tuple[float, float, object, int]:
    """(load seconds, extraction seconds, run report, bytes written) of one engine run into `out`."""
    from extractors.base import run_extraction

    t = time.perf_counter()
    ext.load()
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    rep = run_extraction(ext, videos, str(out), progress=False)
    t_run = time.perf_counter() - t
    assert rep.ok and len(rep.done) == len(videos), rep
    return t_load, t_run, rep, _tree_bytes(Path(rep.url.replace("file://", "")))


def bench_audio(args: argparse.Namespace) -> dict:
    """WavLM-Large in the paper profile's per-clip mode (4 s clips, 2 s overlap, 4 lower layers kept)."""
    from extractors.audio import AudioConfig, SpeechSSLExtractor
    from extractors.base import torch_device
    from extractors.published_sizes import wavlm_large_config, write_wavlm_large
    from tiny_models import make_video, video_record

    device = torch_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = write_wavlm_large(tmp / "wavlm-large")
        videos = [video_record(make_video(tmp / f"clip{i}.mp4", seconds=args.seconds, fps=10, size=(160, 120),
                                          audio=True, seed=i), f"clip{i}", args.seconds, 10, has_audio=True)
                  for i in range(args.videos)]
        cfg = AudioConfig(model=str(model_dir), mode="per_clip", chunk_seconds=4.0, overlap_seconds=2.0,
                          keep_lower_layers=4, batch_size=args.batch_size, device=args.device, bf16=args.bf16,
                          cache_size=0)
        ext = SpeechSSLExtractor(cfg)
        t_load, t_run, rep, written = _load_and_extract(ext, videos, tmp / "features")
        from pipeline.store import FeatureStore

        got = FeatureStore.open(rep.url).read_many([v.video_id for v in videos], ["emb", "lower"])
        shape = {k: list(np.asarray(got[videos[0].video_id][k]).shape) for k in ("emb", "lower")}
    total = args.videos * args.seconds
    n_params = sum(p.numel() for p in ext.model.parameters())
    return {"modality": "audio", "model": "WavLM-Large (random weights, published config)", "params": n_params,
            "config_layers": wavlm_large_config().num_hidden_layers, "device": str(device),
            "dtype": "bf16" if (args.bf16 and device.type == "cuda") else str(next(ext.model.parameters()).dtype),
            "audio_seconds": total, "videos": args.videos, "batch_size": args.batch_size,
            "load_seconds": round(t_load, 2), "extract_seconds": round(t_run, 2),
            "x_real_time": round(total / t_run, 3), "first_video_shapes": shape,
            "peak_rss_gb": round(_peak_rss_gb(), 2), "peak_gpu_gb": _gpu_peak_gb(device),
            "bytes_per_input_second": round(written / total)}


def bench_face(args: argparse.Namespace) -> dict:
    """GRADA EfficientNet-B1 at 240 px on Aff-Wild2-like 112 px JPEG crops."""
    from bench.extract_bench import _make_crops
    from extractors.base import torch_device
    from extractors.face import FaceConfig, GradaEmbedder, GradaFaceExtractor
    from pipeline.records import Video

    device = torch_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        weights = tmp / "grada_b1.pth"
        model = GradaEmbedder("b1")
        torch.save(model.state_dict(), weights)
        dirs = _make_crops(tmp / "crops", args.frames, args.videos)
        videos = [Video(d.name, str(d / "none.mp4"), 30.0, len(list(d.iterdir())), 1.0, False, "train",
                        crops_dir=str(d)) for d in dirs]
        ext = GradaFaceExtractor(FaceConfig(weights=str(weights), image_size=240, batch_size=args.batch_size,
                                            device=args.device, bf16=args.bf16))
        t_load, t_run, rep, written = _load_and_extract(ext, videos, tmp / "features")
    seconds = args.frames / 30.0
    return {"modality": "face", "model": "GRADA EfficientNet-B1 (random weights)",
            "params": sum(p.numel() for p in model.parameters()), "device": str(device),
            "dtype": "bf16" if (args.bf16 and device.type == "cuda") else "float32", "frames": args.frames,
            "image_size": 240, "load_seconds": round(t_load, 2), "extract_seconds": round(t_run, 2),
            "frames_per_s": round(args.frames / t_run, 1), "peak_rss_gb": round(_peak_rss_gb(), 2),
            "peak_gpu_gb": _gpu_peak_gb(device), "bytes_per_input_second": round(written / seconds)}


def bench_behavior(args: argparse.Namespace) -> dict:
    """Qwen3-VL-4B's size only (meta device); running it is the next step (see the module docstring)."""
    from transformers import Qwen3VLForConditionalGeneration

    from extractors.published_sizes import count_parameters, qwen3vl_4b_config

    n = count_parameters(qwen3vl_4b_config(), Qwen3VLForConditionalGeneration)
    return {"modality": "behavior", "model": "Qwen3-VL-4B-Instruct (published config, meta device)", "params": n,
            "device": "meta", "dtype": "bf16", "bf16_weight_gb": round(2 * n / 2**30, 2), "ran": False}


BENCHES = {"audio": bench_audio, "face": bench_face, "behavior": bench_behavior}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", choices=sorted(BENCHES), required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast on CUDA")
    ap.add_argument("--seconds", type=float, default=12.0, help="audio: seconds per clip")
    ap.add_argument("--videos", type=int, default=1)
    ap.add_argument("--frames", type=int, default=480, help="face: crops in all")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    print(json.dumps(BENCHES[args.modality](args)))


if __name__ == "__main__":
    main()
