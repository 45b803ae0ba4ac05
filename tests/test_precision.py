"""bf16 weights on every device; on a CPU, bf16 arithmetic or fp32 arithmetic layer by layer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from extractors import precision
from extractors.base import ExtractorError
from extractors.behavior import BehaviorConfig, QwenVLBehaviorExtractor
from extractors.precision import compute_dtype, upcast_per_layer
from tiny_models import tiny_qwen3vl


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.lin = nn.Linear(16, 8)

    def forward(self, ids):
        x = self.emb(ids)
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.lin(self.norm(x))


def test_upcast_per_layer_is_fp32_arithmetic_over_the_bf16_weights():
    torch.manual_seed(0)
    ref = Small()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # the values a bf16 checkpoint holds
    stored = Small().to(torch.bfloat16)
    stored.load_state_dict(ref.state_dict())
    upcast_per_layer(stored)
    ids = torch.randint(0, 50, (2, 7))
    with torch.inference_mode():
        got, want = stored(ids), ref(ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert all(p.dtype == torch.bfloat16 for p in stored.parameters())  # bf16 again after the call
    plain = Small().to(torch.bfloat16)
    plain.load_state_dict(ref.state_dict())
    with torch.inference_mode():
        assert not torch.equal(plain(ids).float(), want)  # bf16 arithmetic differs: the test can fail


def test_weights_go_back_to_bf16_when_a_call_fails():
    m = upcast_per_layer(nn.Linear(4, 3).to(torch.bfloat16))
    with pytest.raises(RuntimeError):
        m(torch.zeros(2, 5))  # wrong width
    assert m.weight.dtype == torch.bfloat16 and isinstance(m.weight, nn.Parameter)


def test_compute_dtype_rules(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compute_dtype(cpu, False, "bf16") == torch.float32  # fp32 weights: fp32 everywhere
    assert compute_dtype(cuda, True, "fp32") == torch.bfloat16  # cpu_compute is a CPU setting
    assert compute_dtype(cpu, True, "fp32") == torch.float32
    assert compute_dtype(cpu, True, "bf16") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert compute_dtype(cpu, True, "auto") == torch.float32
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert compute_dtype(cpu, True, "auto") == torch.bfloat16
    with pytest.raises(ValueError, match="cpu_compute"):
        compute_dtype(cpu, True, "fp16")


@pytest.fixture(scope="module")
def qwen_bf16(tmp_path_factory):
    """The tiny Qwen3-VL saved in bf16 (as the published checkpoint is) with its processor files."""
    from transformers import AutoModelForImageTextToText

    src = tiny_qwen3vl(tmp_path_factory.mktemp("qwen_src"))
    out = tmp_path_factory.mktemp("qwen_bf16") / "qwen"
    shutil.copytree(src, out)
    for f in out.glob("*.safetensors"):
        f.unlink()
    AutoModelForImageTextToText.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(out)
    return out


def _emb(ex: QwenVLBehaviorExtractor) -> np.ndarray:
    rel = np.linspace(0, 39, 8).round().astype(int)
    frames = [np.random.default_rng(0).integers(0, 255, (8, 64, 96, 3), dtype=np.uint8)]
    return ex.encode(frames, [rel], 10.0)["emb"]


def _loaded(model, **kw) -> QwenVLBehaviorExtractor:
    ex = QwenVLBehaviorExtractor(BehaviorConfig(model=str(model), device="cpu", **kw))
    ex.load()
    return ex


def test_cpu_keeps_bf16_weights_and_computes_in_fp32_when_asked(qwen_bf16):
    """The 4B model's fp32 copy (16.5 GiB) does not fit a 16 GB CPU machine: the weights stay bf16
    on a CPU, and `cpu_compute: fp32` gives fp32 arithmetic over them (CPUs without native bf16)."""
    fp32 = _loaded(qwen_bf16, bf16=False)  # the reference: fp32 weights holding the same bf16 values
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    ex = _loaded(qwen_bf16, cpu_compute="fp32")
    assert {p.dtype for p in ex.model.parameters()} == {torch.bfloat16} and ex.compute_dtype == torch.float32
    got, want = _emb(ex), _emb(fp32)
    assert {p.dtype for p in ex.model.parameters()} == {torch.bfloat16}
    # equal but for the pixel values, which Qwen3-VL casts to its weights' dtype (bf16) first
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * np.abs(want).max())
    bf16 = _loaded(qwen_bf16, cpu_compute="bf16")
    assert bf16.compute_dtype == torch.bfloat16
    assert np.abs(_emb(bf16) - want).max() > np.abs(got - want).max()  # bf16 arithmetic is further off
    assert ex.fingerprint() == bf16.fingerprint() == fp32.fingerprint()  # execution settings


def test_auto_follows_the_cpu(qwen_bf16, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    slow = _loaded(qwen_bf16)
    assert slow.compute_dtype == torch.float32 and {p.dtype for p in slow.model.parameters()} == {torch.bfloat16}
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert _loaded(qwen_bf16).compute_dtype == torch.bfloat16
    with pytest.raises(ExtractorError, match="cpu_compute"):
        QwenVLBehaviorExtractor(BehaviorConfig(model=str(qwen_bf16), cpu_compute="fast"))
