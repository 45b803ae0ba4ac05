"""The paper profile's encoders built at their published sizes (meta device: no memory, no time)."""

from __future__ import annotations

import pytest

from extractors.published_sizes import PUBLISHED_PARAMS, count_parameters, qwen3vl_4b_config, wavlm_large_config


def test_wavlm_large_has_the_published_parameter_count() -> None:
    from transformers import WavLMModel

    n = count_parameters(wavlm_large_config(), WavLMModel)
    assert n == pytest.approx(PUBLISHED_PARAMS["wavlm_large"], rel=0.01)
    assert wavlm_large_config().inputs_to_logits_ratio == 320  # 20 ms per frame at 16 kHz


def test_qwen3vl_4b_has_the_published_parameter_count_with_tied_embeddings() -> None:
    from transformers import Qwen3VLForConditionalGeneration

    config = qwen3vl_4b_config()
    assert count_parameters(config, Qwen3VLForConditionalGeneration) == pytest.approx(
        PUBLISHED_PARAMS["qwen3vl_4b"], rel=0.01)
    assert config.text_config.hidden_size == 2560 and config.vision_config.patch_size == 16


def test_grada_backbone_is_torchvision_efficientnet_b1() -> None:
    """~7.8e6 is torchvision's EfficientNet-B1 with its ImageNet classifier; GRADA replaces that
    1000-way layer by a 256-d embedding and two small heads (6.84e6 in all)."""
    import torch
    import torchvision

    from extractors.face import GradaEmbedder

    with torch.device("meta"):
        backbone = torchvision.models.efficientnet_b1(weights=None)
        grada = GradaEmbedder()
    assert sum(p.numel() for p in backbone.parameters()) == pytest.approx(PUBLISHED_PARAMS["grada_b1"], rel=0.01)
    classifier = sum(p.numel() for p in backbone.classifier.parameters())
    heads = sum(p.numel() for name, p in grada.named_parameters() if not name.startswith("model."))
    assert sum(p.numel() for p in grada.parameters()) == sum(p.numel() for p in backbone.parameters()) - classifier + heads


def test_qwen_tokenizer_and_processor_give_the_real_visual_token_count() -> None:
    """The published processor settings at the paper profile's per-frame budget: a 16-frame segment of
    720p or 1080p video becomes 576 x 1024 pixel frames, 8 frame pairs of 18 x 32 merged patches,
    4608 video tokens; special tokens sit at their real ids."""
    from pathlib import Path

    import numpy as np
    import yaml

    from extractors.behavior import DEFAULT_PROMPT, BehaviorConfig, QwenVLBehaviorExtractor
    from extractors.published_sizes import QWEN_SPECIAL_TOKENS, qwen3vl_4b_config, qwen3vl_processor

    paper = yaml.safe_load((Path(__file__).parents[1] / "affcache/profiles/paper.yaml").read_text())
    budget = {k: paper["extract"]["behavior"]["config"][k] for k in ("min_pixels", "max_pixels")}
    assert budget == {"min_pixels": 100352, "max_pixels": 602112}
    processor = qwen3vl_processor(DEFAULT_PROMPT)
    tok, config = processor.tokenizer, qwen3vl_4b_config()
    ids = dict(zip(QWEN_SPECIAL_TOKENS, tok.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))))
    assert (ids["<|image_pad|>"], ids["<|video_pad|>"], ids["<|vision_start|>"]) == (
        config.image_token_id, config.video_token_id, config.vision_start_token_id) == (151655, 151656, 151652)
    assert (tok.eos_token_id, tok.pad_token_id, len(tok)) == (151645, 151643, 151657)
    assert len(tok) <= config.text_config.vocab_size
    ex = QwenVLBehaviorExtractor(BehaviorConfig(model="unused", device="cpu", **budget))
    ex.processor = processor  # the processor alone: no model needed to count tokens
    ex._text = ex.chat_text()
    rel = np.linspace(0, 99, 16).round().astype(int)  # 16 frames of a 4 s segment at 25 fps
    for height, width in ((720, 1280), (1080, 1920)):
        inputs = ex.inputs([np.zeros((16, height, width, 3), np.uint8)], [rel], 25.0)
        assert inputs["video_grid_thw"].tolist() == [[8, 36, 64]]  # 576 x 1024 px per frame
        assert int((inputs["input_ids"][0] == 151656).sum()) == 4608
        assert inputs["pixel_values_videos"].shape == (18432, 3 * 2 * 16 * 16)  # patches the vision tower sees
