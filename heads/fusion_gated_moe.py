"""gated_moe: a gated mixture of directed cross-attention experts over three modalities' head outputs.

Derived from the published DCMMOE (seed 1, `src_fusion_model`; to be added as its own `dcmmoe`),
which stacks 5 post-LN Transformer layers in which the
face stream queries the behavior stream (Q = face, K/V = behavior). Its released code has no gating,
so the mixture is ours: every *directed* pair target<-source is one expert (a cross-attention block
in which the target's frames query the source's frames) and every modality also gets a self expert.
A gating network produces, per frame, a softmax over the experts that can run at that frame.

Why masking instead of zero-filling: a missing face (no detection) or a silent segment must not look
like a real, all-zero embedding. Missing source frames are removed from attention with
`key_padding_mask`, and an expert whose target or source is missing at a frame is removed from the
gate's softmax at that frame, so its weight there is exactly 0.

Layers per expert default to 1 (the published single directed stack uses 5): with 9 experts for
three modalities, 1 layer each is already ~9 attention layers of compute, which keeps CPU demos light.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from heads.fusion import FusionHead, ModalityProjection, output_width, projected_streams, safe_key_padding_mask
from heads.fusion_windows import FrameWindowing
from heads.positional import sinusoidal_encoding
from heads.postprocess import SmoothingConfig
from heads.train import TrainConfig
from heads.registry import register_model


@dataclass
class GatedMoETrainConfig(TrainConfig):
    """Optimisation of gated_moe: the published face-head values (AdamW 1e-4 / wd 0.01, batch 8,
    <= 100 epochs, early stopping 15); no per-batch bar (`progress`: fusions train after the heads,
    logs stay short), the bar over epochs still shows."""

    progress: bool = False


@dataclass
class GatedMoEConfig:
    """gated_moe settings; defaults are the published DCMMOE ones where they exist (`src_fusion_model/config_best.toml`).

    `pairs` lists directed (target, source) experts; None means every ordered pair of enabled
    modalities. `windows`/`hop` are in frames (published 400/150).
    """

    task: str = "va"               # "va" | "expr" (set by the registry entry)
    modalities: list[str] = field(default_factory=lambda: ["face", "behavior", "audio"])
    pairs: list[tuple[str, str]] | None = None
    self_experts: bool = True
    self_expert_kind: str = "attention"  # "attention" | "mlp"
    d_model: int = 256
    n_heads: int = 8
    expert_layers: int = 1
    ff_dim: int = 256
    dropout: float = 0.1
    gate_hidden: int = 128
    out_dim: int = 2
    use_pred: bool = True  # project [emb ; pred] (published) or emb only
    window: int = 400
    hop: int = 150
    loss_weights: tuple[float, float] = (0.5, 0.5)
    mse_weight: float = 0.0
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    train: GatedMoETrainConfig = field(default_factory=GatedMoETrainConfig)

    def resolved_pairs(self) -> list[tuple[str, str]]:
        """The directed (target, source) pairs, validated against `modalities`."""
        mods = list(self.modalities)
        if self.pairs is None:
            return [(t, s) for t in mods for s in mods if t != s]
        out = []
        for pair in self.pairs:
            t, s = pair
            if t not in mods or s not in mods or t == s:
                raise ValueError(
                    f"GatedMoEConfig.pairs: ({t!r}, {s!r}) is not a directed pair of two different enabled "
                    f"modalities {mods}; fix the fusion `pairs` parameter"
                )
            out.append((t, s))
        return out


def expert_names(cfg: GatedMoEConfig) -> list[str]:
    """Expert names in gate order: self experts `m` first, then directed `target<-source`."""
    names = [f"{m}" for m in cfg.modalities] if cfg.self_experts else []
    return names + [f"{t}<-{s}" for t, s in cfg.resolved_pairs()]


class _AttentionBlock(nn.Module):
    """Post-LN attention block (published layout): x = LN(q + attn(q+pe, kv+pe, kv)); LN(x + FF(x))."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kpm: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(q + pe, kv + pe, kv, key_padding_mask=kpm, need_weights=False)
        x = self.norm1(q + self.drop(a))
        return self.norm2(x + self.drop(self.ff(x)))


