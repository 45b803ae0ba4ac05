"""Audio head: attention-statistics pooling of cached speech-model states (the published audio head, `src_audio_and_fusion/src/audio/`).

Published (SMIL-SPCRAS/CVPRW-26, WavLM s2s model): 4-s windows, each split into 4 equal 1-s
sub-windows; per sub-window score = w2^T tanh(W1 h) (W1: D->128, dropout 0.2), alpha = masked
softmax over time, mu = sum alpha h, sigma = sqrt(sum alpha (h-mu)^2 + 1e-6); token [mu; sigma]
-> LN -> Dropout -> Linear(2D,256) -> GELU (the exported 256-d token) -> Dropout -> Linear(256,2).
Target per 1-s bin = the bin's mean valid label. Loss CCC v0.7/a0.3 + 0.1 MSE; AdamW head 2e-4 /
wd 0.01, backbone 5e-6 for the fine-tuned top-k WavLM layers; EMA 0.998.

Window hop: 2 s (half a window). The published audio code cuts 4-s chunks with a 2-s shift (the
same chunking as the behavior segments), so every 1-s bin is seen by two windows and the
per-frame prediction is the mean of the two.

Two store layouts. A track grid (audio modes `long` / `per_clip`): one row sequence per video, cut
here into 1-s bins on the label grid and windows of 4 bins every 2 (the tail window aligned to the
end). Published windows (audio `mode: windows`, the paper profile): the store keeps each 4-s
window's own rows (`clip`, `clip_t0`, `clip_t1`), so a sample is exactly one window, the last one
shorter and padded, split into 4 equal parts of its padded length as the published model pools
them (`wavlm_s2s_model.py` `_pool_chunks`); bin i of a window covers [start + i, start + i + 1) s
of the label grid, cut at the window's end (a bin past it has no label, as published); a frame's
prediction is the mean over the bins of every window covering it.

Cross-modal filter (training windows only; rules and thresholds are config fields): a window is
used when mouth open >= max(0.25 x window, 1 s), face coverage >= 0.8, >= 2 of its 4 bins are
labelled and (optional, off by default since it is not published) speech fraction >= a threshold.
"drop" removes a failing window, "weight" keeps it with a small loss weight. A rule whose signal is
missing (no reliability store) is not applied, and the returned stats say so.

Fine-tuning from cache (`finetune_top_k` > 0): the audio store's `lower` array holds the states
that enter the top k encoder layers; we rebuild exactly those layers (WavLM) from the checkpoint
dir and train them with the backbone learning rate. WavLM's relative position bias is computed by
layer 0 only and shared by all layers, so layer 0's (frozen) attention module is kept for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from heads.contract import TASK_OUTPUTS, Head
from heads.data import HeadVideo, frame_targets, load_head_videos, reliability_on_grid
from heads.losses import ccc_loss, weighted_cross_entropy
from heads.outputs import HeadOutput
from heads.train import TrainConfig
from heads.windows import AudioTrustRule, frame_windows, overlap_add, segments_to_frames, span_targets
from heads.registry import register_model



@dataclass
class AudioTrainConfig(TrainConfig):
    """Published audio-head training (`cfg_test_w_audio.yaml`): AdamW head lr 2e-4 / wd 0.01,
    clip 1.0, AMP, batch 8, 50 epochs, early stopping 6, EMA 0.998 (backbone lr: AudioPoolingConfig);
    plateau x0.5 patience 2, threshold 5e-4, floor 1e-7, on the head's param group only
    (`target_group_names: ["head"]`: the fine-tuned backbone layers keep their rate)."""

    epochs: int = 50
    lr: float = 2e-4
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_threshold: float = 5e-4
    plateau_min_lr: float = 1e-7
    plateau_groups: list[str] | None = field(default_factory=lambda: ["head"])
    early_stopping: int = 6
    ema_decay: float = 0.998


@dataclass
class AudioPoolingConfig:
    """Published defaults (`wavlm_s2s_model.py`); filter rules as in the published cross-modal filter."""

    task: str = "va"
    window_s: float = 4.0
    hop_s: float = 2.0
    bins: int = 4                  # sub-windows per window (1-s bins)
    attn_dim: int = 128
    dropout: float = 0.2
    head_hidden: int = 256         # exported token size
    feature: str = "emb"
    loss_weights: tuple[float, float] = (0.7, 0.3)
    mse_weight: float = 0.1
    infer_batch: int = 32
    # cross-modal filter
    filter_mode: str = "drop"      # "drop" | "weight" | "off"
    filter_weight: float = 0.1     # loss weight of a distrusted window in "weight" mode
    min_labelled_bins: int = 2
    audio_trust: AudioTrustRule = field(default_factory=AudioTrustRule)  # the shared trust rule
    # fine-tuning the top k speech layers from cached `lower` states
    finetune_top_k: int = 0
    backbone_dir: str | None = None    # HF checkpoint dir (save_pretrained) of the speech model
    backbone_lr: float = 5e-6
    lower_feature: str = "lower"
    train: AudioTrainConfig = field(default_factory=AudioTrainConfig)

    @property
    def bin_s(self) -> float:
        return self.window_s / self.bins


# ----------------------------------------------------------------------------- model

class AttentiveStatsPool(nn.Module):
    """[N, R, D] states + mask [N, R] -> [N, 2D] attention-weighted mean and std (as published, exactly)."""

    def __init__(self, dim: int, attn_dim: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(dim, attn_dim)
        self.w2 = nn.Linear(attn_dim, 1, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        score = self.w2(self.drop(torch.tanh(self.w1(h)))).squeeze(-1)
        score = score.masked_fill(~mask, float("-inf"))
        score = torch.where(mask.any(-1, keepdim=True), score, torch.zeros_like(score))  # empty bin: no NaN
        a = torch.softmax(score.float(), -1).to(h.dtype) * mask
        mu = (a.unsqueeze(-1) * h).sum(-2)
        sigma = torch.sqrt((a.unsqueeze(-1) * (h - mu.unsqueeze(-2)) ** 2).sum(-2) + 1e-6)
        return torch.cat([mu, sigma], -1)


class SpeechTopLayers(nn.Module):
    """The top k encoder layers of a WavLM checkpoint, fed with cached `lower` states."""

    def __init__(self, checkpoint_dir: str, k: int):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if not checkpoint_dir or not Path(checkpoint_dir).exists():
            raise ValueError(f"AudioPoolingConfig.backbone_dir={checkpoint_dir!r}: checkpoint directory not found; "
                             "point it at the speech model's save_pretrained folder (the one the audio cache used)")
        config = AutoConfig.from_pretrained(checkpoint_dir)
        if config.model_type not in ("wavlm", "wav2vec2"):
            raise ValueError(f"{checkpoint_dir}: model_type {config.model_type!r} -- top-k fine-tuning from cache "
                             "supports WavLM and wav2vec 2.0 checkpoints (PDEM is one); set finetune_top_k: 0 for "
                             "other speech models")
        self.kind, self.config = config.model_type, config
        full = AutoModel.from_pretrained(checkpoint_dir)
        layers = full.encoder.layers
        n = len(layers)
        if not 0 < k <= n:
            raise ValueError(f"finetune_top_k={k} but {checkpoint_dir} has {n} encoder layers")
        self.first = n - k
        self.layers = nn.ModuleList(layers[self.first:])
        # WavLM's relative position bias comes from layer 0; wav2vec 2.0 has none (its positions are a
        # convolution before layer 0, already inside the cached states)
        self.bias_source = layers[0].attention if self.first > 0 and self.kind == "wavlm" else None
        if self.bias_source is not None:
            for p in self.bias_source.parameters():
                p.requires_grad_(False)
        self.final_norm = full.encoder.layer_norm if config.do_stable_layer_norm else nn.Identity()
        self.num_heads = config.num_attention_heads

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        h = h * mask.unsqueeze(-1).to(h.dtype)
        if self.kind == "wav2vec2":
            from transformers.masking_utils import create_bidirectional_mask

            am4 = create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=mask.long())
            for layer in self.layers:
                out = layer(h, attention_mask=am4)
                h = out[0] if isinstance(out, tuple) else out
            return self.final_norm(h)
        bias = None
        if self.bias_source is not None:
            bias = self.bias_source.compute_bias(t, t).unsqueeze(0).repeat(b, 1, 1, 1).view(b * self.num_heads, t, t)
        am = mask.long()
        for layer in self.layers:
            h, bias = layer(h, attention_mask=am, position_bias=bias)
        return self.final_norm(h)


class AudioPoolingModel(nn.Module):
    """(x [B, bins, R, D], mask [B, bins, R]) -> (pred [B, bins, C], emb [B, bins, head_hidden])."""

    def __init__(self, in_dim: int, cfg: AudioPoolingConfig):
        super().__init__()
        self.top = SpeechTopLayers(cfg.backbone_dir, cfg.finetune_top_k) if cfg.finetune_top_k > 0 else None
        self.pool = AttentiveStatsPool(in_dim, cfg.attn_dim, cfg.dropout)
        self.pre = nn.Sequential(nn.LayerNorm(2 * in_dim), nn.Dropout(cfg.dropout),
                                 nn.Linear(2 * in_dim, cfg.head_hidden), nn.GELU())
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.head_hidden, TASK_OUTPUTS[cfg.task])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, nb, r, d = x.shape
        if self.top is not None:  # the top layers see the whole window as one sequence
            x = self.top(x.reshape(b, nb * r, d), mask.reshape(b, nb * r)).reshape(b, nb, r, -1)
        tok = self.pool(x.reshape(b * nb, r, -1), mask.reshape(b * nb, r))
        emb = self.pre(tok).reshape(b, nb, -1)
        return self.out(self.drop(emb)), emb

    def param_groups(self, head_lr: float, backbone_lr: float) -> list[dict]:
        """Head and fine-tuned backbone layers with their own learning rates (published 2e-4 / 5e-6)."""
        return backbone_param_groups(self, self.top, head_lr, backbone_lr)


def backbone_param_groups(model: nn.Module, top: nn.Module | None, head_lr: float, backbone_lr: float) -> list[dict]:
    """The optimizer groups of a model over speech-encoder states: the trainable backbone blocks
    (`top`, a SpeechTopLayers or None) at `backbone_lr`, everything else trainable at `head_lr`."""
    backbone = [p for p in top.parameters() if p.requires_grad] if top is not None else []
    ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return ([{"params": head, "lr": head_lr, "name": "head"}]
            + ([{"params": backbone, "lr": backbone_lr, "name": "backbone"}] if backbone else []))


# ----------------------------------------------------------------------------- data

@dataclass
class AudioVideoData:
    """One video's audio rows and its 1-s bin layout on the label grid.

    Track grid: `frame_bin` [F] maps every label frame to its one bin; windows are cut from the
    bins. Published windows (`windows` set): each window owns `bins` consecutive bins; `bin_frames`
    ([NB] start, [NB] end) are the label frames each bin covers and `window_frames` the frames of
    each window for the cross-modal filter (`make_audio_windows.py`: [round(s fps), round(e fps))).
    """

    x: np.ndarray | None        # [M, D] rows (emb or lower), None if the video has no audio
    bin_start: np.ndarray       # [NB] first row of each bin
    bin_count: np.ndarray       # [NB] rows in each bin
    frame_bin: np.ndarray | None = None  # [F] bin of each label frame (track grid)
    windows: list[tuple[int, int]] | None = None     # published windows: [start, end) bins of each
    bin_frames: tuple[np.ndarray, np.ndarray] | None = None
    window_frames: list[tuple[int, int]] | None = None
    window_seconds: np.ndarray | None = None         # [W] duration of each window


def video_bins(video: HeadVideo, cfg: AudioPoolingConfig, feature: str) -> AudioVideoData:
    """Assign valid audio rows to 1-s bins by their centre time; frames to bins by t_i = i / fps.

    A store of published windows (`clip` rows) is laid out by `window_bins` instead."""
    feats = video.features
    if feats and "clip" in feats and "clip_t0" in feats:
        return window_bins(video, cfg, feature)
    f = video.num_frames
    nb = max(1, math.ceil(f / video.fps / cfg.bin_s - 1e-9)) if f > 0 else 0
    frame_bin = np.minimum((np.arange(f) / video.fps / cfg.bin_s + 1e-9).astype(np.int64), max(nb - 1, 0))
    if not feats or feature not in feats or len(feats[feature]) == 0:
        return AudioVideoData(None, np.zeros(nb, np.int64), np.zeros(nb, np.int64), frame_bin)
    ok = np.asarray(feats.get("valid", np.ones(len(feats["t0"]), bool)), bool)
    t0, t1 = np.asarray(feats["t0"], np.float64)[ok], np.asarray(feats["t1"], np.float64)[ok]
    x = np.asarray(feats[feature], np.float16)[ok]  # as stored; ~10 GB at full WavLM-Large scale, not 20
    order = np.argsort(0.5 * (t0 + t1), kind="stable")
    centre, x = (0.5 * (t0 + t1))[order], x[order]
    edges = np.arange(nb + 1) * cfg.bin_s
    pos = np.searchsorted(centre, edges, side="left")
    return AudioVideoData(x, pos[:-1].astype(np.int64), np.diff(pos).astype(np.int64), frame_bin)


def window_bins(video: HeadVideo, cfg: AudioPoolingConfig, feature: str) -> AudioVideoData:
    """The bins of a store of published windows: `cfg.bins` per window (see the module docstring).

    Rows are stored window by window, each window padded to one length with its padding rows
    invalid at its end; bin i takes the rows [round(i T / bins), round((i + 1) T / bins)) of the
    window's T rows and counts only the valid ones (they form a prefix of the bin).
    """
    f, fps, feats = video.num_frames, video.fps, video.features
    ct0 = np.asarray(feats["clip_t0"], np.float64)
    ct1 = np.asarray(feats["clip_t1"], np.float64)
    empty = np.zeros(0, np.int64)
    if feature not in feats or len(feats[feature]) == 0 or len(ct0) == 0:
        return AudioVideoData(None, empty, empty, None, [], (empty, empty), [], np.zeros(0))
    clip = np.asarray(feats["clip"], np.int64)
    valid = np.asarray(feats.get("valid", np.ones(len(clip), bool)), bool)
    nb, j = cfg.bins, np.arange(len(ct0))
    first, last = np.searchsorted(clip, j, side="left"), np.searchsorted(clip, j, side="right")
    starts, counts, fs, fe, windows, wframes = [], [], [], [], [], []
    for w in j:
        rows = int(last[w] - first[w])
        real = int(valid[first[w]:last[w]].sum())
        cuts = [int(round(i * rows / nb)) for i in range(nb + 1)]
        for i in range(nb):
            starts.append(first[w] + cuts[i])
            counts.append(max(0, min(cuts[i + 1], real) - cuts[i]))
            b0 = ct0[w] + i * cfg.bin_s
            b1 = min(ct0[w] + (i + 1) * cfg.bin_s, ct1[w])
            fs.append(min(f, math.ceil(b0 * fps - 1e-9)))
            fe.append(min(f, max(math.ceil(b1 * fps - 1e-9), fs[-1])))
        windows.append((nb * int(w), nb * (int(w) + 1)))
        wframes.append((min(f, int(round(ct0[w] * fps))), min(f, int(round(ct1[w] * fps)))))
    return AudioVideoData(np.asarray(feats[feature], np.float16), np.asarray(starts, np.int64),
                          np.asarray(counts, np.int64), None, windows,
                          (np.asarray(fs, np.int64), np.asarray(fe, np.int64)), wframes, ct1 - ct0)


def bin_targets(y: np.ndarray, yv: np.ndarray, frame_bin: np.ndarray, nb: int, task: str):
    """Per-bin target: mean valid label (VA) or majority class (EXPR); valid if any frame is labelled."""
    cnt = np.bincount(frame_bin[yv], minlength=nb)[:nb]
    valid = cnt > 0
    if task == "va":
        out = np.zeros((nb, 2), np.float32)
        for d in range(2):
            s = np.bincount(frame_bin[yv], weights=y[yv, d], minlength=nb)[:nb]
            out[valid, d] = s[valid] / cnt[valid]
        return out, valid
    votes = np.bincount(frame_bin[yv] * 8 + y[yv], minlength=nb * 8)[: nb * 8].reshape(nb, 8)
    return np.where(valid, votes.argmax(1), -1).astype(np.int64), valid


def window_filter(video: HeadVideo, windows: list[tuple[int, int]], frame_bin: np.ndarray | None,
                  labelled: np.ndarray, cfg: AudioPoolingConfig, data: AudioVideoData | None = None) -> tuple[np.ndarray, dict]:
    """Training weight per window (1 keep, 0 drop, cfg.filter_weight distrust) and rule statistics.

    Windows with fewer than min(min_labelled_bins, bins in window) labelled bins are always dropped
    (nothing to learn). The mouth/face/VAD rules apply when their signal exists and mode != "off".
    On the track grid a window's frames are those of its bins; a published window (`data.windows`)
    is judged on its own frames and duration, as `make_audio_windows.py` does.
    """
    rel = reliability_on_grid(video)
    applied = {k: rel[k] is not None for k in ("mouth_open", "face", "vad")}
    rule = cfg.audio_trust
    applied["vad"] = applied["vad"] and rule.min_speech_fraction > 0
    stats = {"windows": len(windows), "no_labels": 0, "mouth": 0, "face": 0, "vad": 0, "rules_applied": applied}
    own = data is not None and data.windows is not None
    if own:  # per-window sums over the window's own frames
        spans = data.window_frames

        def per_window(values: np.ndarray | None) -> np.ndarray:
            c = np.concatenate([[0.0], np.cumsum(np.ones(video.num_frames) if values is None else values.astype(np.float64))])
            return np.array([c[e] - c[s] for s, e in spans])
    else:
        nb = int(frame_bin.max()) + 1 if len(frame_bin) else 0
        nb = max(nb, max((e for _, e in windows), default=0))

        def per_bin(values: np.ndarray | None) -> np.ndarray:  # sums per bin, so a window is a slice sum
            return np.bincount(frame_bin, weights=None if values is None else values.astype(np.float64), minlength=nb)

        def per_window(values: np.ndarray | None) -> np.ndarray:
            c = per_bin(values)
            return np.array([c[s:e].sum() for s, e in windows])
    frames = per_window(None)
    mouth = per_window(rel["mouth_open"]) if applied["mouth_open"] else None
    face = per_window(rel["face"]) if applied["face"] else None
    speech = per_window(rel["vad"] >= rule.vad_threshold) if applied["vad"] else None
    w = np.ones(len(windows), np.float32)
    for i, (s, e) in enumerate(windows):
        if labelled[s:e].sum() < min(cfg.min_labelled_bins, e - s):
            w[i] = 0.0
            stats["no_labels"] += 1
            continue
        if cfg.filter_mode == "off":
            continue
        n = max(frames[i], 1.0)
        dur = float(data.window_seconds[i]) if own else n / video.fps
        fails = rule.failures(dur, None if mouth is None else mouth[i] / video.fps,
                              None if face is None else face[i] / n,
                              None if speech is None else speech[i] / n)
        for r in fails:
            stats[r] += 1
        if fails:
            w[i] = 0.0 if cfg.filter_mode == "drop" else cfg.filter_weight
    return w, stats


class AudioBank:
    """Train windows as bin indices into one concatenated row tensor (gathered per batch)."""

    def __init__(self, rows_per_bin: int, bins: int):
        self.r, self.nb = rows_per_bin, bins
        self.x_parts, self.bstart, self.bcount = [], [], []
        self.wbins, self.wpad, self.wy, self.wyv, self.ww = [], [], [], [], []
        self.nrows = self.nbins = 0

    def add_video(self, data: AudioVideoData, windows, by: np.ndarray, bv: np.ndarray, weights: np.ndarray) -> None:
        self.x_parts.append(data.x)
        self.bstart.append(data.bin_start + self.nrows)
        self.bcount.append(data.bin_count)
        for (s, e), w in zip(windows, weights):
            if w <= 0:
                continue
            idx = np.minimum(np.arange(s, s + self.nb), e - 1)
            self.wbins.append(idx + self.nbins)
            self.wpad.append(np.arange(s, s + self.nb) >= e)
            self.wy.append(by[idx])
            self.wyv.append(bv[idx] & (np.arange(s, s + self.nb) < e))
            self.ww.append(w)
        self.nrows += len(data.x)
        self.nbins += len(data.bin_start)

    def finalize(self) -> "AudioBank":
        self.x = torch.from_numpy(np.concatenate(self.x_parts)).to(torch.float16)
        self.bin_start = torch.from_numpy(np.concatenate(self.bstart))
        self.bin_count = torch.from_numpy(np.concatenate(self.bcount))
        self.win_bins = torch.from_numpy(np.stack(self.wbins)) if self.wbins else torch.zeros(0, self.nb, dtype=torch.long)
        self.win_pad = torch.from_numpy(np.stack(self.wpad)) if self.wpad else torch.zeros(0, self.nb, dtype=torch.bool)
        self.y = torch.from_numpy(np.stack(self.wy)) if self.wy else torch.zeros(0)
        self.yv = torch.from_numpy(np.stack(self.wyv)) if self.wyv else torch.zeros(0, dtype=torch.bool)
        self.w = torch.tensor(self.ww, dtype=torch.float32)
        self.x_parts = []
        return self

    def __len__(self) -> int:
        return len(self.ww)

    def gather(self, idx: torch.Tensor) -> dict:
        bins = self.win_bins[idx]
        x, mask = gather_rows(self.x, self.bin_start[bins], self.bin_count[bins] * (~self.win_pad[idx]), self.r)
        return {"x": x, "mask": mask, "y": self.y[idx], "yv": self.yv[idx], "w": self.w[idx]}


def gather_rows(x: torch.Tensor, start: torch.Tensor, count: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [..., r, D] of each bin (clipped indices; `mask` marks the real rows)."""
    ar = torch.arange(r)
    rows = (start.unsqueeze(-1) + ar).clamp(0, max(len(x) - 1, 0))
    mask = ar < count.unsqueeze(-1)
    return x[rows].float(), mask


def _rows_per_bin(datas) -> int:
    counts = [int(d.bin_count.max()) for d in datas if d.x is not None and len(d.bin_count)]
    return max(counts) if counts else 1


@torch.no_grad()
def predict_video(model, video: HeadVideo, data: AudioVideoData, cfg: AudioPoolingConfig, r: int, device) -> HeadOutput:
    """Bin outputs averaged over overlapping windows; each frame takes its bin's output (track grid)
    or the mean over the bins covering it (published windows)."""
    f = video.num_frames
    nb = len(data.bin_start)
    hop = int(round(cfg.hop_s / cfg.bin_s))
    empty = HeadOutput(np.zeros((f, TASK_OUTPUTS[cfg.task]), np.float32), np.zeros((f, cfg.head_hidden), np.float32),
                       np.zeros(f, bool))
    if data.x is None or nb == 0 or data.bin_count.sum() == 0:
        return empty
    wins = data.windows if data.windows is not None else frame_windows(nb, cfg.bins, hop)
    x = torch.from_numpy(data.x)
    bstart, bcount = torch.from_numpy(data.bin_start), torch.from_numpy(data.bin_count)
    preds, embs = [], []
    for i in range(0, len(wins), cfg.infer_batch):
        chunk = wins[i:i + cfg.infer_batch]
        idx = torch.stack([torch.clamp(torch.arange(s, s + cfg.bins), max=e - 1) for s, e in chunk])
        pad = torch.stack([torch.arange(s, s + cfg.bins) >= e for s, e in chunk])
        xb, mb = gather_rows(x, bstart[idx], bcount[idx] * (~pad), r)
        p, e = model(xb.to(device), mb.to(device))
        preds.extend(p.float().cpu().numpy())
        embs.extend(e.float().cpu().numpy())
    bp, be = overlap_add(preds, wins, nb), overlap_add(embs, wins, nb)
    has = data.bin_count > 0
    bp[~has], be[~has] = np.nan, np.nan
    if data.windows is not None:
        fs, fe = data.bin_frames
        pred, _ = segments_to_frames(bp, fs, fe, f, has)
        emb, _ = segments_to_frames(be, fs, fe, f, has)
    else:
        pred, emb = bp[data.frame_bin], be[data.frame_bin]
    return HeadOutput(pred, emb, np.isfinite(pred).all(1))


def build_bank(videos, datas: dict, cfg: AudioPoolingConfig, r: int) -> tuple[AudioBank, dict]:
    """Training windows of every train video with audio, after the cross-modal filter."""
    hop = int(round(cfg.hop_s / cfg.bin_s))
    bank = AudioBank(r, cfg.bins)
    totals = {"windows": 0, "kept": 0, "no_labels": 0, "mouth": 0, "face": 0, "vad": 0}
    for v in videos:
        d = datas[v.video_id]
        if v.split != "train" or v.labels is None or d.x is None:
            continue
        y, yv = frame_targets(v, cfg.task)
        if d.windows is not None:
            by, bv = span_targets(y, yv, *d.bin_frames, cfg.task)
            wins = d.windows
        else:
            by, bv = bin_targets(y, yv, d.frame_bin, len(d.bin_start), cfg.task)
            wins = frame_windows(len(d.bin_start), cfg.bins, hop)
        bv &= d.bin_count > 0
        w, st = window_filter(v, wins, d.frame_bin, bv, cfg, d)
        for k in ("windows", "no_labels", "mouth", "face", "vad"):
            totals[k] += st[k]
        totals["kept"] += int((w > 0).sum())
        bank.add_video(d, wins, by, bv, w)
    return bank.finalize(), totals


@register_model("audio", kind="head", config=AudioPoolingConfig,
                inputs=("features/audio", "features/reliability"), tasks=("va", "expr"),
                weights=("backbone_dir",), optional=("features/reliability",))
class AudioPooling(Head[AudioPoolingConfig]):
    """The audio head behind the contract (heads.contract): filtered 4-s windows of 1-s bins."""

    name = "audio"

    @property
    def feature(self) -> str:
        """The store array the head reads: the `lower` states when fine-tuning the top k layers."""
        return self.cfg.lower_feature if self.cfg.finetune_top_k > 0 else self.cfg.feature

    def check(self) -> None:
        super().check()
        cfg = self.cfg
        hop = cfg.hop_s / cfg.bin_s
        if abs(hop - round(hop)) > 1e-6 or hop < 1:
            raise ValueError(f"AudioPoolingConfig: hop_s={cfg.hop_s} must be a multiple of window_s/bins={cfg.bin_s}")
        if cfg.filter_mode not in ("drop", "weight", "off"):
            raise ValueError(f"AudioPoolingConfig.filter_mode must be drop|weight|off, got {cfg.filter_mode!r}")

    def load(self, records, urls):
        return load_head_videos(records, urls["features/audio"], task=self.task,
                                reliability_url=urls.get("features/reliability"))

    def prepare(self, videos):
        return {v.video_id: video_bins(v, self.cfg, self.feature) for v in videos}

    def input_width(self, inp) -> int | None:
        return None if inp.x is None else int(inp.x.shape[1])

    def dims(self, inputs):
        widths = [d.x.shape[1] for d in inputs.values() if d.x is not None]
        if not widths:
            raise ValueError(f"audio head: no video has a '{self.feature}' array in the audio store -- run the audio "
                             "extraction stage" + (" with the lower states cached (top k)" if self.cfg.finetune_top_k else ""))
        return {"in_dim": int(widths[0]), "rows_per_bin": _rows_per_bin(inputs.values())}

    def build_bank(self, videos, inputs, dims):
        bank, filt = build_bank(videos, inputs, self.cfg, int(dims["rows_per_bin"]))
        return bank, {"train_windows": len(bank), "filter": filt}

    def targets(self, video):
        return frame_targets(video, self.task)

    def build_model(self, dims):
        return AudioPoolingModel(int(dims["in_dim"]), self.cfg)

    def param_groups(self, model):
        return model.param_groups(self.cfg.train.lr, self.cfg.backbone_lr)

    def loss(self):
        return make_loss(self.cfg, self.class_weight)

    def predict(self, model, videos, inputs, dims, device):
        model.eval()
        r = int(dims["rows_per_bin"])
        return {v.video_id: predict_video(model, v, inputs[v.video_id], self.cfg, r, device) for v in videos}


def make_loss(cfg: AudioPoolingConfig, class_weight: torch.Tensor | None = None):
    """Weighted loss over a batch of windows: each labelled bin counts with its window's filter weight
    (EXPR: times its class weight)."""
    def loss_fn(m: nn.Module, b: dict) -> torch.Tensor:
        pred, _ = m(b["x"], b["mask"])
        weight = b["yv"].float() * b["w"][:, None]
        if cfg.task == "va":
            return ccc_loss(pred, b["y"], weight, weights=cfg.loss_weights, mse_weight=cfg.mse_weight)
        return weighted_cross_entropy(pred, b["y"], weight, class_weight)
    return loss_fn
