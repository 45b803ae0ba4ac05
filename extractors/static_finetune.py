"""Fine-tuning a frame-level (static) face encoder on the dataset's face crops: crops + labels -> weights.

Why here and not in heads/: this is the one stage outside the extraction stages that reads images
(README, "Static fine-tuning"). Heads read the feature cache only; an encoder that must first learn
its task from the crops (the SUN team's ABAW 2024 video branch, profile `sun2024`) is trained by a
stage of its own, `train_static_<name>`, that writes *weights*, never features. The face extractor
declared with the same modality (`extractors/sun_face.py`) then loads those weights and writes its
own store, and its extraction stage depends on the weights file, so the heads after it still read
only the cache.

Model (`StaticModel`, extractors/static_model.py): a torchvision backbone (EfficientNet-B1 at 224 px by default; EfficientNet-B4
at 380 px or ViT-B/16 at 224 px selectable: which one the published system kept is not published) ->
a 256-d embedding layer (Linear -> BatchNorm -> Tanh) -> a 2-d VA output (tanh) or 8 expression
logits. Backbones start from random weights unless `init_weights` names a torchvision state dict (an
ImageNet checkpoint a user downloaded themselves: nothing is downloaded here).

Schedule (the published `va_challenge/training_config.py` values are the defaults): AdamW with weight
decay 1e-4; a linear warm-up to `lr_max`, then cyclic cosine from `lr_max` (5e-3) down to `lr_min`
(1e-4) every `cycle_epochs` (5) epochs; gradual unfreezing, the top `unfreeze_start` (7) layers
trainable at the start and one more each epoch; discriminative learning rates (each layer's rate
x0.85 of the one above it); early stopping after `early_stopping` (10) epochs without a better
validation CCC. Loss: 1 - mean CCC over valence and arousal (VA), cross-entropy (EXPR).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from extractors.base import ExtractorError, torch_device
from extractors.registry import register_static
from extractors.static_model import ARCHS, StaticModel, load_backbone_init, save_weights
from pipeline.files import atomic_write_json

log = logging.getLogger(__name__)

@dataclass
class StaticTrainConfig:
    """params `train_static.<name>`: the published schedule by default (module docstring).

    image_size: the crops' long side is resized to it and zero-padded to a square.
    frame_step: every `frame_step`-th labelled frame of a video is used (neighbouring frames are
        near duplicates); max_frames_per_video caps each video's share (None: no cap).
    discriminative_lr: x`lr_decay` per layer from the top; README ("Static fine-tuning") says why the
        demo switches it off.
    bn_recalibration: not published. Before each validation the BatchNorm statistics are recomputed
        over this many training crops with the current weights: the running averages lag weights that
        move fast, and from random weights they lag so far that the eval-mode network returns nearly
        the same embedding for every face (measured on the demo: validation CCC ~0 while the train
        loss fell). 0 keeps the running averages.
    """

    arch: str = "efficientnet_b1"
    image_size: int = 224
    embedding_dim: int = 256
    init_weights: str | None = None    # a torchvision state dict of the backbone (e.g. ImageNet); None = random
    task: str = "va"
    epochs: int = 100
    batch_size: int = 64
    weight_decay: float = 1e-4
    lr_max: float = 5e-3
    lr_min: float = 1e-4
    warmup_epochs: int = 1
    cycle_epochs: int = 5
    unfreeze_start: int = 7
    unfreeze_per_epoch: int = 1
    discriminative_lr: bool = True
    lr_decay: float = 0.85
    early_stopping: int = 10
    frame_step: int = 1
    max_frames_per_video: int | None = None
    bn_recalibration: int = 256        # train crops whose statistics reset BatchNorm before validation; 0 = off
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ExtractorError(f"train_static arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.task not in ("va", "expr"):
            raise ExtractorError(f"train_static task {self.task!r}: use 'va' or 'expr'")
        for key in ("image_size", "embedding_dim", "epochs", "batch_size", "cycle_epochs", "frame_step",
                    "unfreeze_start"):
            if int(getattr(self, key)) < 1:
                raise ExtractorError(f"train_static {key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.lr_min <= self.lr_max:
            raise ExtractorError(f"train_static: need 0 < lr_min <= lr_max, got {self.lr_min}, {self.lr_max}")


def build_model(cfg: StaticTrainConfig) -> StaticModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = StaticModel(cfg.arch, cfg.embedding_dim, cfg.task)
    if cfg.init_weights:
        load_backbone_init(model, cfg.init_weights)
    return model


# -------------------------------------------------------------------------------------------- data
@dataclass
class CropSet:
    """Labelled crops of one split: file paths and targets ([N,2] VA or [N] classes)."""

    files: list[Path]
    targets: np.ndarray


def crop_sets(videos: Sequence, cfg: StaticTrainConfig) -> dict[str, CropSet]:
    """Every labelled frame that has a crop, per split (train / validation), subsampled by `frame_step`."""
    from extractors.face_detection import crop_files
    from pipeline import labels as plabels

    files: dict[str, list[Path]] = {"train": [], "validation": []}
    targets: dict[str, list[np.ndarray]] = {"train": [], "validation": []}
    for v in videos:
        if v.split not in files or cfg.task not in v.labels or not v.crops_dir:
            continue
        lab = plabels.read_indexed_labels(v, cfg.task)
        crops = crop_files(v)
        keep = [i for i in sorted(crops) if i < len(lab.valid) and lab.valid[i]][::cfg.frame_step]
        if cfg.max_frames_per_video:
            keep = keep[:cfg.max_frames_per_video]
        files[v.split] += [crops[i] for i in keep]
        targets[v.split].append(lab.values[keep])
    out = {}
    for split in files:
        y = np.concatenate(targets[split]) if targets[split] else np.zeros((0, 2) if cfg.task == "va" else 0)
        out[split] = CropSet(files[split], y.astype(np.float32 if cfg.task == "va" else np.int64))
    return out


def load_images(files: Sequence[Path], size: int) -> torch.Tensor:
    """Crops -> float [N,3,size,size], letterboxed and ImageNet-normalised (as the face extractor does),
    channels_last: EfficientNet's depthwise convolutions train ~4x faster so on the CPU (measured here)."""
    from extractors.images import IMAGENET_MEAN, IMAGENET_STD, letterbox_u8, normalize, read_rgb

    x = normalize(letterbox_u8([read_rgb(p) for p in files], size), IMAGENET_MEAN, IMAGENET_STD)
    return x.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------- schedule
