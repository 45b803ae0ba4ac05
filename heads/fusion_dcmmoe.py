"""dcmmoe: the published directed cross-modal fusion (the published `src_fusion_model/`).

The face stream queries the behavior stream: Q = face, K = V = behavior, and K/V are the projected
behavior frames in every layer (never updated). Each of the 5 post-LN layers (8 heads) adds the
sinusoidal positional encoding to Q, K and V separately (each sum with its own dropout), attends,
and normalises `LN(attn + drop(q_pe))`, then `LN(FF(x) + drop(x))` with a d -> d GELU feed-forward;
the stack keeps an outer residual `q = q + layer(q)`. The head is Linear -> LN -> GELU -> Dropout ->
Linear, whose post-dropout activation is the exported embedding. The loss is CCC per window,
averaged over windows; published predictions are not smoothed.

The published name says "mixture of experts" but its released code has no gating: that is this
model. The three-modality gated mixture derived from it is `gated_moe` (heads.fusion_gated_moe).

One deviation, on purpose: behavior frames the behavior head marked invalid are removed from
attention (`key_padding_mask`) instead of attended as zero rows; the published data fills them with
the nearest segment, which the behavior head's outputs already do wherever a segment exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from heads.fusion import FusionHead, ModalityProjection, projected_streams, safe_key_padding_mask
from heads.fusion_windows import FrameWindowing
from heads.losses import va_loss
from heads.positional import PositionalAttentionLayer, sinusoidal_encoding
from heads.postprocess import SmoothingConfig
from heads.train import TrainConfig
from heads.registry import register_model


@dataclass
class DCMMOETrainConfig(TrainConfig):
    """Published optimisation (`config_best.toml`): AdamW 1e-4 / wd 0.01, batch 8, <= 100 epochs,
    plateau x0.1 patience 5, early stopping 15, seed 42."""

    progress: bool = False


@dataclass
class DCMMOEConfig:
    """dcmmoe settings; every default is the published one. `query` queries `source`; `windows`/`hop`
    are in frames (published 400 / 150); `loss` is `per_window` (published) or `pooled`."""

    query: str = "face"
    source: str = "behavior"
    d_model: int = 256
    n_heads: int = 8
    layers: int = 5
    dropout: float = 0.1
    out_dim: int = 2
    use_pred: bool = True  # project [emb ; pred] (published `modality_input_mode = "both"`)
    window: int = 400
    hop: int = 150
    loss: str = "per_window"
    loss_weights: tuple[float, float] = (0.5, 0.5)
    mse_weight: float = 0.0
    smoothing: SmoothingConfig = field(default_factory=lambda: SmoothingConfig(enabled=False))
    train: DCMMOETrainConfig = field(default_factory=DCMMOETrainConfig)

    @property
    def modalities(self) -> list[str]:
        return [self.query, self.source]


class DCMMOEModel(nn.Module):
    """Batch as in heads.fusion_windows (`x_<m>`, `valid_<m>`, `mask`) -> {"pred", "emb", "gates"}.

    `gates` is the one expert's weight (1 wherever the query frame exists), so the fusion outputs
    have the same arrays as the gated fusions.
    """

    def __init__(self, cfg: DCMMOEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.proj = nn.ModuleDict({m: ModalityProjection(d, cfg.dropout) for m in cfg.modalities})
        self.layers = nn.ModuleList(PositionalAttentionLayer(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.layers))
        self.head_in = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.GELU(), nn.Dropout(cfg.dropout))
        self.head_out = nn.Linear(d, cfg.out_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        mask, valid, h = projected_streams(self.proj, batch, cfg.modalities)
        q, kv = h[cfg.query], h[cfg.source]
        kpm = safe_key_padding_mask(valid[cfg.source])
        pe = sinusoidal_encoding(mask.shape[1], cfg.d_model, device=mask.device).unsqueeze(0)
        for layer in self.layers:
            q = q + layer(q, kv, kpm, pe)
        emb = self.head_in(q)
        gates = valid[cfg.query].unsqueeze(-1).to(emb.dtype)
        return {"pred": self.head_out(emb), "emb": emb, "gates": gates}


@register_model("dcmmoe", kind="fusion", config=DCMMOEConfig,
                inputs=("heads/face", "heads/behavior", "features/reliability"), optional=("features/reliability",))
class DCMMOE(FusionHead):
    """dcmmoe behind the head contract: frame windows (published 400 / hop 150), no audio tokens."""

    name = "dcmmoe"

    @property
    def streams(self) -> list[str]:
        return self.cfg.modalities

    @property
    def windowing(self) -> FrameWindowing:
        return FrameWindowing(size=self.cfg.window, hop=self.cfg.hop)

    @property
    def gate_names(self) -> list[str]:
        return [f"{self.cfg.query}<-{self.cfg.source}"]

    def check(self) -> None:
        super().check()
        if self.cfg.query == self.cfg.source:
            raise ValueError(f"DCMMOEConfig: query and source must differ, both are {self.cfg.query!r}")
        if self.cfg.loss not in ("per_window", "pooled"):
            raise ValueError(f"DCMMOEConfig.loss must be 'per_window' or 'pooled', got {self.cfg.loss!r}")

    def build_model(self, dims) -> DCMMOEModel:
        return DCMMOEModel(self.cfg)

    def loss(self):
        cfg = self.cfg

        def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
            pred = model(batch)["pred"]
            return va_loss(pred, batch["y"], batch["y_valid"] & batch["mask"], cfg.loss_weights, cfg.mse_weight,
                           cfg.loss)
        return loss_fn
