"""Behavior head: Mamba over sequences of per-segment VLM features (the published behaviour head, `src_behavior_model/`).

Published: Linear(2560->256)+LN+Dropout 0.2, 12 custom Mamba blocks (d_state 8, causal conv kernel
5, post-LN), head 256->512->LN->GELU->Dropout->2; sequences of 16 segments (4-s windows, 2-s hop)
with stride 8; AdamW 3e-4 / wd 1e-3; early stopping 12; model selection on FRAME-level CCC after
expanding segment predictions to frames (average of every covering segment).

Deviations (documented): we use transformers' `MambaMixer` (standard Mamba maths; the published
block uses a non-standard discretisation, no expansion and a post-LN D-scaled residual; README,
"Behavior Mamba") with PRE-norm residual blocks, and conv kernel 4 (the MambaMixer default; the
published custom block uses 5, which the paper profile sets). `block: published` runs the published
block instead (heads.mamba_published; the paper profile's choice).
Exported embedding: the 256-d final-normed state before the head (not the 512 post-GELU), so
every head exports 256-d tokens (every head output store holds emb [F, 256]).

CPU scan choice, measured 2026-11-25 on the shared 2-core box, 1 thread, 12 layers, d 256,
d_state 8, batch 8 x 16 segments, forward+backward: mixers alone plain PyTorch scan 0.68 s vs
mambapy pscan 0.43 s; the whole model (`python -m heads.behavior_temporal`, load ~4) 1.43 s vs 1.06 s
-> `use_mambapy=True` when mambapy is importable (on GPU with mamba-ssm installed the CUDA kernels
are used instead, whatever this flag says).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from heads.contract import TASK_OUTPUTS, Head
from heads.data import HeadVideo, SequenceBank, frame_targets, load_head_videos, predict_windows
from heads.losses import window_task_loss
from heads.outputs import HeadOutput
from heads.train import TrainConfig
from heads.windows import WINDOW_TAILS, frame_windows, segments_to_frames
from heads.registry import register_model
from pipeline.labels import fill_nearest



@dataclass
class BehaviorTrainConfig(TrainConfig):
    """Published behavior-head training (`src_behavior_model/src/trainers/transformer_trainer.py`):
    AdamW 3e-4 / wd 1e-3, batch 8, early stopping 12, no learning-rate schedule and no gradient
    clipping (its epoch loop is zero_grad, backward, step). Epochs are not published: 100."""

    lr: float = 3e-4
    weight_decay: float = 1e-3
    early_stopping: int = 12
    grad_clip: float = 0.0
    scheduler: str = "none"


@dataclass
class BehaviorTemporalConfig:
    """Published defaults (`src_behavior_model/configs/text_va.toml`) except conv_kernel (see module docstring)."""

    task: str = "va"
    segments: int = 16             # sequence length in segments
    stride: int = 8
    tail: str = "ragged"           # last sequence: "ragged" (cut at the end, published) | "aligned" (full, ending at the end)
    d_model: int = 256
    d_state: int = 8
    layers: int = 12
    conv_kernel: int = 4           # MambaMixer default; published custom block: 5
    expand: int = 2                # MambaMixer only (the published block has no expansion)
    block: str = "mixer"           # "mixer": transformers' MambaMixer, pre-norm | "published" (heads.mamba_published)
    dropout: float = 0.2
    head_hidden: int = 512
    feature: str = "emb"           # store array: last-token state ("emb") or "emb_mean"
    use_mambapy: bool = True       # CPU parallel scan when mambapy is importable
    loss_weights: tuple[float, float] = (0.5, 0.5)
    mse_weight: float = 0.0
    infer_batch: int = 32
    train: BehaviorTrainConfig = field(default_factory=BehaviorTrainConfig)


class MambaBlock(nn.Module):
    """Pre-norm residual block around transformers' MambaMixer."""

    def __init__(self, config, layer_idx: int, dropout: float):
        super().__init__()
        from transformers.models.mamba.modeling_mamba import MambaMixer

        self.norm = nn.LayerNorm(config.hidden_size)
        self.mixer = MambaMixer(config, layer_idx=layer_idx)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return x + self.drop(self.mixer(self.norm(x), attention_mask=mask))


