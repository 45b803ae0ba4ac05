"""Fusion inputs and the fusion run: head outputs -> frame-aligned tensors -> fit -> outputs.zarr.

Fusion reads what the unimodal heads wrote (`outputs.zarr`: pred [F,2], emb [F,256], valid [F] on
the label grid), never raw features. Everything is aligned to the label frame grid with the same
helpers the heads use (`heads.data`), so a frame means the same thing in every stage.

Why one concatenated frame table per modality plus index windows: a training batch is then an
index gather (`heads.train.Batches` contract), memory stays at one copy of the features (float16),
and windows of any size/overlap cost only an int matrix. Both fusion strategies (DCMMOE and RAAV)
share this file; they differ in the model and in how windows and audio tokens are cut.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from heads.data import HeadVideo, frame_features, frame_targets, reliability_on_grid
from pipeline.labels import fill_nearest, frame_times
from heads.losses import ccc_loss
from pipeline.metrics import va_score
from heads.postprocess import smooth
from heads.train import Batches, TrainConfig, fit
from heads.windows import frame_windows, overlap_add

TOKEN_ARRAYS = ("tokens", "tokens_t0", "tokens_t1")  # optional arrays of the audio head's store


@dataclass
class FusionVideo:
    """One video's fusion inputs on its label grid (F frames).

    Per modality m: `emb[m]` [F, D] float32, `pred[m]` [F, 2], `valid[m]` [F] bool (False = the head
    had no input at that frame: the value is padding, never data). `labels` [F, 2] / `label_valid`
    [F] (all False on test). `audio_tokens` [T, Da] with times `tokens_t0/t1` and `tokens_valid`
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


# --------------------------------------------------------------------------- loading


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


def fusion_video(heads: Mapping[str, HeadVideo], audio: str | None = "audio") -> FusionVideo:
    """Combine one video's HeadVideos (one per modality, each holding that head's output group).

    Labels, fps and grid length come from the first HeadVideo (all share the index record).
    """
    first = next(iter(heads.values()))
    f = first.num_frames
    fusion = FusionVideo(first.video_id, first.split, float(first.fps), f)
    for m, hv in heads.items():
        # rows_to_frames honours the head's own `valid` column: invalid rows stay masked
        emb, ok_e = frame_features(hv, "emb")
        pred, ok_p = frame_features(hv, "pred")
        fusion.emb[m], fusion.pred[m], fusion.valid[m] = emb, pred, ok_e & ok_p
    if first.labels is not None:
        fusion.labels, fusion.label_valid = frame_targets(first, "va")
    else:
        fusion.labels, fusion.label_valid = np.zeros((f, 2), np.float32), np.zeros(f, bool)
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
                       audio: str | None = "audio") -> list[FusionVideo]:
    """Read every head's outputs.zarr (+ labels, + reliability store) into FusionVideos.

    `videos`: index records (`pipeline.records.Video`) of every split; `heads`: {modality: URL of
    that head's outputs.zarr}. A video missing from a head's store gets that modality all-invalid.
    """
    from heads.data import load_head_videos

    per_mod: dict[str, list[HeadVideo]] = {}
    for i, (m, url) in enumerate(heads.items()):
        if not Path(url).exists() and "://" not in str(url):
            raise FileNotFoundError(f"{url}: outputs of the {m!r} head not found; train that head first "
                                    f"(dvc repro train_{m}) or fix the fusion `heads` paths")
        per_mod[m] = load_head_videos(videos, url, "va", reliability_url=reliability_url if i == 0 else None)
    out = []
    for k in range(len(videos)):
        out.append(fusion_video({m: per_mod[m][k] for m in heads}, audio=audio))
    return out


# --------------------------------------------------------------------------- windows


@dataclass
class AudioFilter:
    """Per-window audio trust rule (seed 1): mouth open >= min_open_s and face coverage >= min_face."""

    min_open_s: float = 1.0
    min_face: float = 0.8
    splits: tuple[str, ...] = ("train", "validation", "test")

    def keep(self, v: FusionVideo, s: int, e: int) -> bool:
        """True when the window's audio may be used; the rule is skipped where a signal is missing."""
        if v.split not in self.splits:
            return True
        if v.mouth_open is not None and float(np.sum(v.mouth_open[s:e])) / v.fps < self.min_open_s:
            return False
        if v.face is not None and float(np.mean(v.face[s:e])) < self.min_face:
            return False
        return True


@dataclass
class FrameWindowing:
    """Fixed windows in frames (DCMMOE: 400 / hop 150); no audio tokens."""

    size: int = 400
    hop: int = 150
    audio: str | None = None
    audio_filter: AudioFilter | None = None

    def windows(self, v: FusionVideo) -> list[tuple[int, int]]:
        return frame_windows(v.num_frames, self.size, self.hop)


