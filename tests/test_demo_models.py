"""Demo checkpoints: deterministic per seed, reloadable through the real loading paths, fast."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from extractors import demo_models


def digest(path: Path) -> str:
    """sha1 over every file of a checkpoint (names + bytes)."""
    h = hashlib.sha1()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    a = demo_models.write_all(root / "a", seed=0)
    b = demo_models.write_all(root / "b", seed=0)
    c = demo_models.write_all(root / "c", seed=1)
    return a, b, c


def test_write_all_is_complete(written):
    a, _, _ = written
    assert set(a) == {"grada", "wavlm", "pdem", "qwen3vl"}
    assert a["grada"].is_file() and (a["wavlm"] / "config.json").is_file() and (a["pdem"] / "config.json").is_file()
    assert (a["qwen3vl"] / "config.json").is_file()


def test_same_seed_same_bytes_other_seed_other_weights(written):
    a, b, c = written
    for name in ("grada", "wavlm", "pdem", "qwen3vl"):
        assert digest(a[name]) == digest(b[name]), name
        assert digest(a[name]) != digest(c[name]), name


def test_reload_through_real_paths(written):
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    from extractors.face import GradaEmbedder

    a = written[0]
    wavlm = AutoModel.from_pretrained(a["wavlm"])
    assert type(wavlm).__name__ == "WavLMModel"
    pdem = AutoModel.from_pretrained(a["pdem"])
    assert type(pdem).__name__ == "Wav2Vec2Model" and pdem.config.do_stable_layer_norm   # PDEM's architecture
    with torch.inference_mode():
        assert wavlm(torch.zeros(1, 16000)).last_hidden_state.shape == (1, 49, 64)
    proc = AutoProcessor.from_pretrained(a["qwen3vl"])
    model = AutoModelForImageTextToText.from_pretrained(a["qwen3vl"])
    assert type(proc).__name__ == "Qwen3VLProcessor" and type(model).__name__ == "Qwen3VLForConditionalGeneration"
    ids = proc.tokenizer("You are an expert in multimodal affect analysis.")["input_ids"]
    assert len(ids) < 15  # trained on the prompt words: words, not bytes
    grada = GradaEmbedder()
    grada.load_state_dict(torch.load(a["grada"], map_location="cpu"))


def test_calibrated_grada_keeps_images_apart(tmp_path):
    """Without BatchNorm calibration a random EfficientNet maps every image to one embedding."""
    import numpy as np
    import torch

    from extractors import demo_models
    from extractors.face import GradaEmbedder

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(16, 48, 48, 3), dtype=np.uint8)
    path = demo_models.write_grada(tmp_path / "g.pth", seed=0, calibration=images, calibration_size=64)
    model = GradaEmbedder()
    model.load_state_dict(torch.load(path, map_location="cpu"))
    model.eval()
    with torch.no_grad():
        emb = model(demo_models._calibration_batch(images[:8], 64, 0)).numpy()
    assert emb.std(axis=0).mean() > 0.05  # images are told apart
    assert np.abs(emb).mean() < 0.9  # and the Tanh is not saturated