class _MLPBlock(nn.Module):
    """Frame-wise residual MLP: the cheap self expert (no temporal context)."""

    def __init__(self, d: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kpm: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        return self.norm(q + self.ff(q))


class Expert(nn.Module):
    """A stack of blocks; the target stream is the query and is updated residually (as published)."""

    def __init__(self, target: str, source: str, cfg: GatedMoEConfig, kind: str = "attention") -> None:
        super().__init__()
        self.target, self.source = target, source
        if kind == "attention":
            blocks = [_AttentionBlock(cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.expert_layers)]
        elif kind == "mlp":
            blocks = [_MLPBlock(cfg.d_model, cfg.ff_dim, cfg.dropout) for _ in range(cfg.expert_layers)]
        else:
            raise ValueError(f"GatedMoEConfig.self_expert_kind={kind!r}: use 'attention' or 'mlp'")
        self.blocks = nn.ModuleList(blocks)

    def forward(self, h: dict[str, torch.Tensor], kpm: dict[str, torch.Tensor], pe: torch.Tensor) -> torch.Tensor:
        x, kv = h[self.target], h[self.source]
        for block in self.blocks:
            # self experts attend to their own *updated* stream; cross experts always to the source
            x = block(x, x if self.source == self.target else kv, kpm[self.source], pe)
        return x


class GatedMoEModel(nn.Module):
    """Directed cross-modal mixture of experts with a per-frame masked gate.

    Batch (a dict of tensors; B windows of L frames):
      `x_<m>` [B, L, D_m] float (emb ; pred), `valid_<m>` [B, L] bool for each modality m,
      `mask` [B, L] bool (True = a real frame, False = window padding).
    Returns {"pred": [B, L, out], "emb": [B, L, d] (input of the output MLP), "gates": [B, L, E]}.
    """

    def __init__(self, cfg: GatedMoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = list(cfg.modalities)
        self.names = expert_names(cfg)
        self.proj = nn.ModuleDict({m: ModalityProjection(cfg.d_model, cfg.dropout) for m in self.modalities})
        specs: list[tuple[str, str, str]] = []
        if cfg.self_experts:
            specs += [(m, m, cfg.self_expert_kind) for m in self.modalities]
        specs += [(t, s, "attention") for t, s in cfg.resolved_pairs()]
        self.experts = nn.ModuleList([Expert(t, s, cfg, kind) for t, s, kind in specs])
        n_mod = len(self.modalities)
        self.gate = nn.Sequential(
            nn.Linear(n_mod * (cfg.d_model + 1), cfg.gate_hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.gate_hidden, len(self.experts)),
        )
        self.head = nn.Sequential(
            nn.LayerNorm(cfg.d_model),
            nn.Linear(cfg.d_model, cfg.d_model),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.d_model, output_width(cfg)),
        )

    def expert_availability(self, valid: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, L, E] bool: an expert runs at a frame only where its target and source both exist."""
        return torch.stack([valid[e.target] & valid[e.source] for e in self.experts], dim=-1)

    def gate_weights(self, h: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-frame softmax over available experts; frames with none available get all-zero weights."""
        feats = [torch.cat([h[m], valid[m].unsqueeze(-1).to(h[m].dtype)], dim=-1) for m in self.modalities]
        logits = self.gate(torch.cat(feats, dim=-1))
        avail = self.expert_availability(valid)
        logits = logits.masked_fill(~avail, float("-inf"))
        any_avail = avail.any(dim=-1, keepdim=True)
        logits = torch.where(any_avail, logits, torch.zeros_like(logits))
        return torch.softmax(logits, dim=-1) * any_avail.to(logits.dtype)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask, valid, h = projected_streams(self.proj, batch, self.modalities)
        kpm = {m: safe_key_padding_mask(valid[m]) for m in self.modalities}
        B, L = mask.shape
        pe = sinusoidal_encoding(L, self.cfg.d_model, device=mask.device).unsqueeze(0)
        outs = torch.stack([expert(h, kpm, pe) for expert in self.experts], dim=-2)  # [B, L, E, d]
        gates = self.gate_weights(h, valid)
        fused = (outs * gates.unsqueeze(-1)).sum(dim=-2)
        return {"pred": self.head(fused), "emb": fused, "gates": gates}


@register_model("gated_moe", kind="fusion", config=GatedMoEConfig,
                inputs=("heads/face", "heads/behavior", "heads/audio", "features/reliability"), tasks=("va", "expr"),
                optional=("features/reliability",))
class GatedMoE(FusionHead):
    """gated_moe behind the head contract: frame windows (published 400 / hop 150), no audio tokens."""

    name = "gated_moe"

    @property
    def streams(self) -> list[str]:
        return list(self.cfg.modalities)

    @property
    def windowing(self) -> FrameWindowing:
        return FrameWindowing(size=self.cfg.window, hop=self.cfg.hop)

    @property
    def gate_names(self) -> list[str]:
        return expert_names(self.cfg)

    def check(self) -> None:
        super().check()
        self.cfg.resolved_pairs()

    def build_model(self, dims) -> GatedMoEModel:
        return GatedMoEModel(self.cfg)