class BehaviorTemporalModel(nn.Module):
    """(x [B,S,in], pad [B,S]) -> (pred [B,S,C], emb [B,S,d_model])."""

    def __init__(self, in_dim: int, cfg: BehaviorTemporalConfig):
        super().__init__()
        from transformers import MambaConfig

        if not torch.cuda.is_available():
            # mamba-ssm / causal-conv1d build only against CUDA: on a CPU machine transformers' advice to
            # install them (once per kernel, at the first forward) reads like a fault and cannot be followed
            logging.getLogger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)
        d = cfg.d_model
        self.published = cfg.block == "published"
        self.proj = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d), nn.Dropout(cfg.dropout))
        if self.published:  # post-LN blocks of their own; no final norm before the head (as published)
            from heads.mamba_published import PublishedMambaBlock

            self.blocks = nn.ModuleList(PublishedMambaBlock(d, cfg.d_state, cfg.conv_kernel, cfg.dropout)
                                        for _ in range(cfg.layers))
            self.norm = nn.Identity()
        else:
            mcfg = MambaConfig(hidden_size=d, state_size=cfg.d_state, num_hidden_layers=cfg.layers,
                               conv_kernel=cfg.conv_kernel, expand=cfg.expand,
                               use_mambapy=cfg.use_mambapy and importlib.util.find_spec("mambapy") is not None)
            self.blocks = nn.ModuleList(MambaBlock(mcfg, i, cfg.dropout) for i in range(cfg.layers))
            self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, cfg.head_hidden), nn.LayerNorm(cfg.head_hidden), nn.GELU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.head_hidden, TASK_OUTPUTS[cfg.task]))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        if self.published:
            valid = None if pad is None else ~pad
            h = h if valid is None else h * valid.unsqueeze(-1).to(h.dtype)
            for block in self.blocks:
                h = block(h, valid)
            return self.head(h), h
        mask = None if pad is None else (~pad).long()
        for block in self.blocks:
            h = block(h, mask)
        emb = self.norm(h)
        return self.head(emb), emb


def segment_frames(video: HeadVideo) -> tuple[np.ndarray, np.ndarray]:
    """[frame_start, frame_end) per segment on the label grid (from the store, else from t0/t1)."""
    f = video.features
    if "frame_start" in f and "frame_end" in f:
        return np.asarray(f["frame_start"], np.int64), np.asarray(f["frame_end"], np.int64)
    return (np.round(np.asarray(f["t0"], np.float64) * video.fps).astype(np.int64),
            np.round(np.asarray(f["t1"], np.float64) * video.fps).astype(np.int64))


def segment_targets(y: np.ndarray, yv: np.ndarray, fs: np.ndarray, fe: np.ndarray, task: str):
    """Segment target = mean of its valid frame labels (VA) or their majority class (EXPR)."""
    n = len(fs)
    valid = np.zeros(n, bool)
    if task == "va":
        out = np.zeros((n, 2), np.float32)
        cy = np.concatenate([np.zeros((1, 2)), np.cumsum(np.where(yv[:, None], y, 0.0), 0)])
        cv = np.concatenate([[0], np.cumsum(yv)])
        s, e = np.clip(fs, 0, len(yv)), np.clip(fe, 0, len(yv))
        cnt = cv[e] - cv[s]
        valid = cnt > 0
        out[valid] = ((cy[e] - cy[s])[valid] / cnt[valid, None]).astype(np.float32)
        return out, valid
    out = np.full(n, -1, np.int64)
    for i, (s, e) in enumerate(zip(fs, fe)):
        lab = y[max(s, 0):max(e, 0)][yv[max(s, 0):max(e, 0)]]
        if len(lab):
            out[i], valid[i] = np.bincount(lab, minlength=8).argmax(), True
    return out, valid


def prepare_inputs(video: HeadVideo, cfg: BehaviorTemporalConfig) -> np.ndarray | None:
    """Segment features [S, D] with invalid segments filled by the nearest valid one; None if none."""
    f = video.features
    if not f or cfg.feature not in f or len(f[cfg.feature]) == 0:
        return None
    x = np.asarray(f[cfg.feature], np.float32)
    ok = np.asarray(f.get("valid", np.ones(len(x), bool)), bool) & np.isfinite(x).all(1)
    if not ok.any():
        return None
    return fill_nearest(np.nan_to_num(x), ok)


def build_bank(videos: list[HeadVideo], cfg: BehaviorTemporalConfig, inputs: dict) -> SequenceBank:
    bank = SequenceBank(cfg.segments)
    for v in videos:
        x = inputs[v.video_id]
        if v.split != "train" or v.labels is None or x is None:
            continue
        y, yv = frame_targets(v, cfg.task)
        fs, fe = segment_frames(v)
        sy, sv = segment_targets(y, yv, fs, fe, cfg.task)
        wins = [(s, e) for s, e in frame_windows(len(x), cfg.segments, cfg.stride, cfg.tail) if sv[s:e].any()]
        if wins:
            bank.add_video({"x": x, "y": sy, "yv": sv}, wins)
    return bank.finalize()


