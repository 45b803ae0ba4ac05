"""Fusion inputs: the unimodal heads' outputs of one video, frame-aligned on its label grid.

Fusion reads what the unimodal heads wrote (`outputs.zarr`: pred [F,2], emb [F,256], valid [F] on
the label grid), never raw features. Everything is aligned to the label frame grid with the same
helpers the heads use (`heads.data`), so a frame means the same thing in every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from heads.data import HeadVideo, frame_features, frame_targets, reliability_on_grid

TOKEN_ARRAYS = ("tokens", "tokens_t0", "tokens_t1")  # optional arrays of the audio head's store


@dataclass
class FusionVideo:
    """One video's fusion inputs on its label grid (F frames).

    Per modality m: `emb[m]` [F, D] float32, `pred[m]` [F, 2], `valid[m]` [F] bool (False = the head
    had no input at that frame: the value is padding, never data). `labels` [F, 2] (VA) or [F]
    classes (EXPR) / `label_valid` [F] (all False on test). `audio_tokens` [T, Da] with times `tokens_t0/t1` and `tokens_valid`
    (the audio head's window tokens). `face` [F] coverage and `mouth_open` [F] come from the
    reliability store (None when absent: the audio filter is then not applied and we say so).
    """

    video_id: str
    split: str
    fps: float
    num_frames: int
    emb: dict[str, np.ndarray] = field(default_factory=dict)
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    label_valid: np.ndarray | None = None
    audio_tokens: np.ndarray | None = None
    tokens_t0: np.ndarray | None = None
    tokens_t1: np.ndarray | None = None
    tokens_valid: np.ndarray | None = None
    face: np.ndarray | None = None
    mouth_open: np.ndarray | None = None
    times: np.ndarray | None = None  # [F] start of each frame (HeadVideo.times); None: i / fps

    def frame_time(self, i: int) -> float:
        """Start of frame i in seconds (i = num_frames: the end of the last frame)."""
        if self.times is None or len(self.times) < 2:
            return i / self.fps
        if i < len(self.times):
            return float(self.times[i])
        return float(self.times[-1] + (i - len(self.times) + 1) * (self.times[-1] - self.times[-2]))


def tokens_from_frames(emb: np.ndarray, valid: np.ndarray, fps: float, bin_s: float = 1.0):
    """Audio tokens as the mean of the per-frame audio embedding over `bin_s` bins.

    Fallback for audio heads that store only per-frame outputs: the published audio head emits one
    256-d token per 1-s bin of a 4-s window, which is what this reproduces. Returns (tokens, t0, t1, valid).
    """
    n = len(valid)
    per = max(1, int(round(bin_s * fps)))
    starts = np.arange(0, n, per)
    toks, ok = [], []
    for s in starts:
        m = valid[s : s + per]
        ok.append(bool(m.any()))
        toks.append(emb[s : s + per][m].mean(0) if m.any() else np.zeros(emb.shape[1], np.float32))
    t0 = (starts / fps).astype(np.float32)
    t1 = (np.minimum(starts + per, n) / fps).astype(np.float32)
    d = emb.shape[1] if emb.ndim == 2 else 0
    tokens = np.stack(toks).astype(np.float32) if toks else np.zeros((0, d), np.float32)
    return tokens, t0, t1, np.asarray(ok, bool)


def fusion_video(heads: Mapping[str, HeadVideo], audio: str | None = "audio", task: str = "va") -> FusionVideo:
    """Combine one video's HeadVideos (one per modality, each holding that head's output group).

    Labels (of `task`), fps and grid length come from the first HeadVideo (all share the index record).
    """
    first = next(iter(heads.values()))
    f = first.num_frames
    fusion = FusionVideo(first.video_id, first.split, float(first.fps), f, times=first.times)
    for m, hv in heads.items():
        # rows_to_frames honours the head's own `valid` column: invalid rows stay masked
        emb, ok_e = frame_features(hv, "emb")
        pred, ok_p = frame_features(hv, "pred")
        fusion.emb[m], fusion.pred[m], fusion.valid[m] = emb, pred, ok_e & ok_p
    fusion.labels, fusion.label_valid = frame_targets(first, task)
    if audio and audio in heads:
        fusion.audio_tokens, fusion.tokens_t0, fusion.tokens_t1, fusion.tokens_valid = _audio_tokens(heads[audio], fusion, audio)
    rel_src = next((hv for hv in heads.values() if hv.reliability), None)
    if rel_src is not None:
        rel = reliability_on_grid(rel_src)
        fusion.face, fusion.mouth_open = rel["face"], rel["mouth_open"]
    return fusion


def _audio_tokens(hv: HeadVideo, fusion: FusionVideo, audio: str):
    """The audio head's own tokens when its store has them, else 1-s bins of its [emb ; pred] frames."""
    g = hv.features
    if all(k in g for k in TOKEN_ARRAYS):
        tok = np.asarray(g["tokens"], np.float32)
        ok = np.asarray(g["tokens_valid"], bool) if "tokens_valid" in g else np.ones(len(tok), bool)
        return tok, np.asarray(g["tokens_t0"], np.float32), np.asarray(g["tokens_t1"], np.float32), ok
    # [emb ; pred] like every other fusion input: the head's prediction is its most distilled feature
    feats = np.concatenate([fusion.emb[audio], fusion.pred[audio]], 1) if fusion.emb[audio].shape[1] else fusion.emb[audio]
    return tokens_from_frames(feats, fusion.valid[audio], fusion.fps)


def load_fusion_inputs(videos: Sequence, heads: Mapping[str, str], reliability_url: str | None = None,
                       audio: str | None = "audio", task: str = "va") -> list[FusionVideo]:
    """Read every head's outputs.zarr (+ `task` labels, + reliability store) into FusionVideos.

    `videos`: index records (`pipeline.records.Video`) of every split; `heads`: {modality: URL of
    that head's outputs.zarr}. A video missing from a head's store gets that modality all-invalid.
    """
    from heads.data import load_head_videos

    per_mod: dict[str, list[HeadVideo]] = {}
    for i, (m, url) in enumerate(heads.items()):
        if not Path(url).exists() and "://" not in str(url):
            raise FileNotFoundError(f"{url}: outputs of the {m!r} head not found; train that head first "
                                    f"(dvc repro train_{m}) or fix the fusion `heads` paths")
        per_mod[m] = load_head_videos(videos, url, task, reliability_url=reliability_url if i == 0 else None)
    out = []
    for k in range(len(videos)):
        out.append(fusion_video({m: per_mod[m][k] for m in heads}, audio=audio, task=task))
    return out
