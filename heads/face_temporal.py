"""Face head: a Transformer over windows of per-frame face embeddings (the published face head, `src_visual_dynamic_model/`).

Published model (SMIL-SPCRAS/CVPRW-26 src_visual_dynamic_model/model.py): Linear(in->256)+LN+
Dropout; 5 post-LN layers whose sinusoidal positional encoding is added to Q, K and V in EVERY
layer, each sum with its own dropout (0.1), the residual taken around the encoded query
(`LN(attn + drop(q + PE))`), FF 256->256 GELU; an outer residual x = x + layer(x); head
Linear(256,256)->LN->GELU->Dropout->Linear(256, 2) with no tanh. Input: the 256-d embedding only.
Windows of 400 frames, hop 150, tail aligned to the end; overlapping window predictions averaged
per frame. Missing faces: nearest cached frame. Training without gradient clipping or AMP.

`block: published` (default) is that layer (`heads.positional.PositionalAttentionLayer`).
`block: affcache` is this project's layer, `LN(x + drop(attn(x + PE)))`: the residual around the
un-encoded input, no dropout on the positional sums; with `face_flag: true` a 0/1 face-present
channel is appended to the input so the model can tell a copied frame from a seen one. The demo
runs that block with the channel (params.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from heads.contract import TASK_OUTPUTS, Head
from heads.data import HeadVideo, SequenceBank, frame_features, frame_targets, load_head_videos, predict_windows
from heads.losses import window_task_loss
from heads.outputs import HeadOutput
from heads.positional import PositionalAttentionLayer, sinusoidal_encoding
from heads.train import TrainConfig
from heads.windows import frame_windows
from heads.registry import register_model
from pipeline.labels import fill_nearest



@dataclass
class FaceTrainConfig(TrainConfig):
    """Published face-head training (`config_best.toml`): AdamW 1e-4 / wd 0.01, batch 8, <= 100 epochs, plateau x0.1
    patience 5, early stopping 15, seed 42 (`TrainConfig`'s defaults), no gradient clipping and no
    AMP (`use_amp = false`)."""

    grad_clip: float = 0.0
    bf16: bool = False


@dataclass
class FaceTemporalConfig:
    """Published defaults (`src_visual_dynamic_model/`). `feature` names the store array holding the frame embeddings."""

    task: str = "va"               # "va" | "expr"
    window: int = 400
    hop: int = 150
    d_model: int = 256
    layers: int = 5
    heads: int = 8
    ff: int = 256
    dropout: float = 0.1
    head_dim: int = 256            # penultimate (exported) embedding size
    feature: str = "emb"
    block: str = "published"       # "published": PE on Q, K, V with dropout, residual on the encoded query | "affcache"
    pe_dropout: float = 0.1        # dropout of each positional sum (published: fixed 0.1, whatever `dropout` is)
    face_flag: bool = False        # append a face-present channel to the input (published: 256-d input only)
    loss: str = "per_window"       # CCC per window, averaged (published) | "pooled" (all frames of a batch)
    loss_weights: tuple[float, float] = (0.5, 0.5)
    mse_weight: float = 0.0
    infer_batch: int = 16
    train: FaceTrainConfig = field(default_factory=FaceTrainConfig)


BLOCKS = ("published", "affcache")


class PosAttentionLayer(nn.Module):
    """The `affcache` block: post-LN, `LN(x + drop(attn(x + PE)))`, PE added to Q, K and V without
    dropout, the residual around the un-encoded input."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pe: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        qkv = x + pe
        a, _ = self.attn(qkv, qkv, qkv, key_padding_mask=pad, need_weights=False)
        x = self.ln1(x + self.drop(a))
        return self.ln2(x + self.drop(self.ff(x)))


class FaceTemporalModel(nn.Module):
    """(x [B,T,in], pad [B,T]) -> (pred [B,T,C], emb [B,T,head_dim] post-GELU penultimate)."""

    def __init__(self, in_dim: int, cfg: FaceTemporalConfig):
        super().__init__()
        d = cfg.d_model
        self.proj = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d), nn.Dropout(cfg.dropout))
        self.published = cfg.block == "published"
        if self.published:
            self.layers = nn.ModuleList(PositionalAttentionLayer(d, cfg.heads, cfg.dropout, ff=cfg.ff, pe_dropout=cfg.pe_dropout)
                                        for _ in range(cfg.layers))
        else:
            self.layers = nn.ModuleList(PosAttentionLayer(d, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers))
        self.fc = nn.Linear(d, cfg.head_dim)
        self.ln = nn.LayerNorm(cfg.head_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.head_dim, TASK_OUTPUTS[cfg.task])
        self.register_buffer("pe", sinusoidal_encoding(max(cfg.window, 1), d), persistent=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        t = h.shape[1]
        pe = self.pe[:t] if t <= self.pe.shape[0] else sinusoidal_encoding(t, h.shape[-1]).to(h.device)
        if pad is not None and (not bool(pad.any()) or bool(pad.all(1).any())):
            # no padding: the mask-free attention path is ~1.5x faster on CPU (8 vs 13 s per
            # published-size step measured here); a fully padded row cannot occur with our windows
            pad = None
        for layer in self.layers:
            h = h + (layer(h, h, pad, pe) if self.published else layer(h, pe, pad))
        emb = self.act(self.ln(self.fc(h)))
        return self.out(self.drop(emb)), emb


def prepare_inputs(video: HeadVideo, cfg: FaceTemporalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame model input [F, D(+1)] float16 (missing faces filled with the nearest face) and face mask [F]."""
    x, present = frame_features(video, cfg.feature)
    x = fill_nearest(x, present)
    if cfg.face_flag:
        x = np.concatenate([x, present[:, None].astype(np.float32)], 1)
    return x.astype(np.float16), present  # float16: the whole cache stays in RAM at Aff-Wild2 scale


def build_bank(videos: list[HeadVideo], cfg: FaceTemporalConfig, inputs: dict) -> SequenceBank:
    """Training windows (with at least one valid label) of every train video, in one tensor bank."""
    bank = SequenceBank(cfg.window)
    for v in videos:
        if v.split != "train" or v.labels is None:
            continue
        x, present = inputs[v.video_id]
        if not present.any():
            continue
        y, yv = frame_targets(v, cfg.task)
        wins = [(s, e) for s, e in frame_windows(v.num_frames, cfg.window, cfg.hop) if yv[s:e].any()]
        if wins:
            bank.add_video({"x": x, "y": y, "yv": yv}, wins)
    return bank.finalize()


def predict_video(model: nn.Module, video: HeadVideo, x: np.ndarray, present: np.ndarray,
                  cfg: FaceTemporalConfig, device: torch.device) -> HeadOutput:
    """Per-frame prediction + embedding by overlap-add of windows; invalid when the video has no face."""
    wins = frame_windows(video.num_frames, cfg.window, cfg.hop)
    if not wins or not present.any():
        return HeadOutput(np.zeros((video.num_frames, TASK_OUTPUTS[cfg.task]), np.float32),
                          np.zeros((video.num_frames, cfg.head_dim), np.float32), np.zeros(video.num_frames, bool))
    pred, emb = predict_windows(model, x, wins, cfg.window, cfg.infer_batch, device, video.num_frames)
    return HeadOutput(pred, emb, np.isfinite(pred).all(1))


@register_model("face", kind="head", config=FaceTemporalConfig, inputs=("features/face",),
                tasks=("va", "expr"))
class FaceTemporal(Head[FaceTemporalConfig]):
    """The face head behind the contract (heads.contract): frame windows of the face store."""

    name = "face"

    def load(self, records, urls):
        return load_head_videos(records, urls["features/face"], task=self.task)

    def prepare(self, videos):
        return {v.video_id: prepare_inputs(v, self.cfg) for v in videos}

    def input_width(self, inp) -> int | None:
        x, present = inp
        return int(x.shape[1]) if present.any() else None

    def dims(self, inputs):
        for x, present in inputs.values():
            if x.shape[1] > int(self.cfg.face_flag):  # a video without rows has only the face channel
                return {"in_dim": int(x.shape[1])}
        raise ValueError(f"face head: no video has a '{self.cfg.feature}' array in its store group -- "
                         "run the face extraction stage (or check FaceTemporalConfig.feature)")

    def build_bank(self, videos, inputs, dims):
        bank = build_bank(videos, self.cfg, inputs)
        return bank, {"train_windows": len(bank)}

    def targets(self, video):
        return frame_targets(video, self.task)

    def build_model(self, dims):
        return FaceTemporalModel(int(dims["in_dim"]), self.cfg)

    def check(self) -> None:
        super().check()
        if self.cfg.loss not in ("per_window", "pooled"):
            raise ValueError(f"FaceTemporalConfig.loss must be 'per_window' or 'pooled', got {self.cfg.loss!r}")
        if self.cfg.block not in BLOCKS:
            raise ValueError(f"FaceTemporalConfig.block must be one of {', '.join(BLOCKS)}, got {self.cfg.block!r}")

    def loss(self):
        """Masked CCC (VA) or cross-entropy (EXPR) over a batch of windows; padding excluded.

        `per_window` (published) scores each window on its own and averages; `pooled` computes CCC
        over all valid frames of the batch together, which is steadier when windows hold only a
        few valid frames (short demo windows), whose CCC alone is noise.
        """
        return window_task_loss(self.cfg.task, self.cfg.loss_weights, self.cfg.mse_weight, self.class_weight,
                                self.cfg.loss)

    def predict(self, model, videos, inputs, dims, device):
        model.eval()
        return {v.video_id: predict_video(model, v, *inputs[v.video_id], self.cfg, device) for v in videos}
