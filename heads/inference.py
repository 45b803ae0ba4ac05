"""Run trained heads and a trained fusion on new videos (the in-the-wild `affcache predict` path).

Training writes every model's weights *and* its config into `model.pt` (`heads.train.train_model`:
`state_dict`, `config`, `model` = its registry name, `dims` = the data shapes it was built with),
so a model is rebuilt from its out_dir alone -- no params.yaml, no training data.

Why inference goes through the same head contract as training (`Head.prepare`, `Head.predict`,
`heads.fusion_inputs.fusion_video`) instead of re-implementing it: a new video
must be windowed, masked, overlap-added and smoothed exactly as the validation videos were, or the
validation score says nothing about these predictions. The only difference is the frame grid: a new
video has no labels, so its grid is its decoded frames (frame i <-> t = i / fps).

Heads never see media here either: callers hand in `HeadVideo`s built from feature stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from heads.contract import Head
from heads.data import HeadVideo
from heads.outputs import HeadOutput, clean
from pipeline.labels import frame_times

CHECKPOINT = "model.pt"


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


@dataclass
class TrainedModel:
    """A head or fusion rebuilt from its out_dir (registry entry + config + dims), ready to predict."""

    name: str                 # registry name ("face", ..., "gated_moe", "raav")
    head: Head                # the contract object (config, prepare, predict)
    model: nn.Module
    dims: dict[str, int]
    device: torch.device
    path: Path


def load_model(out_dir: str | Path, kind: str, device: str = "auto", root: str | Path | None = None) -> TrainedModel:
    """Rebuild the model trained into `out_dir`: its registry entry is named in the checkpoint.

    `root`: the project folder that the config's weight fields (the registry's `weights`, e.g. the
    audio head's `backbone_dir`) are relative to, as training read them; None: the working directory."""
    from heads.registry import spec
    from heads.train import resolve_device
    from pipeline.config import ParamsError, build_config

    path = Path(out_dir) / CHECKPOINT
    ckpt = read_checkpoint(out_dir)
    name = str(ckpt.get("model", ""))
    try:
        entry = spec(name, kind)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}; re-train it (`dvc repro`)") from exc
    try:
        cfg = under_project(build_config(entry.config_class(), dict(ckpt["config"]), where=f"{path}: config"),
                            entry.weights, root)
        head = entry.build(cfg)
        dims = {k: int(v) for k, v in dict(ckpt.get("dims", {})).items()}
        model = head.build_model(dims)
        model.load_state_dict(ckpt["state_dict"])  # lazy layers take their shapes from the state dict
    except (ParamsError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{path}: checkpoint does not match the current {entry.module} code ({exc}); "
                             "re-train it (`dvc repro`)") from exc
    dev = resolve_device(device)
    return TrainedModel(name, head, model.eval().to(dev), dims, dev, Path(out_dir))


def under_project(cfg, fields: Sequence[str], root: str | Path | None):
    """`cfg` with its relative path `fields` read under `root` (unchanged when `root` is None)."""
    import dataclasses

    changes = {f: str(Path(root) / v) for f in fields if root is not None
               and isinstance(v := getattr(cfg, f, None), str) and v and not Path(v).is_absolute()}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def load_head(name: str, out_dir: str | Path, device: str = "auto", root: str | Path | None = None) -> TrainedModel:
    """Rebuild the head trained into `out_dir` (data/heads/<name>); it must be head `name`."""
    trained = load_model(out_dir, "head", device, root)
    if trained.name != name:
        raise ModelLoadError(f"{trained.path / CHECKPOINT}: holds the {trained.name!r} head, not {name!r}; "
                             f"re-train it (`dvc repro train_{name}`)")
    return trained


def load_fusion(out_dir: str | Path, device: str = "auto", root: str | Path | None = None) -> TrainedModel:
    """Rebuild the fusion trained into `out_dir` (data/fusion/<name>)."""
    return load_model(out_dir, "fusion", device, root)


# --------------------------------------------------------------------------- heads


@torch.no_grad()
def predict_head(head: TrainedModel, videos: Sequence[HeadVideo]) -> dict[str, HeadOutput]:
    """Per-frame outputs of one head for each video (on its grid; invalid where it has no input)."""
    inputs = head.head.prepare(videos)
    try:
        head.head.check_inputs(inputs, head.dims)
    except ValueError as exc:
        raise ModelLoadError(f"{head.path / CHECKPOINT}: {exc}; extract with the `extract.{head.head.name}` params "
                             "the head was trained with (or re-train: `dvc repro`)") from exc
    outputs = head.head.final_outputs(head.head.predict(head.model, videos, inputs, head.dims, head.device))
    return {v.video_id: clean(outputs[v.video_id]) for v in videos}


# --------------------------------------------------------------------------- fusion


def output_video(video: HeadVideo, output: HeadOutput) -> HeadVideo:
    """A head's output as the fusion reads it from `outputs.zarr` (emb stored float16 there)."""
    t0, t1 = frame_times(video.num_frames, video.fps, video.times)
    o = clean(output)
    feats = {"pred": o.pred, "emb": o.emb.astype(np.float16), "t0": t0, "t1": t1, "valid": o.valid}
    return HeadVideo(video.video_id, video.split, video.fps, video.num_frames, None, feats, video.reliability,
                     video.times)


