"""sun_face: the SUN team's temporal model over the fine-tuned frame encoder's embeddings (profile `sun2024`).

Published (ABAW 2024, `UniModalTemporalModel_v1`): the per-frame embeddings resampled to 5 fps, windows
of W steps with stride W/2, 6 Transformer encoder layers whose head counts are 8, 8, 8, 8, 4, 4, then
Linear -> 2 -> tanh per step, trained with a CCC loss. W = 30 (6 s) is a guess: the released code
names its prepared data `..._test_30.pkl` and states no window length (README, "The sun2024
profile").

Here: the input is the `sun_face` store (written by the extractor that loads the crops-fine-tuned
encoder, README "Static fine-tuning"); missing faces take the nearest seen frame (as the face head);
step k of the 5 fps grid reads the frame nearest to k / 5 s; predictions of overlapping windows are
averaged per step and every frame takes the prediction of its nearest step, so the outputs lie on
the frame grid like every head's. Positions are added once, to the projected input (the release's
layers each add a positional encoding), and the layers are torch's post-LN encoder layers.
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
from heads.positional import sinusoidal_encoding
from heads.registry import register_model
from heads.train import TrainConfig
from heads.windows import frame_windows
from pipeline.labels import fill_nearest


@dataclass
class SunTemporalTrainConfig(TrainConfig):
    """Training of the published temporal model; only what differs from `TrainConfig` (the release
    states no schedule for it: the static stage's AdamW weight decay and patience are used)."""

    weight_decay: float = 1e-4
    early_stopping: int = 10
    progress: bool = False


@dataclass
class SunTemporalConfig:
    """Published defaults (module docstring); `fps` the resampled rate, `window`/`hop` in its steps."""

    task: str = "va"
    fps: float = 5.0
    window: int = 30               # a GUESS from the file name `..._test_30.pkl` (README)
    hop: int = 15
    d_model: int = 256
    layer_heads: tuple[int, ...] = (8, 8, 8, 8, 4, 4)
    ff: int = 512
    dropout: float = 0.1
    feature: str = "emb"
    loss: str = "per_window"       # CCC per window (the published VALoss scores each batch item's sequence)
    loss_weights: tuple[float, float] = (0.5, 0.5)
    mse_weight: float = 0.0
    infer_batch: int = 32
    train: SunTemporalTrainConfig = field(default_factory=SunTemporalTrainConfig)


class SunTemporalModel(nn.Module):
    """(x [B,T,in], pad [B,T]) -> (pred [B,T,C] (tanh for VA), emb [B,T,d]): input projection plus
    sinusoidal positions, one pre-built encoder layer per entry of `layer_heads`."""

    def __init__(self, in_dim: int, cfg: SunTemporalConfig):
        super().__init__()
        d = cfg.d_model
        self.va = cfg.task == "va"
        self.proj = nn.Linear(in_dim, d)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, h, cfg.ff, cfg.dropout, batch_first=True) for h in cfg.layer_heads)
        self.out = nn.Linear(d, TASK_OUTPUTS[cfg.task])
        self.register_buffer("pe", sinusoidal_encoding(max(cfg.window, 1), d), persistent=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        t = h.shape[1]
        h = h + (self.pe[:t] if t <= self.pe.shape[0] else sinusoidal_encoding(t, h.shape[-1]).to(h.device))
        kpm = pad if pad is not None and bool(pad.any()) else None
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=kpm)
        y = self.out(h)
        return (torch.tanh(y) if self.va else y), h


def step_frames(num_frames: int, fps: float, rate: float) -> np.ndarray:
    """The frame each step of the `rate` grid reads: the nearest frame to k / rate s ([K] int)."""
    if num_frames <= 0:
        return np.zeros(0, np.int64)
    duration = num_frames / fps
    k = np.arange(max(1, int(np.ceil(duration * rate - 1e-9))))
    return np.minimum(np.round(k / rate * fps).astype(np.int64), num_frames - 1)


