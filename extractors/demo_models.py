"""Tiny, random-initialised checkpoints of the *real* encoder classes for the demo and the tests.

Why: the demo and the test-suite must exercise exactly the code path a real model takes
(`from_pretrained` of a folder, a GRADA `.pth` state dict), but offline, in seconds, on a CPU.
So we build the real classes (WavLM, Qwen3-VL, GRADA's EfficientNet-B1 embedder) from tiny configs
with a fixed seed and save them the way the hub ships real ones. Same seed -> byte-identical weights.

The checkpoints carry no knowledge; features from them are only structurally meaningful.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Words the tiny tokenizer is trained on (prompt vocabulary, chat roles, timestamps), so that the
# prompt does not degenerate into single bytes and sequences stay short.
_TOKENIZER_CORPUS = (
    "You are an expert in multimodal affect analysis.",
    "Describe the valence, pleasant or unpleasant, and the arousal, calm or excited, of the person.",
    "Cite visible cues: face, facial expression, posture, gestures, head movement and the scene.",
    "Say how they change over time and note uncertainty when the cues are ambiguous.",
    "Answer in one paragraph of at most 100 tokens that ends with a period.",
    "system user assistant video image seconds 0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1 2 3 4 5 6 7 8 9",
    "The person smiles, nods and leans forward; arousal is high and valence is positive.",
)

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# A minimal Qwen-style chat template: a video item becomes <|vision_start|><|video_pad|><|vision_end|>,
# which Qwen3VLProcessor expands into per-frame timestamps + visual tokens (as with the real template).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _seed(seed: int) -> None:
    """Seed every RNG the model constructors draw from (weights init is torch's RNG)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_grada(path: str | Path, seed: int = 0, calibration: Any = None, calibration_size: int = 96) -> Path:
    """Write a random GRADA embedder state dict (`.pth`) loadable by `extractors.face`.

    A freshly initialised EfficientNet in eval mode normalises with BatchNorm running statistics of
    0/1, which do not match its random activations: the signal collapses through its 20+ BatchNorm
    layers (every image maps to the same embedding) or saturates the Tanh. So the running statistics
    are calibrated on `calibration` images ([N, H, W, 3] uint8 RGB, e.g. a few dozen demo face
    crops; data-dependent initialisation in the spirit of LSUV: no label is used, no weight is
    trained), or on seeded random smooth images when none are given. Imported lazily: the face
    module pulls torchvision models.
    """
    import torch

    from extractors.face import GradaEmbedder  # lazy: owned by the face module

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _seed(seed)
    model = GradaEmbedder()
    calibrate_batchnorm(model, _calibration_batch(calibration, calibration_size, seed))
    torch.save(model.state_dict(), path)
    return path


def _calibration_batch(images: Any, size: int, seed: int, count: int = 64):
    """ImageNet-normalised [N, 3, size, size] tensor from uint8 RGB images (or seeded smooth noise)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if images is None or len(images) == 0:
        coarse = torch.randn(count, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
        return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def calibrate_batchnorm(model: Any, batch: Any) -> None:
    """Set every BatchNorm's running mean/var to the statistics of one forward pass over `batch`."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(batch)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def tiny_wavlm_config(**overrides: Any):
    """WavLM config of the real architecture shape (conv front end, stable layer norm) at toy size.

    `feat_extract_norm="layer"` and `do_stable_layer_norm=True` as in WavLM-Large: a per-frame
    layer norm has no whole-clip statistics (group norm would), so chunked inference can match
    whole-sequence inference.
    """
    from transformers import WavLMConfig

    kwargs: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_buckets=32,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    )
    kwargs.update(overrides)
    return WavLMConfig(**kwargs)


def write_wavlm(out_dir: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random WavLM (+ a 16 kHz feature extractor) with `save_pretrained`.

    `overrides` change config fields (tests use `num_hidden_layers=0` for a model whose context
    is local, to check chunk stitching exactly).
    """
    from transformers import Wav2Vec2FeatureExtractor, WavLMModel

    out_dir = Path(out_dir)
    _seed(seed)
    model = WavLMModel(tiny_wavlm_config(**overrides)).eval()
    model.save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out_dir)
    return out_dir


def write_pdem(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random wav2vec 2.0 (+ feature extractor): the architecture of PDEM
    (`audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim`: wav2vec 2.0 with stable layer norm), for
    the demo's `sun_audio` store (profile sun2024)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    out_dir = Path(out_dir)
    _seed(seed)
    config = Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    Wav2Vec2Model(config).eval().save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out_dir)
    return out_dir


def _train_tokenizer(extra_text: str = ""):
    """Byte-level BPE trained on a few sentences, wrapped as a fast HF tokenizer (Qwen special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(_TOKENIZER_CORPUS) + ([extra_text] if extra_text else [])
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def tiny_qwen3vl_config(tokenizer):
    """Qwen3-VL config (text + vision tower, interleaved M-RoPE, deepstack) at toy size."""
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def write_qwen3vl(out_dir: str | Path, seed: int = 0, prompt: str | None = None) -> Path:
    """Save a tiny random Qwen3-VL model + its processor (tokenizer, image/video processors) in one folder.

    Loadable with `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained(out_dir)`, exactly
    like `Qwen/Qwen3-VL-4B-Instruct`. `prompt` (default: the behavior extractor's prompt) is added to
    the tokenizer corpus so it tokenizes into words, not bytes.
    """
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    if prompt is None:
        from extractors.behavior import DEFAULT_PROMPT

        prompt = DEFAULT_PROMPT
    out_dir = Path(out_dir)
    _seed(seed)
    tokenizer = _train_tokenizer(prompt)
    model = Qwen3VLForConditionalGeneration(tiny_qwen3vl_config(tokenizer)).eval()
    vision = dict(patch_size=16, merge_size=2, temporal_patch_size=2)
    # Small pixel budgets so toy frames stay a few visual tokens (real checkpoints ship their own).
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}, **vision)
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 2 * 32 * 32, "longest_edge": 16 * 64 * 64}, **vision
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def write_all(out_dir: str | Path, seed: int = 0, face_calibration: Any = None,
              face_image_size: int = 96) -> dict[str, Path]:
    """Write every demo checkpoint under `out_dir`; returns {"grada": .pth, "wavlm": dir, "pdem": dir, "qwen3vl": dir}.

    `face_calibration`: uint8 RGB face crops for GRADA's BatchNorm calibration (see `write_grada`).
    """
    out_dir = Path(out_dir)
    return {
        "grada": write_grada(out_dir / "grada" / "grada_b1_demo.pth", seed, face_calibration, face_image_size),
        "wavlm": write_wavlm(out_dir / "wavlm", seed),
        "pdem": write_pdem(out_dir / "pdem", seed),
        "qwen3vl": write_qwen3vl(out_dir / "qwen3vl", seed),
    }
