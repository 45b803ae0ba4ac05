"""The paper profile's encoders at their published sizes, built from configuration values alone.

The published checkpoints cannot be downloaded everywhere (CI, air-gapped GPU machines), but their
architectures are public configuration facts. Building them with random weights, offline, lets the
unchanged extractors load them through `from_pretrained` and lets a bench measure what a real run
costs (time, memory, bytes) without any download. transformers' config defaults are *not* these
models (`WavLMConfig()` is the base model, `Qwen3VLConfig()` an 8B-like tower), so every value that
differs is set here.

Parameter counts (random weights, built from these values): WavLM-Large 315,453,120;
Qwen3-VL-4B-Instruct 4,437,815,808 with tied embeddings; GRADA EfficientNet-B1 ~7.8e6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PUBLISHED_PARAMS = {
    "wavlm_large": 3.15e8,
    "qwen3vl_4b": 4.44e9,
    "grada_b1": 7.8e6,
}


def wavlm_large_config():
    """`microsoft/wavlm-large`: 24 layers of 1024, 16 heads, stable layer norm, conv front end without bias."""
    from transformers import WavLMConfig

    return WavLMConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=False, hidden_act="gelu",
    )


def qwen3vl_4b_config():
    """`Qwen/Qwen3-VL-4B-Instruct`: 36-layer 2560-d text tower (GQA 32/8), 24-layer vision tower,
    patch 16, spatial merge 2, deepstack layers 5/11/17, tied embeddings."""
    from transformers import Qwen3VLConfig

    text = dict(
        hidden_size=2560, num_hidden_layers=36, intermediate_size=9728, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=5_000_000.0,
        rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        hidden_act="silu", tie_word_embeddings=True, max_position_embeddings=262144,
    )
    vision = dict(
        depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16, temporal_patch_size=2,
        spatial_merge_size=2, out_hidden_size=2560, deepstack_visual_indexes=[5, 11, 17],
        num_position_embeddings=2304, hidden_act="gelu_pytorch_tanh", in_channels=3,
    )
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True,
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    )


def count_parameters(config: Any, model_class: Any) -> int:
    """Parameters of `model_class(config)`, built on the meta device (no memory, no time), with tied
    weights counted once."""
    import torch

    with torch.device("meta"):
        model = model_class(config)
    if getattr(config, "tie_word_embeddings", False) or getattr(getattr(config, "text_config", None),
                                                                 "tie_word_embeddings", False):
        model.tie_weights()
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once


def write_wavlm_large(out_dir: str | Path, seed: int = 0) -> Path:
    """Random-weight WavLM-Large plus its 16 kHz feature extractor, saved in bf16 with `save_pretrained`."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = WavLMModel(wavlm_large_config()).eval().to(torch.bfloat16)
    model.save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(out_dir)
    return out_dir
