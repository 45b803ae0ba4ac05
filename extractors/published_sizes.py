"""The paper profile's encoders at their published sizes, built from configuration values alone.

The published checkpoints cannot be downloaded everywhere (CI, air-gapped GPU machines), but their
architectures are public configuration facts. Building them with random weights, offline, lets the
unchanged extractors load them through `from_pretrained` and lets a bench measure what a real run
costs (time, memory, bytes) without any download. transformers' config defaults are *not* these
models (`WavLMConfig()` is the base model, `Qwen3VLConfig()` an 8B-like tower), so every value that
differs is set here.

Parameter counts (random weights, built from these values): WavLM-Large 315,453,120;
Qwen3-VL-4B-Instruct 4,437,815,808 with tied embeddings; GRADA EfficientNet-B1 ~7.8e6.

The real Qwen tokenizer cannot be built from public configuration values (its 151,643 BPE merges
are data), so `qwen_tokenizer` trains a small byte-level BPE on the prompt and places it in a
vocabulary of the real size with the real special-token ids: the visual part of a sequence (video
pads, vision start/end, per-frame-pair timestamps) has the real token count, the prompt's words
are split differently from the real tokenizer.
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


def write_wavlm_large(out_dir: str | Path, seed: int = 0, config: Any = None) -> Path:
    """Random-weight WavLM-Large (or `config`) plus its 16 kHz feature extractor, saved in bf16 with
    `save_pretrained`."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = WavLMModel(config if config is not None else wavlm_large_config()).eval().to(torch.bfloat16)
    model.save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(out_dir)
    return out_dir


# Qwen2/Qwen3 special tokens in id order from 151643 (`<|endoftext|>`, the pad) to 151656 (`<|video_pad|>`):
# eos `<|im_end|>` 151645, vision start 151652, image 151655, video 151656 (real-size.md).
QWEN_FIRST_SPECIAL_ID = 151643
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)


def qwen_tokenizer(prompt: str):
    """A fast tokenizer with Qwen's vocabulary size and special-token ids, and a BPE trained on `prompt`.

    Ids below 151643 that the small BPE does not use are placeholder entries no text maps to, so
    every special token sits at its real id and the embedding table has its real shape.
    """
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from extractors.demo_models import _TOKENIZER_CORPUS, QWEN_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = [*_TOKENIZER_CORPUS, prompt, " ".join(f"<{t / 10:.1f} seconds>" for t in range(600))]
    tok.train_from_iterator(corpus, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    used = len(vocab)
    vocab.update({f"<|placeholder_{i}|>": i for i in range(used, QWEN_FIRST_SPECIAL_ID)})
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]))
    ids = fast.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    if ids != list(range(QWEN_FIRST_SPECIAL_ID, QWEN_FIRST_SPECIAL_ID + len(QWEN_SPECIAL_TOKENS))):
        raise RuntimeError(f"Qwen special tokens landed at {ids}, not at their real ids")
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def qwen3vl_processor(prompt: str):
    """Qwen3-VL's processor at the published vision settings (patch 16, spatial merge 2, temporal patch 2,
    mean/std 0.5, transformers' default per-clip pixel budget), with `qwen_tokenizer(prompt)`. The
    paper profile sets per-frame pixel bounds (min_pixels / max_pixels) itself."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    from extractors.demo_models import QWEN_CHAT_TEMPLATE

    vision = dict(patch_size=16, merge_size=2, temporal_patch_size=2)
    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**vision), video_processor=Qwen3VLVideoProcessor(**vision),
                            tokenizer=qwen_tokenizer(prompt), chat_template=QWEN_CHAT_TEMPLATE)


def write_qwen3vl(out_dir: str | Path, config: Any = None, seed: int = 0, processor: Any = None,
                  device: str = "cpu") -> Path:
    """Random-weight Qwen3-VL (default: the 4B configuration) plus its processor (default:
    `qwen3vl_processor` with the behaviour extractor's prompt), saved in bf16 with `save_pretrained`
    where the behaviour extractor loads it.

    The weights are created in bf16 on `device` (no fp32 copy: 8.3 GiB for the 4B model, not 8.3 +
    16.5), initialised by transformers' own initialiser under a fixed seed."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    if processor is None:
        from extractors.behavior import DEFAULT_PROMPT

        processor = qwen3vl_processor(DEFAULT_PROMPT)
    out_dir = Path(out_dir)
    config = config if config is not None else qwen3vl_4b_config()
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.eval().save_pretrained(out_dir)
    del model
    processor.save_pretrained(out_dir)
    return out_dir
