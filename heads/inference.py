"""Run trained heads and a trained fusion on new videos (the in-the-wild `affcache predict` path).

Training writes every model's weights *and* its config into `model.pt` (`heads.train.fit`:
`state_dict`, `config`, plus `in_dim` / `rows_per_bin` for heads, `strategy` / `gate_names` for
fusions), so a model is rebuilt from its out_dir alone -- no params.yaml, no training data.

Why inference reuses the training modules' own functions (`prepare_inputs`, `predict_video`,
`fusion_video`, `build_windows`, `predict`, `smooth`) instead of re-implementing them: a new video
must be windowed, masked, overlap-added and smoothed exactly as the validation videos were, or the
validation score says nothing about these predictions. The only difference is the frame grid: a new
video has no labels, so its grid is its decoded frames (frame i <-> t = i / fps).

Heads never see media here either: callers hand in `HeadVideo`s built from feature stores.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from heads.data import HeadVideo
from pipeline.labels import frame_times
from heads.outputs import HeadOutput, clean

CHECKPOINT = "model.pt"

# head kind (model.pt "head") -> (module, config class, model class)
HEAD_KINDS: dict[str, tuple[str, str, str]] = {
    "face_temporal": ("heads.face_temporal", "FaceTemporalConfig", "FaceTemporalModel"),
    "behavior_temporal": ("heads.behavior_temporal", "BehaviorTemporalConfig", "BehaviorTemporalModel"),
    "audio_pooling": ("heads.audio_pooling", "AudioPoolingConfig", "AudioPoolingModel"),
}
# fusion strategy (model.pt "strategy") -> (module, config class, model class)
FUSION_KINDS: dict[str, tuple[str, str, str]] = {
    "moe": ("heads.fusion_moe", "FusionMoEConfig", "DirectedMoE"),
    "reliability": ("heads.fusion_reliability", "RAAVConfig", "RAAV"),
}


class ModelLoadError(FileNotFoundError):
    """A trained model is missing, cannot be rebuilt, or does not fit the features it is given.

    The message names the checkpoint and the fix (usually: `dvc repro`).
    """


# --------------------------------------------------------------------------- loading


def read_checkpoint(out_dir: str | Path) -> dict:
    """`out_dir/model.pt` as written by `heads.train.fit` (weights + config), on CPU."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise ModelLoadError(f"{path}: trained model not found; run `dvc repro` (or the train/fuse stage) first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means: rebuild the checkpoint
        raise ModelLoadError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc}); "
                             "re-run its training stage (`dvc repro`)") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ModelLoadError(f"{path}: not a checkpoint written by heads.train.fit (no state_dict/config); "
                             "re-run its training stage (`dvc repro`)")
    return ckpt


def _rebuild(path: Path, kinds: Mapping[str, tuple[str, str, str]], kind: str, ckpt: dict,
             make: Callable[[type, Any], nn.Module]) -> tuple[nn.Module, Any]:
    """Config dataclass from the checkpoint, model from the config, weights loaded strictly."""
    from pipeline.config import ParamsError, build_config

    if kind not in kinds:
        raise ModelLoadError(f"{path}: unknown model kind {kind!r}; known: {', '.join(kinds)}")
    module_name, cfg_name, model_name = kinds[kind]
    module = importlib.import_module(module_name)
    try:
        cfg = build_config(getattr(module, cfg_name), dict(ckpt["config"]), where=f"{path}: config")
        model = make(getattr(module, model_name), cfg)
        model.load_state_dict(ckpt["state_dict"])  # lazy layers take their shapes from the state dict
    except (ParamsError, RuntimeError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path}: checkpoint does not match the current {module_name} code ({exc}); "
                             "re-train it (`dvc repro`)") from exc
    return model.eval(), cfg


@dataclass
class TrainedHead:
    """A unimodal head rebuilt from its out_dir, ready to predict."""

    name: str                 # modality / head name ("face", "behavior", "audio")
    kind: str                 # "face_temporal" | "behavior_temporal" | "audio_pooling"
    model: nn.Module
    cfg: Any
    checkpoint: dict          # the extras (in_dim, rows_per_bin, ...)
    device: torch.device
    path: Path


def load_head(name: str, out_dir: str | Path, device: str = "auto") -> TrainedHead:
    """Rebuild the head trained into `out_dir` (data/heads/<name>)."""
    from heads.train import resolve_device

    path = Path(out_dir) / CHECKPOINT
    ckpt = read_checkpoint(out_dir)
    kind = str(ckpt.get("head", ""))
    in_dim = int(ckpt.get("in_dim", 0))
    if in_dim <= 0:
        raise ModelLoadError(f"{path}: checkpoint has no `in_dim`; re-train the {name} head (`dvc repro`)")
    model, cfg = _rebuild(path, HEAD_KINDS, kind, ckpt, lambda cls, c: cls(in_dim, c))
    dev = resolve_device(device)
    extras = {k: v for k, v in ckpt.items() if k not in ("state_dict", "config")}
    return TrainedHead(name, kind, model.to(dev), cfg, extras, dev, Path(out_dir))