@dataclass
class SecondsWindowing:
    """Windows of `window_s` seconds every `hop_s` (RAAV: 4 s / 2 s), with audio tokens per window."""

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
    y, y_valid = np.zeros((n + 1, 2), np.float32), np.zeros(n + 1, bool)
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
                sel = np.flatnonzero((t_tok >= s / v.fps) & (t_tok < e / v.fps)) if t_tok is not None else np.zeros(0, int)
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


# --------------------------------------------------------------------------- inference


@dataclass
class FusionPrediction:
    """One video's fused outputs on its label grid (before smoothing: `pred_raw`)."""

    pred_raw: np.ndarray   # [F, C]
    emb: np.ndarray        # [F, d]
    gates: np.ndarray      # [F, E]
    valid: np.ndarray      # [F] bool: at least one input modality present
    audio_mask: np.ndarray | None = None  # [F] share of covering windows whose audio was masked


@torch.no_grad()
def predict(model: nn.Module, videos: Sequence[FusionVideo], ws: WindowSet, batch_size: int = 16,
            device: str | torch.device = "cpu") -> dict[str, FusionPrediction]:
    """Run the model on every window and average overlapping windows per frame (published rule)."""
    model.eval()
    outs: dict[str, list] = {"pred": [], "emb": [], "gates": []}
    for i in range(0, len(ws.spans), batch_size):
        b = ws.batch(torch.arange(i, min(i + batch_size, len(ws.spans))))
        b = {k: v.to(device) for k, v in b.items()}
        o = model(b)
        for key in outs:
            outs[key].extend(o[key].float().cpu().numpy())
    result = {}
    for k, v in enumerate(videos):
        sel = np.flatnonzero(ws.video_of == k)
        wins = [ws.spans[i] for i in sel]
        f = v.num_frames
        if not wins:
            result[v.video_id] = _empty_prediction(f, outs)
            continue
        per = {key: overlap_add([outs[key][i] for i in sel], wins, f) for key in outs}
        present = np.zeros(f, bool)
        for m in ws.modalities + ([ws.audio] if ws.audio else []):
            if m in v.valid:
                present |= v.valid[m]
        pred = FusionPrediction(per["pred"], per["emb"], per["gates"], present & np.isfinite(per["pred"]).all(1))
        if ws.audio_kept is not None:
            masked = [np.full(e - s, 0.0 if bool(ws.audio_kept[i]) else 1.0) for i, (s, e) in zip(sel, wins)]
            pred.audio_mask = overlap_add(masked, wins, f)[:, 0]
        result[v.video_id] = pred
    return result


def _empty_prediction(f: int, outs: dict) -> FusionPrediction:
    dims = {k: (outs[k][0].shape[-1] if outs[k] else 1) for k in outs}
    return FusionPrediction(np.zeros((f, dims["pred"]), np.float32), np.zeros((f, dims["emb"]), np.float32),
                            np.zeros((f, dims["gates"]), np.float32), np.zeros(f, bool))


def score(videos: Sequence[FusionVideo], preds: Mapping[str, np.ndarray],
          valid: Mapping[str, np.ndarray] | None = None) -> dict:
    """ABAW VA score (frames concatenated, invalid labels excluded) over videos with labels.

    Frames the model marks invalid (no input at all) take the nearest valid prediction first --
    the submission rule, so this equals what `pipeline.evaluate` reports from the stored outputs.
    """
    vids = [v for v in videos if v.label_valid is not None and v.label_valid.any()]
    if not vids:
        return {}
    filled = [fill_nearest(preds[v.video_id], valid[v.video_id]) if valid else preds[v.video_id] for v in vids]
    return va_score(filled, [v.labels for v in vids], [v.label_valid for v in vids])


# --------------------------------------------------------------------------- run


def train_config(cfg) -> TrainConfig:
    """The shared loop's settings from a fusion config (same field names where they overlap)."""
    return TrainConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                       early_stopping=cfg.patience, seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                       max_minutes=cfg.max_minutes)


