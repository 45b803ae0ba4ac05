"""Sinusoidal positional encoding and the published attention layer built on it (face, dcmmoe)."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_encoding(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """[length, dim] sine/cosine positions (Vaswani et al.); the published face and fusion layers
    add them to Q, K and V in every layer."""
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


class PositionalAttentionLayer(nn.Module):
    """The published post-LN layer of the face Transformer and of dcmmoe (`src_visual_dynamic_model/model.py`, `src_fusion_model/`).

    The positional encoding is added to Q, K and V separately, each sum with its own dropout
    (`pe_dropout`); attention; `LN(attn + drop(q_pe))`, the residual taken around the *encoded*
    query; then `LN(FF(x) + drop(x))` with a d -> ff -> d GELU feed-forward. `kv` is the query
    itself for self-attention (face) or another stream (dcmmoe: behavior frames, never updated).
    """

    def __init__(self, d: int, heads: int, dropout: float, ff: int | None = None, pe_dropout: float | None = None) -> None:
        super().__init__()
        ff = d if ff is None else ff
        pe_p = dropout if pe_dropout is None else pe_dropout
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.pe_drop_q, self.pe_drop_k, self.pe_drop_v = nn.Dropout(pe_p), nn.Dropout(pe_p), nn.Dropout(pe_p)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kpm: torch.Tensor | None, pe: torch.Tensor) -> torch.Tensor:
        qp = self.pe_drop_q(q + pe)
        a, _ = self.attn(qp, self.pe_drop_k(kv + pe), self.pe_drop_v(kv + pe), key_padding_mask=kpm,
                         need_weights=False)
        x = self.norm1(a + self.drop1(qp))
        return self.norm2(self.ff(x) + self.drop2(x))
