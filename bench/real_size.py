"""The paper profile's encoders at their published sizes, random weights, through the unchanged extractors.

Builds each encoder from its published configuration (`extractors.published_sizes`), saves it where an
extractor loads it (a `save_pretrained` folder in bf16, or the GRADA state-dict file), runs the
extractor's normal engine (`run_extraction`) on the real-resolution media set (`bench/media_set.py`:
the real 1080p clip looped to 1280x720 and 1920x1080 when `../shared/realdata` is present) and
prints, last, one JSON line: modality, model, params, device, dtype, input size, throughput, peak RSS
(and peak GPU memory on a GPU), bytes written per input second.

    .venv/bin/python bench/real_size.py --modality audio --seconds 12
    .venv/bin/python bench/real_size.py --modality face --seconds 12
    nice -n 10 .venv/bin/python bench/real_size.py --modality behavior      # one 4 s 1280x720 segment
    .venv/bin/python bench/real_size.py --modality audio --device cuda

Behavior builds Qwen3-VL-4B (8.3 GiB of bf16 weights, written to disk) in a child process, so the
reported peak RSS is the extractor's own (the build's is reported apart); `--model-dir` keeps the
folder for a later run. The paper profile's per-frame pixel budget (min_pixels / max_pixels) is
read from `affcache/profiles/paper.yaml`.

The helpers here (encoder builders, the timed engine run) are what `bench/gpu_check.py` runs too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

PAPER_PROFILE = REPO / "affcache" / "profiles" / "paper.yaml"


# ----------------------------------------------------------------------------------------- measuring
def peak_rss_gb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 2**20  # KiB on Linux


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def gpu_peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def load_and_extract(ext: Any, videos: list, out: Path) -> tuple[float, float, Any, int]:
    """(load seconds, extraction seconds, run report, bytes written) of one engine run into `out`."""
    from extractors.base import run_extraction

    t = time.perf_counter()
    ext.load()
    t_load = time.perf_counter() - t
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    rep = run_extraction(ext, videos, str(out), progress=False)
    t_run = time.perf_counter() - t
    assert rep.ok and len(rep.done) == len(videos), rep
    return t_load, t_run, rep, tree_bytes(Path(rep.url.replace("file://", "")))


def run_figures(device: Any, t_load: float, t_run: float, written: int, seconds: float) -> dict:
    """The figures every bench reports: load and extraction seconds, peak memory (process, GPU), and
    store bytes written per second of input."""
    return {"load_seconds": round(t_load, 2), "extract_seconds": round(t_run, 2),
            "peak_rss_gb": round(peak_rss_gb(), 2), "peak_gpu_gb": gpu_peak_gb(device),
            "bytes_per_input_second": round(written / seconds)}


def paper_pixel_budget() -> dict[str, int]:
    """The paper profile's per-frame pixel bounds for the behaviour processor."""
    import yaml

    cfg = yaml.safe_load(PAPER_PROFILE.read_text())["extract"]["behavior"]["config"]
    return {"min_pixels": int(cfg["min_pixels"]), "max_pixels": int(cfg["max_pixels"])}


class TokenCounter:
    """Counts what each forward pass of a Qwen3-VL model receives: sequence length, video tokens."""

    def __init__(self, model: Any):
        self.video_id = int(model.config.video_token_id)
        self.calls: list[tuple[int, int, int]] = []  # (batch, sequence length, video tokens per row)
        getattr(model, "model", model).register_forward_pre_hook(self._hook, with_kwargs=True)  # the prefill's

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None:
            self.calls.append((int(ids.shape[0]), int(ids.shape[1]), int((ids[0] == self.video_id).sum())))

    @property
    def segments(self) -> list[int]:
        """One entry per segment seen (each forward's rows)."""
        return [i for b, _, _ in self.calls for i in range(b)]

    @property
    def largest(self) -> int:
        return max((b for b, _, _ in self.calls), default=0)


