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
