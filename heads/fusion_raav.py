"""raav: reliability-aware audio-visual fusion (the published `MultimodalFusionModelV4`, `src_audio_and_fusion/src/fusion/`).

Visual streams (face, behavior) are fused per frame by a learned reliability gate: each stream's
projection gets a gate-MLP logit plus a learnable log prior (face 0.85 / behavior 0.15 at init, so
training starts from "trust the face"), and a softmax over the streams *valid at that frame* mixes
them. Audio is not a per-frame stream -- speech is sparse and speaker-ambiguous -- so it enters as
context: 4 learned latents cross-attend to the audio head's tokens, then every frame cross-attends to
the latents. Audio tokens are masked where the cross-modal filter distrusts them (mouth open < 1 s
or face coverage < 0.8 in the window); unlike the released code we apply the mask on validation and
test too, so the model is evaluated under the same conditions it was trained in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from heads.fusion import FusionHead, ModalityProjection, output_width, projected_streams
from heads.fusion_windows import AudioFilter, SecondsWindowing
from heads.postprocess import SmoothingConfig
from heads.train import TrainConfig
from heads.windows import AudioTrustRule
from heads.registry import register_model


@dataclass
class RAAVTrainConfig(TrainConfig):
    """Published RAAV optimisation (`mm_cfg_va_s2s.yaml`): AdamW 5e-5 / wd 0.01, batch 8, 50
    epochs, early stopping 6, gradient clipping 1.0, AMP (bf16 autocast here, CUDA only).

    Scheduler: the published config sets `use_scheduler: true` but defines no `scheduler:` section,
    and chimera_ml builds none then (`training/builders.py` `build_scheduler`: no config -> None), so
    the published run kept its learning rate: `scheduler: none`. `lr` 5e-5 is published for
    Aff-Wild2-sized data; small demos converge too slowly with it, so the demo overrides it in
    params.yaml (`fuse.raav.train.lr`)."""

    epochs: int = 50
    lr: float = 5e-5
    early_stopping: int = 6
    progress: bool = False
    scheduler: str = "none"


def _raav_trust() -> AudioTrustRule:
    """The published RAAV audio rule: mouth open >= 1 s and face coverage >= 0.8 in the window."""
    return AudioTrustRule(min_open_fraction=0.0, min_open_seconds=1.0, min_face_coverage=0.8)


PROJECTIONS = ("linear", "norm_dropout")


@dataclass
class RAAVConfig:
    """RAAV settings; defaults are the published ones (`multimodal_fusion_model.py`).

    Windows are `window_s` seconds of label frames
    with `hop_s` overlap; audio tokens are masked per window by the filter thresholds below.
    """

    task: str = "va"               # "va" | "expr" (set by the registry entry)
    visual: list[str] = field(default_factory=lambda: ["face", "behavior"])
    audio: str | None = "audio"
    priors: list[float] = field(default_factory=lambda: [0.85, 0.15])
    learn_priors: bool = True
    projection: str = "linear"     # frame projections: "linear" (published LazyLinear) | "norm_dropout" (+ LayerNorm, dropout)
    head_dropout: float = 0.1      # dropout before the head's last Linear (published: the model's dropout)
    d_model: int = 256
    n_latents: int = 4
    latent_heads: int = 4
    enc_heads: int = 4
    enc_layers: int = 1
    ff_dim: int = 1024
    dropout: float = 0.1
    out_dim: int = 2
    use_pred: bool = True
    window_s: float = 4.0
    hop_s: float = 2.0
    audio_trust: AudioTrustRule = field(default_factory=_raav_trust)  # the rule the audio head applies too
    mask_audio_splits: tuple[str, ...] = ("train", "validation", "test")
    loss_weights: tuple[float, float] = (0.7, 0.3)
    mse_weight: float = 0.01
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    train: RAAVTrainConfig = field(default_factory=RAAVTrainConfig)

    def __post_init__(self) -> None:
        if len(self.priors) != len(self.visual):
            raise ValueError(
                f"RAAVConfig: {len(self.priors)} priors for {len(self.visual)} visual streams {self.visual}; "
                "give one prior per visual stream in the fusion `priors` parameter"
            )
        if any(p <= 0 for p in self.priors):
            raise ValueError(f"RAAVConfig.priors must be > 0 (log is taken), got {self.priors}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"RAAVConfig.projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")

    @property
    def modalities(self) -> list[str]:
        """Every stream the model reads (visual streams, then audio if any)."""
        return list(self.visual) + ([self.audio] if self.audio else [])


class RAAVModel(nn.Module):
    """Reliability-gated visual fusion + audio latents + one temporal Transformer layer.

    Batch: `x_<m>` [B, L, D_m], `valid_<m>` [B, L] for each visual m; `mask` [B, L] (real frames);
    `audio_tokens` [B, T, Da], `audio_valid` [B, T] (False = padding or masked by the filter).
    Returns {"pred": [B, L, out], "emb": [B, L, d], "gates": [B, L, n_visual]}.
    """

    def __init__(self, cfg: RAAVConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        linear = cfg.projection == "linear"
        self.proj = nn.ModuleDict({m: ModalityProjection(d, cfg.dropout, linear=linear) for m in cfg.visual})
        self.gate = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, 1)) for m in cfg.visual
        })
        log_prior = torch.log(torch.tensor(cfg.priors, dtype=torch.float32))
        self.log_prior = nn.Parameter(log_prior, requires_grad=cfg.learn_priors)
        self.audio_proj = nn.LazyLinear(d) if cfg.audio else None  # audio=None: a visual-only model
        self.latents = nn.Parameter(torch.randn(1, cfg.n_latents, d) * 0.02)
        self.latent_attn = nn.MultiheadAttention(d, cfg.latent_heads, dropout=cfg.dropout, batch_first=True)
        self.latent_norm = nn.LayerNorm(d)
        self.frame_norm_pre = nn.LayerNorm(d)
        self.frame_attn = nn.MultiheadAttention(d, cfg.latent_heads, dropout=cfg.dropout, batch_first=True)
        self.frame_norm_post = nn.LayerNorm(d)
        layer = nn.TransformerEncoderLayer(d, cfg.enc_heads, cfg.ff_dim, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.enc_layers, enable_nested_tensor=False)
        head = [nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()]
        if cfg.head_dropout > 0:  # a zero dropout adds no module, so the head's parameter names stay those of old checkpoints
            head.append(nn.Dropout(cfg.head_dropout))
        self.head = nn.Sequential(*head, nn.Linear(d, output_width(cfg)))

    def visual_gates(self, h: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, L, M] softmax over the visual streams valid at each frame (0 where none is)."""
        logits = torch.stack([self.gate[m](h[m]).squeeze(-1) + self.log_prior[i] for i, m in enumerate(self.cfg.visual)], -1)
        ok = torch.stack([valid[m] for m in self.cfg.visual], -1)
        logits = logits.masked_fill(~ok, float("-inf"))
        any_ok = ok.any(-1, keepdim=True)
        logits = torch.where(any_ok, logits, torch.zeros_like(logits))
        return torch.softmax(logits, -1) * any_ok.to(logits.dtype)

    def audio_context(self, frames: torch.Tensor, tokens: torch.Tensor | None, tok_valid: torch.Tensor | None) -> torch.Tensor:
        """Inject audio through the latents; windows without one usable token are left unchanged.

        Skipping (rather than attending to nothing) keeps masked audio from producing NaN and
        makes 'no trustworthy audio' mean exactly 'no audio context'.
        """
        if self.audio_proj is None or tokens is None or tok_valid is None or tokens.shape[1] == 0:
            return frames
        # project first, even if every token is masked: it materialises the lazy projection
        a = self.audio_proj(tokens.float()) * tok_valid.unsqueeze(-1).to(frames.dtype)
        has = tok_valid.any(1)
        if not bool(has.any()):
            return frames
        lat = self.latents.expand(int(has.sum()), -1, -1)
        upd, _ = self.latent_attn(lat, a[has], a[has], key_padding_mask=~tok_valid[has], need_weights=False)
        lat = self.latent_norm(lat + upd)
        ctx, _ = self.frame_attn(self.frame_norm_pre(frames[has]), lat, lat, need_weights=False)
        out = frames.clone()
        out[has] = self.frame_norm_post(frames[has] + ctx)
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask, valid, h = projected_streams(self.proj, batch, self.cfg.visual)
        gates = self.visual_gates(h, valid)
        fused = (torch.stack([h[m] for m in self.cfg.visual], -2) * gates.unsqueeze(-1)).sum(-2)
        fused = self.audio_context(fused, batch.get("audio_tokens"), batch.get("audio_valid"))
        kpm = ~mask & ~(~mask).all(1, keepdim=True)
        z = self.encoder(fused, src_key_padding_mask=kpm) * mask.unsqueeze(-1).to(fused.dtype)
        return {"pred": self.head(z), "emb": z, "gates": gates}


@register_model("raav", kind="fusion", config=RAAVConfig,
                inputs=("heads/face", "heads/behavior", "heads/audio", "features/reliability"), tasks=("va", "expr"),
                optional=("features/reliability",))
class RAAV(FusionHead):
    """raav behind the head contract: windows in seconds, audio tokens masked by the shared trust rule."""

    name = "raav"

    @property
    def streams(self) -> list[str]:
        return list(self.cfg.visual)

    @property
    def windowing(self) -> SecondsWindowing:
        return SecondsWindowing(window_s=self.cfg.window_s, hop_s=self.cfg.hop_s, audio=self.cfg.audio,
                                audio_filter=AudioFilter(self.cfg.audio_trust, tuple(self.cfg.mask_audio_splits)))

    @property
    def gate_names(self) -> list[str]:
        return list(self.cfg.visual)

    def build_model(self, dims) -> RAAVModel:
        return RAAVModel(self.cfg)


def prior_weights(model: RAAVModel) -> list[float]:
    """Current prior share per visual stream (softmax of the log priors), for logs and reports."""
    return [float(x) for x in torch.softmax(model.log_prior.detach(), 0)]