# ----------------------------------------------------------------------------------------- encoders
def build_grada(path: Path, seed: int = 0) -> Path:
    """Random GRADA EfficientNet-B1 state dict (the published architecture; 6.84e6 parameters)."""
    from extractors.face import GradaEmbedder

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(GradaEmbedder("b1").state_dict(), path)
    return path


def build_wavlm(out_dir: Path, tiny: bool = False) -> Path:
    from extractors import demo_models
    from extractors.published_sizes import write_wavlm_large

    return write_wavlm_large(out_dir, config=demo_models.tiny_wavlm_config() if tiny else None)


def build_qwen3vl(out_dir: Path, tiny: bool = False, device: str = "cpu") -> Path:
    """Qwen3-VL-4B (or the demo's tiny widths) with the real vocabulary size, special-token ids and
    processor settings, saved in bf16."""
    from extractors import demo_models
    from extractors.behavior import DEFAULT_PROMPT
    from extractors.published_sizes import qwen3vl_processor, write_qwen3vl

    processor = qwen3vl_processor(DEFAULT_PROMPT)
    config = demo_models.tiny_qwen3vl_config(processor.tokenizer) if tiny else None
    return write_qwen3vl(out_dir, config=config, processor=processor, device=device)


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def media(args: argparse.Namespace, root: Path, seconds: float, sizes: list[tuple[int, int]],
          crops: bool = True) -> list:
    from bench.media_set import make_media_set

    return make_media_set(Path(args.media) if args.media else root, seconds, sizes, crops=crops)


# ----------------------------------------------------------------------------------------- benches
def bench_audio(args: argparse.Namespace) -> dict:
    """WavLM-Large in the paper profile's per-clip mode (4 s clips, 2 s overlap, 4 lower layers kept)."""
    from extractors.audio import AudioConfig, SpeechSSLExtractor
    from extractors.base import torch_device
    from pipeline.store import FeatureStore

    device = torch_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_wavlm(tmp / "wavlm-large")
        videos = media(args, tmp / "media", args.seconds, [(1280, 720), (1920, 1080)], crops=False)
        cfg = AudioConfig(model=str(model_dir), mode="per_clip", chunk_seconds=4.0, overlap_seconds=2.0,
                          keep_lower_layers=4, batch_size=args.batch_size, device=args.device, bf16=args.bf16,
                          cache_size=0)
        ext = SpeechSSLExtractor(cfg)
        t_load, t_run, rep, written = load_and_extract(ext, videos, tmp / "features")
        got = FeatureStore.open(rep.url).read_many([v.video_id for v in videos], ["emb", "lower"])
        shape = {k: list(np.asarray(got[videos[0].video_id][k]).shape) for k in ("emb", "lower")}
    total = sum(v.duration for v in videos)
    return {"modality": "audio", "model": "WavLM-Large (random weights, published config)", "params": n_params(ext.model),
            "device": str(device),
            "dtype": "bf16" if (args.bf16 and device.type == "cuda") else str(next(ext.model.parameters()).dtype),
            "audio_seconds": round(total, 2), "videos": len(videos), "batch_size": args.batch_size,
            "x_real_time": round(total / t_run, 3), "first_video_shapes": shape,
            **run_figures(device, t_load, t_run, written, total)}


def bench_face(args: argparse.Namespace) -> dict:
    """GRADA EfficientNet-B1 at 240 px on the media set's 112 px JPEG crops (Aff-Wild2's layout)."""
    from extractors.base import torch_device
    from extractors.face import FaceConfig, GradaFaceExtractor

    device = torch_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = build_grada(tmp / "grada_b1.pth")
        videos = media(args, tmp / "media", args.seconds, [(1280, 720), (1920, 1080)])
        ext = GradaFaceExtractor(FaceConfig(weights=str(weights), image_size=240, batch_size=args.batch_size,
                                            device=args.device, bf16=args.bf16, source="crops"))
        t_load, t_run, rep, written = load_and_extract(ext, videos, tmp / "features")
    frames = sum(v.num_frames for v in videos)
    seconds = sum(v.duration for v in videos)
    return {"modality": "face", "model": "GRADA EfficientNet-B1 (random weights)", "params": n_params(ext.model),
            "device": str(device), "dtype": "bf16" if (args.bf16 and device.type == "cuda") else "float32",
            "frames": frames, "image_size": 240, "frames_per_s": round(frames / t_run, 1),
            **run_figures(device, t_load, t_run, written, seconds)}