def run_fusion(strategy: str, build_model: Callable[[], nn.Module], cfg, videos: Sequence[FusionVideo],
               out_dir: str | Path, windowing, streams: Sequence[str], gate_names: Sequence[str]) -> dict:
    """Shared body of both `train_fusion`s: windows, fit (heads.train), predict, smooth, write.

    `streams` are the per-frame modalities the model reads as `x_<m>`/`valid_<m>` (audio tokens,
    when the windowing names an audio stream, come on top). `cfg` is a fusion config (it carries
    the optimisation fields, `use_pred`, `loss_weights`, `mse_weight`, `smoothing`).

    Returns metrics: validation CCC before/after smoothing (`raw`, `smoothed`; top-level keys are
    the smoothed ones), best epoch and wall time.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    mods = list(streams)
    train_v = [v for v in videos if v.split == "train"]
    val_v = [v for v in videos if v.split == "validation"]
    if not train_v:
        raise ValueError(f"fusion/{strategy}: no training video among the inputs; check the index splits")
    tcfg = train_config(cfg)
    train_ws = build_windows(train_v, mods, windowing, cfg.use_pred, train=True)
    val_ws = build_windows(val_v, mods, windowing, cfg.use_pred) if val_v else None
    model = build_model()
    with torch.no_grad():  # materialise LazyLinear before the loop builds its optimizer
        model(train_ws.batch(torch.arange(min(2, len(train_ws.spans)))))

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        pred = model(batch)["pred"]
        return ccc_loss(pred, batch["y"], batch["y_valid"] & batch["mask"], weights=cfg.loss_weights,
                        mse_weight=cfg.mse_weight)

    def val_fn(model: nn.Module) -> dict:
        if val_ws is None or not len(val_ws.spans):
            return {}
        p = predict(model, val_v, val_ws, device=next(model.parameters()).device)
        return score(val_v, {k: v.pred_raw for k, v in p.items()}, {k: v.valid for k, v in p.items()})

    t0 = time.perf_counter()
    batches = Batches(len(train_ws.spans), cfg.batch_size, train_ws.batch, seed=cfg.seed)
    history = fit(model, batches, loss_fn, val_fn, tcfg, out_dir,
                  checkpoint_extra={"strategy": strategy, "gate_names": list(gate_names), "config": _jsonable(cfg)})
    train_s = time.perf_counter() - t0
    device = next(model.parameters()).device
    preds: dict[str, FusionPrediction] = {}
    for split in ("train", "validation", "test"):
        vs = [v for v in videos if v.split == split]
        if vs:
            preds.update(predict(model, vs, build_windows(vs, mods, windowing, cfg.use_pred), device=device))
    smoothed = {v.video_id: smooth(preds[v.video_id].pred_raw, preds[v.video_id].valid, cfg.smoothing) for v in videos}
    write_fusion_outputs(out_dir, strategy, videos, preds, smoothed, gate_names, _jsonable(cfg))
    valid = {k: p.valid for k, p in preds.items()}
    raw = score(val_v, {k: p.pred_raw for k, p in preds.items()}, valid)
    smo = score(val_v, smoothed, valid)
    best = max(history, key=lambda r: r.get("val_ccc_mean", -np.inf)) if history else {}
    metrics = {**smo, "raw": raw, "smoothed": smo, "best_epoch": best.get("epoch"), "epochs": len(history),
               "train_seconds": round(train_s, 2), "strategy": strategy, "gate_names": list(gate_names)}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def write_fusion_outputs(out_dir: Path, strategy: str, videos: Sequence[FusionVideo],
                         preds: Mapping[str, FusionPrediction], smoothed: Mapping[str, np.ndarray],
                         gate_names: Sequence[str], config: dict) -> str:
    """(Re)write out_dir/outputs.zarr in the heads' layout plus `gates`, `pred_raw`, `audio_mask`.

    Same conventions as `heads.outputs`: frames without any input are zeros with valid False.
    """
    from pipeline.store import FeatureStore

    url = str(Path(out_dir) / "outputs.zarr")
    if Path(url).exists():
        shutil.rmtree(url)
    attrs = {"head": f"fusion_{strategy}", "task": "va", "gate_names": list(gate_names)}
    store = FeatureStore.create(url, extractor=f"fusion:{strategy}", fingerprint={"fusion": strategy, "config": config},
                                attrs=attrs)
    for v in videos:
        p = preds[v.video_id]
        ok = p.valid & np.isfinite(smoothed[v.video_id]).all(1)
        t0, t1 = frame_times(v.num_frames, v.fps)
        arrays = {"pred": _zero_invalid(smoothed[v.video_id], ok), "pred_raw": _zero_invalid(p.pred_raw, ok),
                  "emb": _zero_invalid(p.emb, ok), "gates": _zero_invalid(p.gates, ok), "t0": t0, "t1": t1, "valid": ok}
        if p.audio_mask is not None:
            arrays["audio_mask"] = np.nan_to_num(p.audio_mask).astype(np.float32)
        store.write_video(v.video_id, arrays, attrs={"split": v.split, "fps": float(v.fps), "task": "va",
                                                    "gate_names": list(gate_names)})
    store.consolidate()
    return url


def _zero_invalid(a: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.where(ok[:, None], np.nan_to_num(a), 0.0).astype(np.float32)


def _jsonable(cfg) -> dict:
    d = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    return json.loads(json.dumps(d, default=str))