@torch.no_grad()
def predict_fusion(fusion: TrainedModel, videos: Sequence[HeadVideo],
                   outputs: Mapping[str, Mapping[str, HeadOutput]]) -> dict[str, HeadOutput]:
    """Fuse the heads' outputs (`outputs[modality][video_id]`) of `videos` (grid + reliability).

    Returns cleaned outputs: `pred` smoothed as in training, `extras["gates"]` the gate weights.
    """
    from heads.fusion_inputs import fusion_video

    head = fusion.head
    audio = "audio" if "audio" in head.modalities else None
    fvs = [fusion_video({m: output_video(v, outputs[m][v.video_id]) for m in head.modalities}, audio=audio)
           for v in videos]
    preds = head.final_outputs(head.predict(fusion.model, fvs, head.prepare(fvs), fusion.dims, fusion.device))
    return {v.video_id: clean(preds[v.video_id]) for v in fvs}


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
        """frame, time, valence, arousal, <model>_valence/_arousal..., gate_<expert>...; NaN = no prediction.

        Every valence/arousal column is clipped to [-1, 1], the labels' range (a head's raw output
        can overshoot it), so the per-model columns compare with the main one on the same scale.
        """
        cols: dict[str, np.ndarray] = {"frame": np.arange(self.num_frames),
                                       "time": np.arange(self.num_frames) / self.fps}
        main = np.clip(_masked(self.pred, self.valid), -1.0, 1.0)
        cols["valence"], cols["arousal"] = main[:, 0], main[:, 1]
        for name, (p, ok) in self.per_model.items():
            m = np.clip(_masked(p, ok), -1.0, 1.0)
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
    """The selected model (a head, or a fusion plus the heads it reads), loaded once, for either task.

    `heads` is keyed by modality (`face`, ...), the feature store each head reads; `task` is the
    model's registry task: "va" models give `predict`, "expr" models `probabilities`.
    """

    model: str
    heads: dict[str, TrainedModel]
    fusion: TrainedModel | None = None
    task: str = "va"

    @property
    def modalities(self) -> list[str]:
        """Feature stores the heads read (fusions add nothing: they read head outputs)."""
        return list(self.heads)

    def _forward(self, videos: Mapping[str, Sequence[HeadVideo]], task: str):
        """(each head's outputs by modality, the videos of the first modality, the model's outputs)."""
        if task != self.task:
            raise ModelLoadError(f"{self.model} is a model of task {self.task!r}; it has no {task!r} output")
        outputs = {m: predict_head(h, videos[m]) for m, h in self.heads.items()}
        grid = list(videos[self.modalities[0]])
        final = predict_fusion(self.fusion, grid, outputs) if self.fusion is not None else outputs[self.modalities[0]]
        return outputs, grid, final

    def predict(self, videos: Mapping[str, Sequence[HeadVideo]]) -> dict[str, VideoPrediction]:
        """VA: `videos[modality]` = the same videos' HeadVideos built from that modality's store."""
        outputs, grid, final = self._forward(videos, "va")
        result = {}
        for v in grid:
            per = {m: (outputs[m][v.video_id].pred[:, :2], outputs[m][v.video_id].valid) for m in self.heads}
            f = final[v.video_id]
            gates = (f.extras["gates"], list(self.fusion.head.gate_names)) if self.fusion is not None else (None, [])
            result[v.video_id] = VideoPrediction(v.video_id, v.fps, v.num_frames, self.model, f.pred[:, :2], f.valid,
                                                 per, *gates)
        return result

    def probabilities(self, videos: Mapping[str, Sequence[HeadVideo]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """EXPR: {video_id: (class probabilities [F, 8] (softmax of the logits), valid [F])}."""
        _, grid, final = self._forward(videos, "expr")
        result = {}
        for v in grid:
            o = final[v.video_id]
            z = o.pred.astype(np.float64) - o.pred.max(1, keepdims=True)
            p = np.exp(z)
            result[v.video_id] = ((p / p.sum(1, keepdims=True)).astype(np.float32), o.valid)
        return result


def load_predictor(model: str, head_dirs: Mapping[str, str | Path], fusion_dirs: Mapping[str, str | Path],
                   device: str = "auto", root: str | Path | None = None) -> Predictor:
    """Load `model` (a model name of heads.registry, VA or EXPR: `face`, `fusion_gated_moe`,
    `expr_fusion_gated_moe`, ...) and the heads of its task it reads.

    `head_dirs`: {head registry name (`face`, `expr_face`): out_dir}; `fusion_dirs`: {fusion model
    name (`fusion_gated_moe`, `expr_fusion_gated_moe`): out_dir}; `root` as in `load_model`.
    """
    from heads.registry import by_model_name, task_name

    try:
        entry = by_model_name(model)
    except ValueError:
        entry = None
    if entry is not None and entry.kind == "head" and entry.name in head_dirs:
        return Predictor(model, {entry.base: load_head(entry.name, head_dirs[entry.name], device, root)},
                         task=entry.task)
    if entry is None or entry.kind == "head" or model not in fusion_dirs:
        raise ModelLoadError(f"unknown model {model!r}; choose one of {', '.join([*head_dirs, *fusion_dirs])}")
    fusion = load_fusion(fusion_dirs[model], device, root)
    need = {m: task_name(m, entry.task) for m in fusion.head.modalities}
    missing = [h for h in need.values() if h not in head_dirs]
    if missing:
        raise ModelLoadError(f"{fusion.path / CHECKPOINT}: the fusion reads heads {missing} that this pipeline "
                             "does not train; re-train the fusion with `modalities` among the trained heads")
    return Predictor(model, {m: load_head(h, head_dirs[h], device, root) for m, h in need.items()}, fusion, entry.task)