@dataclass
class TrainedFusion:
    """A fusion rebuilt from its out_dir, with the windowing it was trained with."""

    strategy: str
    model: nn.Module
    cfg: Any
    gate_names: list[str]
    modalities: list[str]     # head outputs it reads (per-frame streams + audio context)
    streams: list[str]        # per-frame streams (`x_<m>` in a batch)
    windowing: Any
    device: torch.device
    path: Path


def fusion_windowing(strategy: str, cfg: Any) -> tuple[Any, list[str], list[str]]:
    """(windowing, streams, modalities) exactly as `train_fusion` of that strategy sets them up."""
    from heads import fusion_data

    if strategy == "moe":
        mods = list(cfg.modalities)
        return fusion_data.FrameWindowing(size=cfg.window, hop=cfg.hop), mods, mods
    windowing = fusion_data.SecondsWindowing(
        window_s=cfg.window_s, hop_s=cfg.hop_s, audio=cfg.audio,
        audio_filter=fusion_data.AudioFilter(cfg.min_open_s, cfg.min_face_coverage, tuple(cfg.mask_audio_splits)),
    )
    return windowing, list(cfg.visual), list(cfg.modalities)


def load_fusion(out_dir: str | Path, device: str = "auto") -> TrainedFusion:
    """Rebuild the fusion trained into `out_dir` (data/fusion/<strategy>)."""
    from heads.train import resolve_device

    path = Path(out_dir) / CHECKPOINT
    ckpt = read_checkpoint(out_dir)
    strategy = str(ckpt.get("strategy", ""))
    model, cfg = _rebuild(path, FUSION_KINDS, strategy, ckpt, lambda cls, c: cls(c))
    windowing, streams, mods = fusion_windowing(strategy, cfg)
    dev = resolve_device(device)
    gate_names = [str(g) for g in ckpt.get("gate_names", [])]
    return TrainedFusion(strategy, model.to(dev), cfg, gate_names, mods, streams, windowing, dev, Path(out_dir))


# --------------------------------------------------------------------------- heads


def _check_dim(head: TrainedHead, x: np.ndarray | None, video_id: str) -> None:
    """Features from another extractor config would be silently wrong; stop with the fix instead."""
    want = int(head.checkpoint["in_dim"])
    if x is not None and x.ndim == 2 and x.shape[1] != want:
        raise ModelLoadError(f"{head.path / CHECKPOINT}: the {head.name} head was trained on inputs of width {want} "
                             f"but video {video_id} gives {x.shape[1]}; extract with the `extract.{head.name}` params "
                             "the head was trained with (or re-train: `dvc repro`)")


@torch.no_grad()
def predict_head(head: TrainedHead, videos: Sequence[HeadVideo]) -> dict[str, HeadOutput]:
    """Per-frame outputs of one head for each video (on its grid; invalid where it has no input)."""
    module = importlib.import_module(HEAD_KINDS[head.kind][0])
    cfg, out = head.cfg, {}
    for v in videos:
        if head.kind == "face_temporal":
            x, present = module.prepare_inputs(v, cfg)
            _check_dim(head, x if present.any() else None, v.video_id)
            o = module.predict_video(head.model, v, x, present, cfg, head.device)
        elif head.kind == "behavior_temporal":
            x = module.prepare_inputs(v, cfg)
            _check_dim(head, x, v.video_id)
            o = module.predict_video(head.model, v, x, cfg, head.device)
        else:
            feature = cfg.lower_feature if cfg.finetune_top_k > 0 else cfg.feature
            data = module.video_bins(v, cfg, feature)
            _check_dim(head, data.x, v.video_id)
            rows = int(head.checkpoint.get("rows_per_bin", 1))
            o = module.predict_video(head.model, v, data, cfg, rows, head.device)
        out[v.video_id] = clean(o)
    return out


# --------------------------------------------------------------------------- fusion


def output_video(video: HeadVideo, output: HeadOutput) -> HeadVideo:
    """A head's output as the fusion reads it from `outputs.zarr` (emb stored float16 there)."""
    t0, t1 = frame_times(video.num_frames, video.fps)
    o = clean(output)
    feats = {"pred": o.pred, "emb": o.emb.astype(np.float16), "t0": t0, "t1": t1, "valid": o.valid}
    return HeadVideo(video.video_id, video.split, video.fps, video.num_frames, None, feats, video.reliability)


@dataclass
class FusedOutput:
    """One video's fused prediction (smoothed as in training), validity and gate weights."""

    pred: np.ndarray    # [F, 2]
    valid: np.ndarray   # [F] bool
    gates: np.ndarray   # [F, E]