def frame_steps(num_frames: int, fps: float, rate: float, num_steps: int) -> np.ndarray:
    """The step of the `rate` grid nearest to each frame ([F] int): how step outputs return to frames."""
    i = np.arange(num_frames)
    return np.minimum(np.round(i / fps * rate).astype(np.int64), max(num_steps - 1, 0))


def prepare_inputs(video: HeadVideo, cfg: SunTemporalConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [K, D] float16 on the 5 fps grid, present [K], step frames [K])."""
    x, present = frame_features(video, cfg.feature)
    x = fill_nearest(x, present)
    idx = step_frames(video.num_frames, video.fps, cfg.fps)
    return x[idx].astype(np.float16), present[idx], idx


@register_model("sun_face", kind="head", config=SunTemporalConfig, inputs=("features/sun_face",),
                tasks=("va",))
class SunTemporal(Head[SunTemporalConfig]):
    """The SUN temporal model behind the head contract: 5 fps windows of the sun_face store."""

    name = "sun_face"

    def load(self, records, urls):
        return load_head_videos(records, urls["features/sun_face"], task=self.task)

    def prepare(self, videos):
        return {v.video_id: prepare_inputs(v, self.cfg) for v in videos}

    def input_width(self, inp) -> int | None:
        x, present, _ = inp
        return int(x.shape[1]) if present.any() else None

    def dims(self, inputs):
        for x, present, _ in inputs.values():
            if present.any():
                return {"in_dim": int(x.shape[1])}
        raise ValueError(f"sun_face head: no video has '{self.cfg.feature}' rows in the sun_face store -- run its "
                         "extraction stage (after train_static_sun_face)")

    def build_bank(self, videos, inputs, dims):
        bank = SequenceBank(self.cfg.window)
        for v in videos:
            if v.split != "train" or v.labels is None:
                continue
            x, present, idx = inputs[v.video_id]
            if not present.any():
                continue
            y, yv = frame_targets(v, self.task)
            y, yv = y[idx], yv[idx]
            wins = [(s, e) for s, e in frame_windows(len(idx), self.cfg.window, self.cfg.hop) if yv[s:e].any()]
            if wins:
                bank.add_video({"x": x, "y": y, "yv": yv}, wins)
        bank.finalize()
        return bank, {"train_windows": len(bank)}

    def targets(self, video):
        return frame_targets(video, self.task)

    def build_model(self, dims):
        return SunTemporalModel(int(dims["in_dim"]), self.cfg)

    def check(self) -> None:
        super().check()
        if self.cfg.loss not in ("per_window", "pooled"):
            raise ValueError(f"SunTemporalConfig.loss must be 'per_window' or 'pooled', got {self.cfg.loss!r}")
        if any(self.cfg.d_model % h for h in self.cfg.layer_heads):
            raise ValueError(f"SunTemporalConfig: d_model {self.cfg.d_model} must divide by every head count "
                             f"{list(self.cfg.layer_heads)}")

    def loss(self):
        return window_task_loss(self.task, self.cfg.loss_weights, self.cfg.mse_weight, self.class_weight, self.cfg.loss)

    def predict(self, model, videos, inputs, dims, device):
        model.eval()
        out = {}
        c = TASK_OUTPUTS[self.task]
        for v in videos:
            x, present, idx = inputs[v.video_id]
            f = v.num_frames
            wins = frame_windows(len(idx), self.cfg.window, self.cfg.hop)
            if not wins or not present.any():
                out[v.video_id] = HeadOutput(np.zeros((f, c), np.float32), np.zeros((f, self.cfg.d_model), np.float32),
                                             np.zeros(f, bool))
                continue
            pred, emb = predict_windows(model, x, wins, self.cfg.window, self.cfg.infer_batch, device, len(idx))
            back = frame_steps(f, v.fps, self.cfg.fps, len(idx))
            p = pred[back]
            out[v.video_id] = HeadOutput(p.astype(np.float32), emb[back].astype(np.float32), np.isfinite(p).all(1))
        return out
