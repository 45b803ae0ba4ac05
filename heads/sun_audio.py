"""sun_audio: the SUN team's audio model over cached PDEM states (profile `sun2024`).

Published (ABAW 2024, `src/audio/`): PDEM's 1024-d output over a 4-s window -> a GRU (256 units, 2
layers) or 2 Transformer layers (32 and 16 heads) -> Conv1d(kernel 5, stride 3, dilation 2) ->
BatchNorm -> AdaptiveAvgPool1d(20) -> Linear -> 2 -> tanh: 20 outputs per 4-s window, one every
0.2 s (5 Hz). PDEM's last 2 or 4 blocks are trained with it.

Here the windows, bins and targets are the audio head's (`heads.audio_pooling`): 4-s windows every
2 s, cut into `bins` = 20 bins of 0.2 s on the label grid, each bin's target its mean valid label,
a frame's prediction the mean over the windows covering its bin; the same cross-modal filter picks
the training windows. The last blocks train from the cache as the audio head's WavLM layers do: the
store's `lower` states (`keep_lower_layers`) enter the top k blocks rebuilt from `backbone_dir`
(`SpeechTopLayers`, which reads wav2vec 2.0 checkpoints such as PDEM too). The window's rows run
through the model as one sequence; the adaptive pool gives the 20 outputs, one per bin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from heads.audio_pooling import (AudioPooling, AudioPoolingConfig, AudioTrainConfig, SpeechTopLayers,
                                 backbone_param_groups)
from heads.contract import TASK_OUTPUTS
from heads.losses import ccc_loss
from heads.registry import register_model

TEMPORAL = ("gru", "transformer")


@dataclass
class SunAudioTrainConfig(AudioTrainConfig):
    """The audio head's optimisation without its EMA (not in the SUN release)."""

    ema_decay: float = 0.0


@dataclass
class SunAudioConfig(AudioPoolingConfig):
    """Published defaults (module docstring). `temporal`: "gru" (hidden `gru_hidden`, `gru_layers`) or
    "transformer" (one layer per entry of `transformer_heads`); `conv_*` the Conv1d after it."""

    bins: int = 20                 # 0.2-s bins: 20 outputs per 4-s window (5 Hz)
    temporal: str = "gru"
    gru_hidden: int = 256
    gru_layers: int = 2
    transformer_heads: tuple[int, ...] = (32, 16)
    conv_kernel: int = 5
    conv_stride: int = 3
    conv_dilation: int = 2
    loss_weights: tuple[float, float] = (0.5, 0.5)
    mse_weight: float = 0.0
    filter_mode: str = "off"       # the SUN release filters no window by mouth or face
    finetune_top_k: int = 4        # published: the last 2 or 4 blocks
    train: SunAudioTrainConfig = field(default_factory=SunAudioTrainConfig)


class SunAudioModel(nn.Module):
    """(x [B, bins, R, D], mask [B, bins, R]) -> (pred [B, bins, C], emb [B, bins, H])."""

    def __init__(self, in_dim: int, cfg: SunAudioConfig):
        super().__init__()
        self.cfg = cfg
        self.top = SpeechTopLayers(cfg.backbone_dir, cfg.finetune_top_k) if cfg.finetune_top_k > 0 else None
        if cfg.temporal == "gru":
            self.gru = nn.GRU(in_dim, cfg.gru_hidden, cfg.gru_layers, batch_first=True,
                              dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0)
            width = cfg.gru_hidden
        else:
            self.encoder = nn.ModuleList(nn.TransformerEncoderLayer(in_dim, h, 4 * in_dim, cfg.dropout, batch_first=True)
                                         for h in cfg.transformer_heads)
            width = in_dim
        # the conv's output channels are `head_hidden` (the exported per-bin embedding; the release
        # does not say, 256 like the GRU)
        self.conv = nn.Conv1d(width, cfg.head_hidden, cfg.conv_kernel, stride=cfg.conv_stride,
                              dilation=cfg.conv_dilation)
        self.norm = nn.BatchNorm1d(cfg.head_hidden)
        self.pool = nn.AdaptiveAvgPool1d(cfg.bins)
        self.out = nn.Linear(cfg.head_hidden, TASK_OUTPUTS[cfg.task])
        self.reach = cfg.conv_dilation * (cfg.conv_kernel - 1) + 1  # shortest sequence the conv accepts

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, nb, r, d = x.shape
        h, m = x.reshape(b, nb * r, d), mask.reshape(b, nb * r)
        if self.top is not None:
            h = self.top(h, m)
        h = h * m.unsqueeze(-1).to(h.dtype)
        if self.cfg.temporal == "gru":
            h, _ = self.gru(h)
        else:
            kpm = ~m & ~(~m).all(1, keepdim=True)
            for layer in self.encoder:
                h = layer(h, src_key_padding_mask=kpm)
        h = h.transpose(1, 2)                                  # [B, H, T]
        if h.shape[-1] < self.reach:                           # a window shorter than the conv's reach
            h = nn.functional.pad(h, (0, self.reach - h.shape[-1]))
        emb = self.pool(self.norm(self.conv(h))).transpose(1, 2)   # [B, bins, H]
        y = self.out(emb)
        return (torch.tanh(y) if self.cfg.task == "va" else y), emb

    def param_groups(self, head_lr: float, backbone_lr: float) -> list[dict]:
        """Head and fine-tuned backbone blocks with their own learning rates (as the audio head)."""
        return backbone_param_groups(self, self.top, head_lr, backbone_lr)


@register_model("sun_audio", kind="head", config=SunAudioConfig,
                inputs=("features/sun_audio", "features/reliability"), tasks=("va",), weights=("backbone_dir",),
                optional=("features/reliability",))
class SunAudio(AudioPooling):
    """The SUN audio model behind the head contract: the audio head's windows and bins, its own model."""

    name = "sun_audio"
    store = "features/sun_audio"

    def check(self) -> None:
        super().check()
        if self.cfg.temporal not in TEMPORAL:
            raise ValueError(f"SunAudioConfig.temporal must be one of {', '.join(TEMPORAL)}, got {self.cfg.temporal!r}")

    def load(self, records, urls):
        from heads.data import load_head_videos

        return load_head_videos(records, urls[self.store], task=self.task,
                                reliability_url=urls.get("features/reliability"))

    def build_model(self, dims):
        return SunAudioModel(int(dims["in_dim"]), self.cfg)

    def loss(self):
        cfg = self.cfg

        def loss_fn(m: nn.Module, b: dict) -> torch.Tensor:
            pred, _ = m(b["x"], b["mask"])
            weight = b["yv"].float() * b["w"][:, None]
            return ccc_loss(pred, b["y"], weight, weights=cfg.loss_weights, mse_weight=cfg.mse_weight)
        return loss_fn