def lr_at(epoch_pos: float, cfg: StaticTrainConfig) -> float:
    """The learning rate at a (fractional) epoch: linear warm-up lr_min -> lr_max over `warmup_epochs`,
    then a cosine from lr_max to lr_min repeated every `cycle_epochs`."""
    if epoch_pos < cfg.warmup_epochs:
        return cfg.lr_min + (cfg.lr_max - cfg.lr_min) * epoch_pos / cfg.warmup_epochs
    phase = ((epoch_pos - cfg.warmup_epochs) % cfg.cycle_epochs) / cfg.cycle_epochs
    return cfg.lr_min + 0.5 * (cfg.lr_max - cfg.lr_min) * (1 + math.cos(math.pi * phase))


def set_trainable(model: StaticModel, epoch: int, cfg: StaticTrainConfig) -> int:
    """Gradual unfreezing: the top `unfreeze_start + epoch * unfreeze_per_epoch` layers train; returns that count."""
    layers = model.layers()
    n = min(len(layers), cfg.unfreeze_start + epoch * cfg.unfreeze_per_epoch)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers[:n]:
        for p in layer.parameters():
            p.requires_grad_(True)
    return n


def param_groups(model: StaticModel, cfg: StaticTrainConfig) -> list[dict]:
    """One group per layer, top first, with its learning-rate factor (x lr_decay per layer down when
    `discriminative_lr`); frozen layers keep their group (their parameters get no gradient)."""
    groups = []
    for depth, layer in enumerate(model.layers()):
        factor = cfg.lr_decay ** depth if cfg.discriminative_lr else 1.0
        groups.append({"params": list(layer.parameters()), "factor": factor})
    return groups


