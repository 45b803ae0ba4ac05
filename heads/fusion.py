"""What every fusion shares behind the head contract: inputs from head outputs, windows, predict.

A fusion is a `heads.contract.Head` whose records are `FusionVideo`s (the heads' outputs on the
label grid) and whose bank is a `WindowSet`. Subclasses (heads.fusion_gated_moe, heads.fusion_raav)
supply only the model, the windowing and which streams/gates they have; the training itself is
the one driver (`heads.train.train_model`). Predictions are the published rule: overlapping
windows averaged per frame, then per-dimension smoothing (`pred`; the unsmoothed `pred_raw`, the
gate weights and -- for a model with audio context -- the share of masked-audio windows are kept).
"""

from __future__ import annotations

import abc
from dataclasses import replace
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from heads.contract import TASK_OUTPUTS, Head
from heads.fusion_inputs import FusionVideo, load_fusion_inputs
from heads.fusion_windows import WindowSet, build_windows
from heads.losses import ccc_loss, cross_entropy
from heads.outputs import HeadOutput
from heads.postprocess import SmoothingConfig, smooth
from heads.windows import overlap_add

PREDICT_BATCH = 16  # windows per inference batch


def safe_key_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """`~valid`, except rows with no valid key are left unmasked.

    A fully masked row makes attention return NaN, and 0 * NaN is still NaN in a gate's weighted
    sum. Such rows only occur where the source is missing at every frame of the window: the
    gated mixture then gives that expert weight exactly 0, and dcmmoe's output there is finite.
    """
    kpm = ~valid
    return kpm & ~kpm.all(dim=1, keepdim=True)


class ModalityProjection(nn.Module):
    """[emb ; pred] -> d_model (then LayerNorm and dropout unless `linear`); missing frames are
    zeroed *after* projection.

    Zeroing after projection only keeps padding finite: every consumer also receives the validity
    mask and never treats those zeros as data. LazyLinear because each head's embedding width is
    known only when its store is read. `linear=True` is the published RAAV projector (a LazyLinear
    alone, `multimodal_fusion_model.py`); dcmmoe's published projection has the LayerNorm and dropout.
    """

    def __init__(self, d_model: int, dropout: float, linear: bool = False) -> None:
        super().__init__()
        self.proj = nn.LazyLinear(d_model)
        self.norm = nn.Identity() if linear else nn.LayerNorm(d_model)
        self.drop = nn.Identity() if linear else nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.norm(self.proj(x)))
        return h * valid.unsqueeze(-1).to(h.dtype)


