"""The published behavior Mamba block (`block: published`) and its place in the behavior head."""

from __future__ import annotations

import pytest
import torch

from heads.behavior_temporal import BehaviorTemporal, BehaviorTemporalConfig, BehaviorTemporalModel
from heads.mamba_published import PublishedMambaBlock


def reference_scan(block: PublishedMambaBlock, x: torch.Tensor) -> torch.Tensor:
    """The published recurrence written out per batch row, channel and state (slow, obvious)."""
    b_in, c_out = block.to_b(x), block.to_c(x)
    delta = torch.nn.functional.softplus(block.D + block.delta(x))
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        h = torch.zeros(x.shape[2], block.A.shape[1])
        for t in range(x.shape[1]):
            a_bar = torch.exp(-block.A) * delta[n, t].unsqueeze(-1)          # exp(-A) * delta, not exp(delta * A)
            h = a_bar * h + delta[n, t].unsqueeze(-1) * b_in[n, t] * x[n, t].unsqueeze(-1)
            out[n, t] = (h * c_out[n, t]).sum(-1)
    return out


def test_scan_is_the_published_recurrence_and_the_block_is_causal():
    torch.manual_seed(0)
    block = PublishedMambaBlock(8, d_state=3, kernel=5, dropout=0.0).eval()
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(block.scan(x), reference_scan(block, x), atol=1e-5, rtol=1e-5)
    assert block.conv.kernel_size == (5,) and block.in_proj.out_features == 16  # no expansion
    y = block(x)
    x2 = x.clone()
    x2[:, 4:] += 1.0  # the future must not change the past
    torch.testing.assert_close(block(x2)[:, :4], y[:, :4])
    # post-LN of the D-scaled input plus the mixer output
    with torch.no_grad():
        block.out_proj.weight.zero_()
        block.D.fill_(2.0)
    torch.testing.assert_close(block(x), torch.nn.functional.layer_norm(2.0 * x, (8,), block.norm.weight, block.norm.bias))


def test_behavior_head_runs_the_published_block():
    cfg = BehaviorTemporalConfig(d_model=16, d_state=4, layers=2, conv_kernel=5, head_hidden=8, block="published",
                                 dropout=0.0)
    model = BehaviorTemporalModel(12, cfg).eval()
    assert all(isinstance(b, PublishedMambaBlock) for b in model.blocks)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    pred, emb = model(torch.randn(2, 7, 12), pad)
    assert pred.shape == (2, 7, 2) and emb.shape == (2, 7, 16)
    assert torch.all(emb[1, 5:] == 0)  # padded steps zeroed, as published
    with pytest.raises(ValueError, match="block"):
        BehaviorTemporal(BehaviorTemporalConfig(block="mamba2"))