def bench_behavior(args: argparse.Namespace) -> dict:
    """Qwen3-VL-4B on ONE 4 s segment of a 1280x720 clip at the paper profile's pixel budget."""
    from extractors.base import torch_device
    from extractors.behavior import BehaviorConfig, QwenVLBehaviorExtractor, segments

    device = torch_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = Path(args.model_dir) if args.model_dir else tmp / "qwen3vl-4b"
        build_s, build_rss = 0.0, None
        if not (model_dir / "config.json").is_file():
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--build-qwen3vl", str(model_dir)], check=True)
            build_s, build_rss = time.perf_counter() - t, round(peak_rss_gb(children=True), 2)
        videos = media(args, tmp / "media", 4.0, [(1280, 720)], crops=False)
        segs = segments(videos[0].duration)
        budget = paper_pixel_budget()
        ext = QwenVLBehaviorExtractor(BehaviorConfig(model=str(model_dir), batch_size=1, device=args.device,
                                                     bf16=args.bf16, cpu_compute=args.cpu_compute, **budget))
        t = time.perf_counter()
        ext.load()
        t_load = time.perf_counter() - t
        counter = TokenCounter(ext.model)
        _, t_run, rep, written = load_and_extract(ext, videos, tmp / "features")
        weights_gb = sum(p.numel() * p.element_size() for p in ext.model.parameters()) / 2**30
    _, seq, video_tokens = counter.calls[0]
    return {"modality": "behavior", "model": "Qwen3-VL-4B-Instruct (random weights, published config, tied)",
            "params": n_params(ext.model), "device": str(device),
            "weights_dtype": str(next(ext.model.parameters()).dtype), "compute_dtype": str(ext.compute_dtype),
            "cpu_compute": args.cpu_compute, "weights_gib": round(weights_gb, 2),
            "clip": f"{videos[0].video_id}, {videos[0].duration:g} s", "segments": len(segs),
            "frames_per_segment": 16, **budget, "tokens_per_segment": seq, "video_tokens_per_segment": video_tokens,
            "text_tokens_per_segment": seq - video_tokens, "build_seconds": round(build_s, 1),
            "build_peak_rss_gb": build_rss, "seconds_per_segment": round(t_run / max(1, len(segs)), 2),
            **run_figures(device, t_load, t_run, written, videos[0].duration), "threads": torch.get_num_threads()}


BENCHES = {"audio": bench_audio, "face": bench_face, "behavior": bench_behavior}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", choices=sorted(BENCHES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast on CUDA (face, audio); bf16 weights on every device (behaviour)")
    ap.add_argument("--cpu-compute", default="auto", choices=["auto", "bf16", "fp32"],
                    help="behaviour on a CPU: arithmetic over the bf16 weights")
    ap.add_argument("--seconds", type=float, default=12.0, help="face, audio: seconds per clip (two clips)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--media", default=None, help="a media-set folder to use (and fill); default: a temp dir")
    ap.add_argument("--model-dir", default=None, help="behaviour: a Qwen3-VL-4B folder to reuse (built there if empty)")
    ap.add_argument("--build-qwen3vl", default=None, help=argparse.SUPPRESS)  # the child process's job
    args = ap.parse_args()
    if args.build_qwen3vl:
        build_qwen3vl(Path(args.build_qwen3vl))
        return
    if not args.modality:
        ap.error("--modality is required")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(BENCHES[args.modality](args)))


if __name__ == "__main__":
    main()
