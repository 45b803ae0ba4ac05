"""sun_av: the SUN team's audio-visual fusion of the sun_face and sun_audio outputs (profile `sun2024`).

Published (`src/fusion/models/av_va_models.py`): baselines that pool statistics, average or
concatenate the two modalities, and a bidirectional cross-attention model (2 layers: the video stream
attends to the audio stream and the audio stream to the video stream) whose result is pooled by
average and max.

Here every method works on the two heads' per-frame outputs ([embedding ; prediction], projected to
`d_model`) in windows of `window_s` seconds (6 s: the temporal model's 30 steps at 5 fps) and predicts
per frame, as every fusion here does, so its outputs lie on the frame grid:
- `cross_attention` (default): 2 bidirectional layers (each stream attends to the other: attention,
  residual, LayerNorm, feed-forward, residual, LayerNorm), then the two streams concatenated per frame;
- `concat`: the two projections concatenated per frame;
- `mean`: the mean of the projections valid at that frame;
- `stats`: the concatenation plus each stream's mean and standard deviation over the window.
`pooling: avg_max` (default) appends the window's average and maximum of the fused frames to every
frame. In the release the avg+max pooling reduces a window to one vector; a per-frame output needs the
frame itself too, so it is window context here (`pooling: none` drops it). The release's pooling of
the baselines is not documented beyond their names: these per-frame forms are this project's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from heads.fusion import FusionHead, ModalityProjection, output_width, safe_key_padding_mask
from heads.fusion_windows import SecondsWindowing
from heads.postprocess import SmoothingConfig
from heads.registry import register_model
from heads.train import TrainConfig

METHODS = ("cross_attention", "concat", "mean", "stats")
POOLINGS = ("avg_max", "none")


@dataclass
class SunFusionTrainConfig(TrainConfig):
    """The release states no fusion schedule; only what differs from `TrainConfig`: the static stage's
    weight decay and patience, no progress bar."""

    weight_decay: float = 1e-4
    early_stopping: int = 10
    progress: bool = False


@dataclass
class SunFusionConfig:
    """sun_av settings (module docstring); `streams` are the two heads it reads, video first."""

    task: str = "va"
    streams: list[str] = field(default_factory=lambda: ["sun_face", "sun_audio"])
    method: str = "cross_attention"
    pooling: str = "avg_max"
    d_model: int = 256
    n_heads: int = 8
    layers: int = 2
    ff_dim: int = 512
    dropout: float = 0.1
    out_dim: int = 2
    use_pred: bool = True
    window_s: float = 6.0
    hop_s: float = 3.0
    loss_weights: tuple[float, float] = (0.5, 0.5)
    mse_weight: float = 0.0
    smoothing: SmoothingConfig = field(default_factory=lambda: SmoothingConfig(enabled=False))
    train: SunFusionTrainConfig = field(default_factory=SunFusionTrainConfig)

    def __post_init__(self) -> None:
        if len(self.streams) != 2:
            raise ValueError(f"SunFusionConfig.streams: two streams (video, audio), got {self.streams}")
        if self.method not in METHODS:
            raise ValueError(f"SunFusionConfig.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"SunFusionConfig.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")

    @property
    def modalities(self) -> list[str]:
        return list(self.streams)


class CrossLayer(nn.Module):
    """One direction of one layer: `LN(q + attn(q, kv))`, then `LN(x + FF(x))`."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_valid: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(q, kv, kv, key_padding_mask=safe_key_padding_mask(kv_valid), need_weights=False)
        q = self.ln1(q + self.drop(a))
        return self.ln2(q + self.drop(self.ff(q)))


def _masked_stats(h: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over the window's frames where `m` holds ([B, 1, D] each)."""
    w = m.unsqueeze(-1).to(h.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1.0)
    mean = (h * w).sum(1, keepdim=True) / n
    var = (((h - mean) ** 2) * w).sum(1, keepdim=True) / n
    return mean, torch.sqrt(var + 1e-6)


class SunFusionModel(nn.Module):
    """Batch as in heads.fusion_windows (`x_<m>`, `valid_<m>`, `mask`) -> {"pred", "emb", "gates"};
    `gates` are the two streams' presence per frame (no learned gate: the columns say which streams
    a frame had)."""

    def __init__(self, cfg: SunFusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.proj = nn.ModuleDict({m: ModalityProjection(d, cfg.dropout) for m in cfg.streams})
        if cfg.method == "cross_attention":
            self.v_from_a = nn.ModuleList(CrossLayer(d, cfg.n_heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.layers))
            self.a_from_v = nn.ModuleList(CrossLayer(d, cfg.n_heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.layers))
        width = {"cross_attention": 2 * d, "concat": 2 * d, "mean": d, "stats": 6 * d}[cfg.method]
        width *= 3 if cfg.pooling == "avg_max" else 1
        self.head = nn.Sequential(nn.Linear(width, d), nn.GELU(), nn.Dropout(cfg.dropout))
        self.out = nn.Linear(d, output_width(cfg))

    def fuse(self, v: torch.Tensor, a: torch.Tensor, vv: torch.Tensor, av: torch.Tensor) -> torch.Tensor:
        """The per-frame fused features of the configured method."""
        method = self.cfg.method
        if method == "cross_attention":
            for lv, la in zip(self.v_from_a, self.a_from_v):  # both directions read the previous layer
                v, a = lv(v, a, av), la(a, v, vv)
            return torch.cat([v, a], -1)
        if method == "mean":
            w = torch.stack([vv, av], -1).to(v.dtype)
            return (v * w[..., :1] + a * w[..., 1:]) / w.sum(-1, keepdim=True).clamp_min(1.0)
        both = torch.cat([v, a], -1)
        if method == "concat":
            return both
        (vm, vs), (am, as_) = _masked_stats(v, vv), _masked_stats(a, av)
        stats = torch.cat([vm, vs, am, as_], -1).expand(-1, v.shape[1], -1)
        return torch.cat([both, stats], -1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        mask = batch["mask"].bool()
        sv, sa = cfg.streams
        vv, av = batch[f"valid_{sv}"].bool() & mask, batch[f"valid_{sa}"].bool() & mask
        v = self.proj[sv](batch[f"x_{sv}"].float(), vv)
        a = self.proj[sa](batch[f"x_{sa}"].float(), av)
        h = self.fuse(v, a, vv, av)
        if cfg.pooling == "avg_max":
            real = mask.unsqueeze(-1)
            avg = (h * real).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp_min(1)
            mx = h.masked_fill(~real, float("-inf")).amax(1, keepdim=True)
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
            h = torch.cat([h, avg.expand_as(h), mx.expand_as(h)], -1)
        emb = self.head(h)
        y = self.out(emb)
        gates = torch.stack([vv, av], -1).to(emb.dtype)
        return {"pred": torch.tanh(y) if cfg.task == "va" else y, "emb": emb, "gates": gates}


@register_model("sun_av", kind="fusion", config=SunFusionConfig,
                inputs=("heads/sun_face", "heads/sun_audio", "features/reliability"), optional=("features/reliability",))
class SunFusion(FusionHead):
    """sun_av behind the head contract: windows in seconds, the two sun heads' per-frame outputs."""

    name = "sun_av"

    @property
    def streams(self) -> list[str]:
        return list(self.cfg.streams)

    @property
    def windowing(self) -> SecondsWindowing:
        return SecondsWindowing(window_s=self.cfg.window_s, hop_s=self.cfg.hop_s, audio=None)

    @property
    def gate_names(self) -> list[str]:
        return list(self.cfg.streams)

    def build_model(self, dims) -> SunFusionModel:
        return SunFusionModel(self.cfg)