@torch.no_grad()
def predict_fusion(fusion: TrainedFusion, videos: Sequence[HeadVideo],
                   outputs: Mapping[str, Mapping[str, HeadOutput]]) -> dict[str, FusedOutput]:
    """Fuse the heads' outputs (`outputs[modality][video_id]`) of `videos` (grid + reliability)."""
    from heads import fusion_data
    from heads.postprocess import smooth

    audio = "audio" if "audio" in fusion.modalities else None
    fvs = [fusion_data.fusion_video({m: output_video(v, outputs[m][v.video_id]) for m in fusion.modalities},
                                    audio=audio) for v in videos]
    ws = fusion_data.build_windows(fvs, fusion.streams, fusion.windowing, fusion.cfg.use_pred)
    preds = fusion_data.predict(fusion.model, fvs, ws, device=fusion.device)
    result = {}
    for v in fvs:
        p = preds[v.video_id]
        smoothed = smooth(p.pred_raw, p.valid, fusion.cfg.smoothing)
        ok = p.valid & np.isfinite(smoothed).all(1)
        result[v.video_id] = FusedOutput(np.where(ok[:, None], smoothed, 0.0).astype(np.float32), ok,
                                         np.where(ok[:, None], np.nan_to_num(p.gates), 0.0).astype(np.float32))
    return result


# --------------------------------------------------------------------------- the whole model


@dataclass
class VideoPrediction:
    """Everything predicted for one video on its frame grid; `columns()` is the CSV layout."""

    video_id: str
    fps: float
    num_frames: int
    model: str                                   # the model whose output is `valence`/`arousal`
    pred: np.ndarray                             # [F, 2]
    valid: np.ndarray                            # [F] bool
    per_model: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (pred, valid)
    gates: np.ndarray | None = None              # [F, E]
    gate_names: list[str] = field(default_factory=list)

    def columns(self) -> dict[str, np.ndarray]:
        """frame, time, valence, arousal, <model>_valence/_arousal..., gate_<expert>...; NaN = no prediction."""
        cols: dict[str, np.ndarray] = {"frame": np.arange(self.num_frames),
                                       "time": np.arange(self.num_frames) / self.fps}
        main = _masked(self.pred, self.valid)
        cols["valence"], cols["arousal"] = main[:, 0], main[:, 1]
        for name, (p, ok) in self.per_model.items():
            m = _masked(p, ok)
            cols[f"{name}_valence"], cols[f"{name}_arousal"] = m[:, 0], m[:, 1]
        if self.gates is not None:
            g = _masked(self.gates, self.valid)
            for i, gname in enumerate(self.gate_names):
                cols[f"gate_{gate_column(gname)}"] = g[:, i]
        return cols


def gate_column(name: str) -> str:
    """Expert names such as `face<-audio` as CSV-friendly `face_from_audio`."""
    return name.replace("<-", "_from_")


def _masked(a: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(ok, bool)[:, None], np.asarray(a, np.float64), np.nan)


@dataclass
class Predictor:
    """The selected model (a head, or a fusion plus the heads it reads), loaded once."""

    model: str
    heads: dict[str, TrainedHead]
    fusion: TrainedFusion | None = None

    @property
    def modalities(self) -> list[str]:
        """Feature stores the heads read (fusions add nothing: they read head outputs)."""
        return list(self.heads)

    def predict(self, videos: Mapping[str, Sequence[HeadVideo]]) -> dict[str, VideoPrediction]:
        """`videos[modality]` = the same videos' HeadVideos built from that modality's store."""
        outputs = {m: predict_head(h, videos[m]) for m, h in self.heads.items()}
        grid = list(videos[self.modalities[0]])
        fused = predict_fusion(self.fusion, grid, outputs) if self.fusion is not None else {}
        result = {}
        for v in grid:
            per = {m: (outputs[m][v.video_id].pred[:, :2], outputs[m][v.video_id].valid) for m in self.heads}
            if self.fusion is not None:
                f = fused[v.video_id]
                result[v.video_id] = VideoPrediction(v.video_id, v.fps, v.num_frames, self.model, f.pred, f.valid,
                                                     per, f.gates, list(self.fusion.gate_names))
            else:
                pred, ok = per[self.model]
                result[v.video_id] = VideoPrediction(v.video_id, v.fps, v.num_frames, self.model, pred, ok, per)
        return result


def load_predictor(model: str, head_dirs: Mapping[str, str | Path], fusion_dirs: Mapping[str, str | Path],
                   device: str = "auto") -> Predictor:
    """Load `model` ("face"/"behavior"/"audio" or "fusion_<strategy>") and the heads it needs.

    `head_dirs`: {head: out_dir}; `fusion_dirs`: {"fusion_moe": out_dir, ...}.
    """
    if model in head_dirs:
        return Predictor(model, {model: load_head(model, head_dirs[model], device)})
    if model not in fusion_dirs:
        raise ModelLoadError(f"unknown model {model!r}; choose one of {', '.join([*head_dirs, *fusion_dirs])}")
    fusion = load_fusion(fusion_dirs[model], device)
    missing = [m for m in fusion.modalities if m not in head_dirs]
    if missing:
        raise ModelLoadError(f"{fusion.path / CHECKPOINT}: the fusion reads heads {missing} that this pipeline "
                             "does not train; re-train the fusion with `modalities` among the trained heads")
    heads = {m: load_head(m, head_dirs[m], device) for m in fusion.modalities}
    return Predictor(model, heads, fusion)