# ------------------------------------------------------------------------------------------- train
def _ccc(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    pm, tm = pred.mean(0), true.mean(0)
    pv, tv = pred.var(0, unbiased=False), true.var(0, unbiased=False)
    cov = ((pred - pm) * (true - tm)).mean(0)
    return 2 * cov / (pv + tv + (pm - tm) ** 2 + 1e-8)


def _loss(model: StaticModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model.head(model(x))
    if model.task == "va":
        return 1 - _ccc(out, y).mean()
    return nn.functional.cross_entropy(out, y)


@torch.no_grad()
def recalibrate_batchnorm(model: StaticModel, data: CropSet, cfg: StaticTrainConfig, device: torch.device,
                          rng: np.random.Generator) -> None:
    """Reset every BatchNorm's running statistics to their exact average over `cfg.bn_recalibration`
    random training crops under the current weights (see `StaticTrainConfig.bn_recalibration`)."""
    n = min(cfg.bn_recalibration, len(data.files))
    if n < 2:
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    pick = rng.choice(len(data.files), n, replace=False)
    for s in range(0, n, cfg.batch_size):
        idx = pick[s:s + cfg.batch_size]
        if len(idx) > 1:
            model(load_images([data.files[i] for i in idx], cfg.image_size).to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


@torch.no_grad()
def _score(model: StaticModel, data: CropSet, cfg: StaticTrainConfig, device: torch.device) -> float:
    """Validation CCC mean (VA) or accuracy (EXPR) over every validation crop."""
    model.eval()
    outs = []
    for s in range(0, len(data.files), cfg.batch_size):
        x = load_images(data.files[s:s + cfg.batch_size], cfg.image_size).to(device)
        outs.append(model.head(model(x)).float().cpu())
    if not outs:
        return float("nan")
    pred, y = torch.cat(outs), torch.from_numpy(data.targets)
    if cfg.task == "va":
        return float(_ccc(pred, y).mean())
    return float((pred.argmax(1) == y).float().mean())


def train_static(videos: Sequence, cfg: StaticTrainConfig, out: Path) -> dict[str, Any]:
    """Fine-tune a `StaticModel` on the labelled crops of `videos`; writes `out` (best-validation weights),
    `history.json` and `metrics.json` beside it; returns the metrics."""
    cfg.validate()
    sets = crop_sets(videos, cfg)
    train, val = sets["train"], sets["validation"]
    if not train.files:
        raise ExtractorError(f"train_static: no labelled '{cfg.task}' crop in the train split (crops need "
                             "`crops_dir` in the index and labels)")
    device = torch_device(cfg.device)
    model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
    groups = param_groups(model, cfg)
    opt = torch.optim.AdamW([{"params": g["params"], "lr": cfg.lr_min * g["factor"]} for g in groups],
                            weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    # dropout and stochastic depth draw from torch's global generator, which torch seeds from the OS
    # at import: seeded here, the same crops give the same weights run to run
    torch.manual_seed(cfg.seed)
    steps = max(1, math.ceil(len(train.files) / cfg.batch_size))
    best, best_epoch, history = -math.inf, -1, []
    for epoch in range(cfg.epochs):
        trainable = set_trainable(model, epoch, cfg)
        model.train()
        order = rng.permutation(len(train.files))
        total = 0.0
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            lr = lr_at(epoch + step / steps, cfg)
            for pg, g in zip(opt.param_groups, groups):
                pg["lr"] = lr * g["factor"]
            x = load_images([train.files[i] for i in idx], cfg.image_size).to(device)
            y = torch.from_numpy(train.targets[idx]).to(device)
            loss = _loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if cfg.bn_recalibration:
            recalibrate_batchnorm(model, train, cfg, device, rng)
        score = _score(model, val, cfg, device) if val.files else -total
        history.append({"epoch": epoch, "train_loss": total / steps, "val_score": score, "trainable_layers": trainable,
                        "lr_end": lr_at(epoch + 1, cfg)})
        log.info("train_static epoch %d: loss %.4f, validation %.4f (%d layers trainable)", epoch,
                 total / steps, score, trainable)
        if score > best:
            best, best_epoch = score, epoch
            save_weights(model, cfg.image_size, out)
        elif epoch - best_epoch >= cfg.early_stopping:
            history[-1]["stopped"] = "early_stopping"
            break
    metrics = {"best_epoch": best_epoch, "epochs": len(history), "train_frames": len(train.files),
               "validation_frames": len(val.files),
               ("val_ccc_mean" if cfg.task == "va" else "val_accuracy"): best, "config": asdict(cfg)}
    atomic_write_json(out.parent / "history.json", history)
    atomic_write_json(out.parent / "metrics.json", metrics)
    return metrics


WEIGHTS_FILE = "weights.pth"  # inside the stage's folder data/static/<name>


@register_static("sun_face", modality="sun_face", config=StaticTrainConfig)
class SunFaceStatic:
    """The SUN team's frame-level face encoder (profile `sun2024`), fine-tuned on the crops; the
    `sun_face` extractor (`extractors/sun_face.py`) loads what it writes."""

    @staticmethod
    def train(videos: Sequence, cfg: StaticTrainConfig, out_dir: Path) -> dict[str, Any]:
        return train_static(videos, cfg, Path(out_dir) / WEIGHTS_FILE)