def predict_video(model, video: HeadVideo, x: np.ndarray | None, cfg: BehaviorTemporalConfig, device) -> HeadOutput:
    """Segment outputs by overlap-add of sequences, then expanded to frames (mean of covering segments)."""
    f = video.num_frames
    empty = HeadOutput(np.zeros((f, TASK_OUTPUTS[cfg.task]), np.float32), np.zeros((f, cfg.d_model), np.float32),
                       np.zeros(f, bool))
    if x is None:
        return empty
    wins = frame_windows(len(x), cfg.segments, cfg.stride, cfg.tail)
    seg_pred, seg_emb = predict_windows(model, x, wins, cfg.segments, cfg.infer_batch, device, len(x))
    fs, fe = segment_frames(video)
    pred, covered = segments_to_frames(seg_pred, fs, fe, f)
    emb, _ = segments_to_frames(seg_emb, fs, fe, f)
    return HeadOutput(pred, emb, covered)


@register_model("behavior", kind="head", config=BehaviorTemporalConfig, inputs=("features/behavior",),
                tasks=("va", "expr"))
class BehaviorTemporal(Head[BehaviorTemporalConfig]):
    """The behavior head behind the contract (heads.contract): segment sequences of the behavior store.

    Trained on segment targets, selected on FRAME-level validation CCC/F1 (segments expanded to frames).
    """

    name = "behavior"

    def check(self) -> None:
        super().check()
        if self.cfg.block not in ("mixer", "published"):
            raise ValueError(f"BehaviorTemporalConfig.block must be 'mixer' or 'published', got {self.cfg.block!r}")
        if self.cfg.tail not in WINDOW_TAILS:
            raise ValueError(f"BehaviorTemporalConfig.tail must be one of {', '.join(WINDOW_TAILS)}, got {self.cfg.tail!r}")

    def load(self, records, urls):
        return load_head_videos(records, urls["features/behavior"], task=self.task)

    def prepare(self, videos):
        return {v.video_id: prepare_inputs(v, self.cfg) for v in videos}

    def input_width(self, inp) -> int | None:
        return None if inp is None else int(inp.shape[1])

    def dims(self, inputs):
        widths = [x.shape[1] for x in inputs.values() if x is not None]
        if not widths:
            raise ValueError(f"behavior head: no video has a '{self.cfg.feature}' array with a valid segment -- "
                             "run the behavior extraction stage (or check BehaviorTemporalConfig.feature)")
        return {"in_dim": int(widths[0])}

    def build_bank(self, videos, inputs, dims):
        bank = build_bank(videos, self.cfg, inputs)
        return bank, {"train_sequences": len(bank)}

    def targets(self, video):
        return frame_targets(video, self.task)

    def build_model(self, dims):
        return BehaviorTemporalModel(int(dims["in_dim"]), self.cfg)

    def loss(self):
        """Masked CCC (VA) or cross-entropy (EXPR) over a batch of segment sequences."""
        return window_task_loss(self.cfg.task, self.cfg.loss_weights, self.cfg.mse_weight, self.class_weight)

    def predict(self, model, videos, inputs, dims, device):
        model.eval()
        return {v.video_id: predict_video(model, v, inputs[v.video_id], self.cfg, device) for v in videos}


def measure_scan(batch: int = 8, segments: int = 16, d_model: int = 256, layers: int = 12, repeats: int = 3) -> dict:
    """Time forward+backward of the Mamba stack with the plain PyTorch scan vs mambapy (CPU choice).

    `python -m heads.behavior_temporal` prints it; the figures in the module docstring came from here.
    """
    import time

    out = {}
    for use in (False, True):
        cfg = BehaviorTemporalConfig(d_model=d_model, layers=layers, use_mambapy=use, dropout=0.0)
        model = BehaviorTemporalModel(d_model, cfg)
        x = torch.randn(batch, segments, d_model)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            pred, _ = model(x)
            pred.sum().backward()
            best = min(best, time.perf_counter() - t)
        out["mambapy" if use else "plain"] = best
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    print({k: f"{v:.3f} s" for k, v in measure_scan().items()}, "(forward+backward, batch 8 x 16 segments, 12 layers)")