def projected_streams(proj: nn.ModuleDict, batch: dict[str, torch.Tensor], modalities: Sequence[str]
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the window mask, each stream's valid frames within it, each stream projected to d_model by
    `proj[stream]`, a `ModalityProjection`), from a batch of `heads.fusion_windows` (`x_<m>`,
    `valid_<m>`, `mask`): how every fusion reads its input streams."""
    mask = batch["mask"].bool()
    valid = {m: batch[f"valid_{m}"].bool() & mask for m in modalities}
    return mask, valid, {m: proj[m](batch[f"x_{m}"].float(), valid[m]) for m in modalities}


def output_width(cfg: Any) -> int:
    """Outputs per frame of a fusion: its `out_dim` for VA, the 8 class logits for EXPR."""
    task = getattr(cfg, "task", "va")
    return int(cfg.out_dim) if task == "va" else TASK_OUTPUTS[task]


def smoothing_for(cfg: Any) -> SmoothingConfig:
    """The smoothing of a fusion's outputs: `cfg.smoothing` as given for VA (one kernel per
    dimension); for EXPR, `smoothing.kernels` holds one kernel per class or, shorter, its first
    kernel is used for every class (the class logits are one kind of signal: smoothing only some
    of them would bias the arg-max towards the unsmoothed ones)."""
    s = cfg.smoothing
    width = output_width(cfg)
    if getattr(cfg, "task", "va") == "va" or len(s.kernels) >= width or not s.kernels:
        return s
    return replace(s, kernels=(s.kernels[0],) * width)


class FusionHead(Head):
    """Common part of both fusions; `cfg` carries `task`, `use_pred`, `loss_weights`, `mse_weight`,
    `smoothing`, `train`.

    An EXPR fusion (`task: expr`) reads the EXPR heads' outputs (`heads/expr_<modality>`: their
    class logits and embeddings), predicts 8 logits per frame and trains with class-weighted
    cross-entropy; its smoothing (when enabled) is the same moving average over time applied to
    every class logit alike (`smoothing_for`).
    """

    kind: ClassVar[str] = "fusion"
    fill_missing: ClassVar[bool] = True
    select_array: ClassVar[str] = "pred_raw"

    # ------------------------------------------------------------- what a fusion says about itself
    @property
    def modalities(self) -> list[str]:
        """Every head output the fusion reads (per-frame streams plus audio context): its config's
        `modalities`."""
        return list(self.cfg.modalities)

    @property
    @abc.abstractmethod
    def streams(self) -> list[str]:
        """Per-frame streams the model reads as `x_<m>` / `valid_<m>`."""

    @property
    @abc.abstractmethod
    def windowing(self) -> Any:
        """A windowing (`heads.fusion_windows`) with `windows(video)` and its `audio` stream name or None."""

    @property
    @abc.abstractmethod
    def gate_names(self) -> list[str]:
        """Names of the gate columns the model returns, in order."""

    # ------------------------------------------------------------- the contract
    def load(self, records: Sequence, urls: Mapping[str, str]) -> list[FusionVideo]:
        from heads.registry import task_name

        audio = "audio" if "audio" in self.modalities else None
        return load_fusion_inputs(records, {m: urls[f"heads/{task_name(m, self.task)}"] for m in self.modalities},
                                  reliability_url=urls.get("features/reliability"), audio=audio, task=self.task)

    def prepare(self, videos: Sequence[FusionVideo]) -> dict[str, Any]:
        """Inference windows of each split, cut once: {split: (video ids, WindowSet)}.

        Keyed by split, not by video: a fusion batches windows across the videos of one split (the
        frame tables are concatenated), exactly as it is validated.
        """
        out = {}
        for split in dict.fromkeys(v.split for v in videos):
            vs = [v for v in videos if v.split == split]
            out[split] = (tuple(v.video_id for v in vs), build_windows(vs, self.streams, self.windowing, self.cfg.use_pred))
        return out

    def dims(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        return {}  # lazy projections take the head widths at the first batch (and from the checkpoint)

    def build_bank(self, videos, inputs, dims) -> tuple[WindowSet, dict]:
        train = [v for v in videos if v.split == "train"]
        ws = build_windows(train, self.streams, self.windowing, self.cfg.use_pred, train=True)
        return _Bank(ws), {}

    def targets(self, video: FusionVideo) -> tuple[np.ndarray, np.ndarray]:
        f = video.num_frames
        if video.labels is None or video.label_valid is None:
            return (np.zeros((f, 2), np.float32) if self.task == "va" else np.full(f, -1, np.int64)), np.zeros(f, bool)
        return video.labels, video.label_valid

    def materialize(self, model: nn.Module, bank) -> None:
        with torch.no_grad():  # materialise LazyLinear before the loop builds its optimizer
            model(bank.gather(torch.arange(min(2, len(bank)))))

    def loss(self):
        cfg, task, class_weight = self.cfg, self.task, self.class_weight

        def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
            pred = model(batch)["pred"]
            mask = batch["y_valid"] & batch["mask"]
            if task != "va":
                return cross_entropy(pred, batch["y"], mask, class_weight)
            return ccc_loss(pred, batch["y"], mask, weights=cfg.loss_weights, mse_weight=cfg.mse_weight)
        return loss_fn

    @torch.no_grad()
    def predict(self, model, videos, inputs, dims, device) -> dict[str, HeadOutput]:
        """Windows of each split (from `prepare` when it covers the same videos), run, averaged, smoothed."""
        model.eval()
        out: dict[str, HeadOutput] = {}
        for split in dict.fromkeys(v.split for v in videos):
            vs = [v for v in videos if v.split == split]
            ids, ws = inputs.get(split, ((), None))
            if ids != tuple(v.video_id for v in vs):
                ws = build_windows(vs, self.streams, self.windowing, self.cfg.use_pred)
            out.update(self._predict_windows(model, vs, ws, device))
        return out

    def final_outputs(self, outputs: dict[str, HeadOutput]) -> dict[str, HeadOutput]:
        """Re-smooth `pred_raw` with `smoothing.output_kernels` when they differ from the selection's."""
        s = smoothing_for(self.cfg)
        if not s.enabled or s.output_kernels is None:
            return outputs
        final = smoothing_for(replace(self.cfg, smoothing=s.for_outputs()))
        return {vid: replace(o, pred=smooth(o.extras["pred_raw"], o.valid, final)) for vid, o in outputs.items()}

    def output_attrs(self) -> dict:
        return {"gate_names": list(self.gate_names)}

    def summary(self) -> dict:
        return {"fusion": self.name, "gate_names": list(self.gate_names)}

    # ------------------------------------------------------------- inference on one split's windows
    def _predict_windows(self, model: nn.Module, videos: Sequence[FusionVideo], ws: WindowSet,
                         device) -> dict[str, HeadOutput]:
        outs: dict[str, list] = {"pred": [], "emb": [], "gates": []}
        for i in range(0, len(ws.spans), PREDICT_BATCH):
            b = ws.batch(torch.arange(i, min(i + PREDICT_BATCH, len(ws.spans))))
            o = model({k: v.to(device) for k, v in b.items()})
            for key in outs:
                outs[key].extend(o[key].float().cpu().numpy())
        result = {}
        for k, v in enumerate(videos):
            sel = np.flatnonzero(ws.video_of == k)
            wins = [ws.spans[i] for i in sel]
            f = v.num_frames
            if not wins:
                dims = {key: (outs[key][0].shape[-1] if outs[key] else 1) for key in outs}
                z = {key: np.zeros((f, dims[key]), np.float32) for key in outs}
                result[v.video_id] = HeadOutput(z["pred"], z["emb"], np.zeros(f, bool),
                                                {"pred_raw": z["pred"], "gates": z["gates"]})
                continue
            per = {key: overlap_add([outs[key][i] for i in sel], wins, f) for key in outs}
            present = np.zeros(f, bool)
            for m in ws.modalities + ([ws.audio] if ws.audio else []):
                if m in v.valid:
                    present |= v.valid[m]
            valid = present & np.isfinite(per["pred"]).all(1)
            aux = {}
            if ws.audio_kept is not None:
                masked = [np.full(e - s, 0.0 if bool(ws.audio_kept[i]) else 1.0) for i, (s, e) in zip(sel, wins)]
                aux["audio_mask"] = overlap_add(masked, wins, f)[:, 0]
            smoothed = smooth(per["pred"], valid, smoothing_for(self.cfg))
            result[v.video_id] = HeadOutput(smoothed, per["emb"], valid, {"pred_raw": per["pred"], "gates": per["gates"]},
                                            aux)
        return result


class _Bank:
    """A training `WindowSet` seen through the contract's `Bank` protocol."""

    def __init__(self, ws: WindowSet) -> None:
        self.ws = ws

    def __len__(self) -> int:
        return len(self.ws.spans)

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.ws.batch(idx)
