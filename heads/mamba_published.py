"""The behavior head's published Mamba block (seed 1, `src_behavior_model`), as `block: published`.

It is not the Mamba of `mamba_ssm` / transformers' `MambaMixer`; the published numbers come from
this variant:
- no expansion: the input projection is d -> 2d, a d-wide branch and a d-wide gate;
- the branch runs a causal depthwise convolution (kernel 5 in the published config) and SiLU;
- the selective scan uses `A_bar = exp(-A) * delta` (A initialised to 1..d_state per channel),
  `B_bar x = delta * B * x`, `y = C h`, with `delta = softplus(D + low-rank(x))`, where the learned
  per-channel D doubles as delta's bias, and no `D * x` skip inside the scan;
- the output is `out_proj(y * silu(gate))`, and the block returns `LN(D * x_in + dropout(out))`:
  post-LN, its input scaled by the same D, not a pre-norm residual;
- padded steps are zeroed after every block.

The scan is a loop over time steps, like the published code: sequences are 16 segments long.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PublishedMambaBlock(nn.Module):
    """(x [B, T, d], valid [B, T] bool or None) -> [B, T, d]."""

    def __init__(self, d: int, d_state: int, kernel: int, dropout: float, d_discr: int | None = None) -> None:
        super().__init__()
        r = d_discr or max(1, d // 16)
        self.in_proj = nn.Linear(d, 2 * d, bias=False)
        self.conv = nn.Conv1d(d, d, kernel, padding=kernel - 1, groups=d, bias=True)
        self.to_b = nn.Linear(d, d_state, bias=False)
        self.to_c = nn.Linear(d, d_state, bias=False)
        self.delta = nn.Sequential(nn.Linear(d, r, bias=False), nn.Linear(r, d, bias=False))
        self.A = nn.Parameter(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """The published selective scan over [B, T, d] (state [B, d, d_state])."""
        b_in, c_out = self.to_b(x), self.to_c(x)                       # [B, T, S]
        delta = F.softplus(self.D + self.delta(x))                     # [B, T, d]
        a_bar = torch.exp(-self.A) * delta.unsqueeze(-1)               # [B, T, d, S]
        bx = b_in.unsqueeze(2) * delta.unsqueeze(-1) * x.unsqueeze(-1)  # [B, T, d, S]
        h = x.new_zeros(x.shape[0], x.shape[2], self.A.shape[1])
        ys = []
        for t in range(x.shape[1]):
            h = a_bar[:, t] * h + bx[:, t]
            ys.append((h * c_out[:, t].unsqueeze(1)).sum(-1))
        return torch.stack(ys, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        t = x.shape[1]
        branch, gate = self.in_proj(x).chunk(2, dim=-1)
        branch = F.silu(self.conv(branch.transpose(1, 2))[..., :t].transpose(1, 2))
        out = self.out_proj(self.scan(branch) * F.silu(gate))
        out = self.norm(self.D * x + self.drop(out))
        return out if valid is None else out * valid.unsqueeze(-1).to(out.dtype)
