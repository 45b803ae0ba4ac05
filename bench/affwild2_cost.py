"""What extracting all of Aff-Wild2 costs per modality: from measured CPU figures, and for GPUs from
FLOPs (counted from the published configurations) and stated throughput assumptions.

    .venv/bin/python bench/affwild2_cost.py --face-fps 73.9 --audio-xrt 1.38 --behavior-s 600

The CPU figures are `bench/real_size.py`'s (this project's 2-core machine). Every assumption is a
named constant or an argument and is printed with the table:

- Aff-Wild2: 594 annotation ids, ~2.8M annotated frames at ~30 fps (so ~26 h of media, counting a
  `_left`/`_right` pair's shared file twice: an upper bound), ~47k behaviour segments (4 s / 2 s hop).
- GPUs: H100 SXM and H200 both 989 TFLOPS dense bf16; HBM 3.35 and 4.8 TB/s. Achieved fraction of
  peak (MFU): `--mfu-behavior` for Qwen3-VL's batched prefill (large GEMMs), `--mfu-audio` for
  WavLM's 4 s chunks, `--mfu-face` for EfficientNet-B1 (depthwise convolutions run far below peak).
- 8 GPUs via the Ray engine: one actor per GPU, videos spread over the actors: linear in the GPU count
  (the longest video, ~26 min = ~780 segments, is far below one actor's share).
- Decoding runs on the CPU cores beside each GPU (`--cores`, 16 on the lent machine) and overlaps the
  model (the engine's decode threads); it is reported apart, from single-core CPU times measured here:
  a 112 px crop decoded and letterboxed to 240 px (`--crop-ms`), a 1280x720 H.264 frame decoded to
  RGB (`--frame-ms`; 1080p costs ~3x), AAC decoded and resampled to 16 kHz (`--audio-ms`, per second).
  Behaviour decodes every frame about once (batches of 16 segments overlap by one hop).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FRAMES = 2.8e6
FPS = 30.0
SEGMENTS = 47e3
GPUS = {"H100 SXM": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}
BYTES_BF16 = 2


def qwen_segment(config, tokens: int = 4776, frame_pairs: int = 8, grid: tuple[int, int] = (36, 64)) -> dict:
    """FLOPs of one prefill of one segment (16 frames at 576 x 1024 px: 8 frame pairs of 36 x 64
    patches, 4608 video tokens, 4776 tokens with the prompt) and its activation memory in bf16."""
    t, v = config.text_config, config.vision_config
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    text_params = t.num_hidden_layers * (2 * t.hidden_size * q + 2 * t.hidden_size * kv
                                         + 3 * t.hidden_size * t.intermediate_size)
    text_attn = t.num_hidden_layers * 4 * tokens * tokens * q / 2  # QK^T and AV, causal half
    patches_per_pair = grid[0] * grid[1]
    patches = patches_per_pair * frame_pairs
    vis_params = v.depth * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size)
    vis_attn = v.depth * 4 * patches_per_pair ** 2 * v.hidden_size * frame_pairs  # full attention per pair
    merged = patches // v.spatial_merge_size ** 2
    merge_in = v.hidden_size * v.spatial_merge_size ** 2
    mergers = (1 + len(v.deepstack_visual_indexes)) * (merge_in * merge_in + merge_in * v.out_hidden_size)
    patch_embed = v.in_channels * v.temporal_patch_size * v.patch_size ** 2 * v.hidden_size
    flops = (2 * text_params * tokens + text_attn + 2 * vis_params * patches + vis_attn
             + 2 * mergers * merged + 2 * patch_embed * patches)
    # largest live activations (bf16): the text phase holds the residual stream, q/k/v/o, the MLP's
    # gate/up/product and the deepstack features; the vision phase the patch states, qkv and MLP
    text_act = tokens * (3 * t.hidden_size + 2 * q + 2 * kv + 3 * t.intermediate_size) \
        + len(v.deepstack_visual_indexes) * merged * t.hidden_size
    vis_act = patches * (3 * v.hidden_size + 3 * v.hidden_size + 2 * v.intermediate_size)
    pixels_fp32 = patches * patch_embed / v.hidden_size * 4
    act = BYTES_BF16 * max(text_act, vis_act) + pixels_fp32 + tokens * t.hidden_size * 4  # + fp32 last layer
    all_layers = (t.num_hidden_layers + 1) * tokens * t.hidden_size * BYTES_BF16  # output_hidden_states=True
    return {"flops": flops, "activation_bytes": act, "all_layer_states_bytes": all_layers}


def wavlm_second(config, chunk_s: float = 4.0, overlap_s: float = 2.0, rate: int = 16000) -> float:
    """FLOPs per second of audio in per-clip mode (4 s chunks every 2 s: each second runs twice)."""
    flops, length, channels = 0.0, rate * chunk_s, 1
    for dim, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - k) // s + 1
        flops += 2 * length * dim * channels * k
        channels = dim
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    flops += 2 * length * (channels * d + layers * (4 * d * d + 2 * d * ff)) + layers * 4 * length ** 2 * d
    return flops / (chunk_s - overlap_s)


def grada_image(size: int = 240) -> float:
    """FLOPs of GRADA's EfficientNet-B1 on one image, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from extractors.face import GradaEmbedder

    model = GradaEmbedder("b1").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--face-fps", type=float, required=True, help="CPU: GRADA frames per second (real_size.py)")
    ap.add_argument("--audio-xrt", type=float, required=True, help="CPU: WavLM-Large x real time (real_size.py)")
    ap.add_argument("--behavior-s", type=float, required=True, help="CPU: seconds per behaviour segment")
    ap.add_argument("--mfu-behavior", type=float, default=0.35)
    ap.add_argument("--mfu-audio", type=float, default=0.2)
    ap.add_argument("--mfu-face", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=16, help="behaviour segments per forward (paper profile)")
    ap.add_argument("--cores", type=int, default=16, help="CPU cores beside each GPU")
    ap.add_argument("--crop-ms", type=float, default=7.4, help="CPU ms to decode + letterbox one crop")
    ap.add_argument("--frame-ms", type=float, default=3.9, help="CPU ms to decode one 720p frame to RGB")
    ap.add_argument("--audio-ms", type=float, default=3.7, help="CPU ms to decode + resample 1 s of audio")
    args = ap.parse_args()

    from extractors.published_sizes import qwen3vl_4b_config, wavlm_large_config

    seconds = FRAMES / FPS
    qwen = qwen_segment(qwen3vl_4b_config())
    work = {"face": (FRAMES, grada_image(), args.mfu_face, FRAMES / args.face_fps, FRAMES * args.crop_ms),
            "audio": (seconds, wavlm_second(wavlm_large_config()), args.mfu_audio, seconds / args.audio_xrt,
                      seconds * args.audio_ms),
            "behavior": (SEGMENTS, qwen["flops"], args.mfu_behavior, SEGMENTS * args.behavior_s, FRAMES * args.frame_ms)}
    peak, bw = GPUS["H100 SXM"]
    print("| modality | work | FLOPs per item | all of Aff-Wild2 | this CPU (2 cores) | one H100/H200: model "
          f"| decode on {args.cores} cores | one GPU machine | 8 GPUs (Ray) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (items, per, mfu, cpu_s, decode_ms) in work.items():
        gpu_s = items * per / (peak * mfu)
        decode_s = decode_ms / 1e3 / args.cores
        unit = {"face": "frames", "audio": "s of audio", "behavior": "segments"}[name]
        print(f"| {name} | {items:,.0f} {unit} | {per:.3g} | {items * per:.2e} FLOPs | {hours(cpu_s)} | "
              f"{hours(gpu_s)} (MFU {mfu:.0%}) | {hours(decode_s)} | {hours(max(gpu_s, decode_s))} | "
              f"{hours(max(gpu_s, decode_s) / 8)} |")
    weights = 4_437_815_808 * BYTES_BF16
    print(f"\nbehaviour: {qwen['flops']:.3g} FLOPs per segment; weights {weights / 2**30:.1f} GiB are read "
          f"once per forward: {weights / bw * 1e3:.1f} ms at H100 bandwidth against "
          f"{args.batch * qwen['flops'] / (peak * args.mfu_behavior):.2f} s of arithmetic per batch of {args.batch}: "
          "compute-bound, so the H200's bandwidth changes nothing, its 141 GB allow larger batches")
    for b in (1, 4, 16, 32):
        gpu = weights + b * qwen["activation_bytes"]
        print(f"peak GPU memory, batch {b:2d}: ~{gpu / 2**30:.1f} GiB (weights + {qwen['activation_bytes'] / 2**30:.2f} "
              f"GiB per segment); asking for every layer's states would add {b * qwen['all_layer_states_bytes'] / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
