"""Sinusoidal positional encoding shared by the face Transformer and the fusion experts."""

from __future__ import annotations

import math

import torch


def sinusoidal_encoding(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """[length, dim] sine/cosine positions (Vaswani et al.); the published face and fusion layers
    add them to Q, K and V in every layer."""
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe
