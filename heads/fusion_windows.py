"""Fusion windowing: frame tables of every video concatenated once, windows as index rows, audio trust.

Why one concatenated frame table per modality plus index windows: a training batch is then an
index gather (`heads.train.Batches` contract), memory stays at one copy of the features (float16),
and windows of any size/overlap cost only an int matrix. Both fusions (gated_moe and raav) use
this module; they differ in the windowing (frames vs seconds) and in whether audio tokens come along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from heads.fusion_inputs import FusionVideo
from heads.windows import AudioTrustRule, frame_windows


@dataclass
class AudioFilter:
    """Per-window audio trust for fusion: the shared `AudioTrustRule` on the splits it is applied to."""

    rule: AudioTrustRule = field(default_factory=lambda: AudioTrustRule(min_open_fraction=0.0))
    splits: tuple[str, ...] = ("train", "validation", "test")

    def keep(self, v: FusionVideo, s: int, e: int) -> bool:
        """True when the window's audio may be used; the rule is skipped where a signal is missing."""
        if v.split not in self.splits:
            return True
        open_s = None if v.mouth_open is None else float(np.sum(v.mouth_open[s:e])) / v.fps
        face = None if v.face is None else float(np.mean(v.face[s:e]))
        return not self.rule.failures((e - s) / v.fps, open_s, face, None)


@dataclass
class FrameWindowing:
    """Fixed windows in frames (gated_moe: 400 / hop 150); no audio tokens."""

    size: int = 400
    hop: int = 150
    audio: str | None = None
    audio_filter: AudioFilter | None = None

    def windows(self, v: FusionVideo) -> list[tuple[int, int]]:
        return frame_windows(v.num_frames, self.size, self.hop)


@dataclass
class SecondsWindowing:
    """Windows of `window_s` seconds every `hop_s` (raav: 4 s / 2 s), with audio tokens per window."""

    window_s: float = 4.0
    hop_s: float = 2.0
    audio: str | None = "audio"
    audio_filter: AudioFilter | None = None

    def windows(self, v: FusionVideo) -> list[tuple[int, int]]:
        size = max(1, int(round(self.window_s * v.fps)))
        hop = max(1, int(round(self.hop_s * v.fps)))
        return frame_windows(v.num_frames, size, hop)


@dataclass
class WindowSet:
    """Everything a batch gathers from: concatenated per-frame tables + per-window index rows.

    Row `pad` (the last) of every frame table is the padding row (zeros, invalid).
    """

    modalities: list[str]
    x: dict[str, torch.Tensor]          # [N+1, D_m] float16
    valid: dict[str, torch.Tensor]      # [N+1] bool
    y: torch.Tensor                     # [N+1, 2] float32
    y_valid: torch.Tensor               # [N+1] bool
    frame_idx: torch.Tensor             # [W, L] int64 into the frame tables
    video_of: np.ndarray                # [W] video position
    spans: list[tuple[int, int]]        # [W] (start, end) frames in that video
    tokens: torch.Tensor | None = None  # [T+1, Da] float16
    tokens_ok: torch.Tensor | None = None  # [T+1] bool (usable token: audio present and valid)
    token_idx: torch.Tensor | None = None  # [W, Tmax] int64
    audio_kept: torch.Tensor | None = None  # [W] bool (filter verdict per window)
    audio: str | None = None            # name of the audio stream (counts as an input for `valid`)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gather a batch of windows: the model's input dict plus targets."""
        fi = self.frame_idx[idx]
        pad = self.y.shape[0] - 1
        out: dict[str, torch.Tensor] = {"mask": fi != pad, "y": self.y[fi], "y_valid": self.y_valid[fi]}
        for m in self.modalities:
            out[f"x_{m}"] = self.x[m][fi].float()
            out[f"valid_{m}"] = self.valid[m][fi]
        if self.token_idx is not None:
            ti = self.token_idx[idx]
            out["audio_tokens"] = self.tokens[ti].float()
            out["audio_valid"] = self.tokens_ok[ti] & self.audio_kept[idx].unsqueeze(1)
        return out


def _dims(videos: Sequence[FusionVideo], m: str, use_pred: bool) -> int:
    d = max((v.emb[m].shape[1] for v in videos if m in v.emb), default=0)
    p = max((v.pred[m].shape[1] for v in videos if m in v.pred), default=0)
    return d + (p if use_pred else 0)


def build_windows(videos: Sequence[FusionVideo], modalities: Sequence[str], windowing, use_pred: bool = True,
                  train: bool = False) -> WindowSet:
    """Concatenate the videos' frames and cut windows (train=True drops windows without labels)."""
    mods = list(modalities)
    dims = {m: _dims(videos, m, use_pred) for m in mods}
    n = sum(v.num_frames for v in videos)
    x = {m: np.zeros((n + 1, dims[m]), np.float16) for m in mods}
    valid = {m: np.zeros(n + 1, bool) for m in mods}
    # labels: [n, 2] float (VA) or [n] classes (EXPR), as the videos carry them
    lab = next((v.labels for v in videos if v.labels is not None), np.zeros((0, 2), np.float32))
    y, y_valid = np.zeros((n + 1, *lab.shape[1:]), lab.dtype), np.zeros(n + 1, bool)
    rows, owners, spans, tok_rows, kept = [], [], [], [], []
    tokens, tokens_ok, tok_off = [], [], 0
    use_audio = getattr(windowing, "audio", None)
    offset = 0
    for k, v in enumerate(videos):
        f = v.num_frames
        for m in mods:
            if m in v.emb and v.emb[m].shape[1] > 0:
                feat = np.concatenate([v.emb[m], v.pred[m]], 1) if use_pred else v.emb[m]
                x[m][offset : offset + f, : feat.shape[1]] = feat
                valid[m][offset : offset + f] = v.valid[m]
        if v.labels is not None:
            y[offset : offset + f] = v.labels
            y_valid[offset : offset + f] = v.label_valid
        t_tok = None
        if use_audio and v.audio_tokens is not None and len(v.audio_tokens):
            tokens.append(v.audio_tokens)
            tokens_ok.append(v.tokens_valid)
            t_tok = (0.5 * (v.tokens_t0 + v.tokens_t1)).astype(np.float64)
        for s, e in windowing.windows(v):
            if train and (v.label_valid is None or not v.label_valid[s:e].any()):
                continue
            rows.append(np.arange(offset + s, offset + e))
            owners.append(k)
            spans.append((s, e))
            if use_audio:
                sel = (np.flatnonzero((t_tok >= v.frame_time(s)) & (t_tok < v.frame_time(e))) if t_tok is not None
                       else np.zeros(0, int))
                tok_rows.append(tok_off + sel)
                filt = windowing.audio_filter
                kept.append(filt.keep(v, s, e) if filt is not None else True)
        if t_tok is not None:
            tok_off += len(v.audio_tokens)
        offset += f
    length = max((len(r) for r in rows), default=1)
    frame_idx = np.full((len(rows), length), n, np.int64)
    for i, r in enumerate(rows):
        frame_idx[i, : len(r)] = r
    ws = WindowSet(mods, {m: torch.from_numpy(x[m]) for m in mods}, {m: torch.from_numpy(valid[m]) for m in mods},
                   torch.from_numpy(y), torch.from_numpy(y_valid), torch.from_numpy(frame_idx),
                   np.asarray(owners, np.int64), spans)
    if use_audio:
        da = max((t.shape[1] for t in tokens), default=1) or 1
        tok = np.zeros((tok_off + 1, da), np.float16)
        ok = np.zeros(tok_off + 1, bool)
        row = 0
        for t, o in zip(tokens, tokens_ok):  # widths may differ: a video without audio has 0-wide tokens
            tok[row : row + len(t), : t.shape[1]] = t
            ok[row : row + len(t)] = o & (t.shape[1] > 0)
            row += len(t)
        tmax = max((len(r) for r in tok_rows), default=0) or 1
        tidx = np.full((len(rows), tmax), tok_off, np.int64)
        for i, r in enumerate(tok_rows):
            tidx[i, : len(r)] = r
        ws.tokens, ws.tokens_ok = torch.from_numpy(tok), torch.from_numpy(ok)
        ws.token_idx, ws.audio_kept = torch.from_numpy(tidx), torch.as_tensor(kept, dtype=torch.bool)
        ws.audio = use_audio
    return ws
