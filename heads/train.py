"""ONE training loop for every head (nanoGPT-style: read it top to bottom).

Why one loop: seeding, AdamW, plateau schedule, ABAW-style early stopping, best-epoch checkpoint,
bf16 autocast on CUDA and the per-epoch JSON log must behave identically for face, behavior, audio
and fusion heads, or their numbers are not comparable. `fit` takes only a model, a `Batches`
sampler over in-RAM tensors, a loss function and a validation function; `heads.driver.train_model`
(the one driver) builds those from any `heads.contract.Head`, then writes outputs and metrics.

Data contract: tensors are built ONCE per run from the in-RAM features; a batch is an index
gather on those tensors (`Batches`), never a store read. `fit` times data vs compute separately
(history: data_seconds, step_seconds) so the bench can prove loading stays < 10 % of a step.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from pipeline.progress import logs_above_bars, progress_bar

log = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    """Optimisation settings; defaults = the published face head (`src_visual_dynamic_model/config_best.toml`)."""

    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 8
    grad_clip: float = 1.0         # max gradient norm; 0 = no clipping
    scheduler: str = "plateau"     # "plateau": ReduceLROnPlateau on the validation metric | "none"
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    plateau_threshold: float = 1e-4  # relative improvement that counts (torch's default)
    plateau_min_lr: float = 0.0
    plateau_groups: list[str] | None = None  # names of the param groups the plateau lowers; None = all
    early_stopping: int = 15
    seed: int = 42
    device: str = "auto"           # "auto" -> cuda if available else cpu
    bf16: bool = True              # autocast bf16, applied on CUDA only
    max_minutes: float | None = None  # wall-clock safety cap: results then depend on machine load
    ema_decay: float = 0.0         # > 0: validate and checkpoint an EMA of the weights (audio: 0.998)
    max_steps_per_epoch: int | None = None  # cap (benchmarks, smoke runs); None = full epoch
    progress: bool = True          # the per-batch bar (the bar over epochs follows -q / TQDM_DISABLE only)
    class_weighting: str = "inv_sqrt"  # EXPR loss: "none" | "inv_sqrt" | "inverse" (heads.losses.class_weights)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a run is repeatable on one machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


SCHEDULERS = ("plateau", "none")


def plateau_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The learning-rate schedule of `cfg` (None for "none").

    `plateau_groups` restricts the plateau to the named param groups (the published audio head
    lowers its head's rate only, never the fine-tuned backbone's): every other group gets its own
    rate as its floor, so ReduceLROnPlateau leaves it where it is.
    """
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"TrainConfig.scheduler must be one of {', '.join(SCHEDULERS)}, got {cfg.scheduler!r}")
    if cfg.scheduler == "none":
        return None
    names = [g.get("name") for g in opt.param_groups]
    if cfg.plateau_groups is not None:
        unknown = sorted(set(cfg.plateau_groups) - set(names))
        if unknown:
            raise ValueError(f"TrainConfig.plateau_groups {unknown}: the model's param groups are {names}")
    floors = [cfg.plateau_min_lr if cfg.plateau_groups is None or g.get("name") in cfg.plateau_groups else g["lr"]
              for g in opt.param_groups]
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.plateau_factor,
                                                      patience=cfg.plateau_patience,
                                                      threshold=cfg.plateau_threshold, min_lr=floors)


class Batches:
    """Seeded mini-batch sampler over `n` in-RAM training samples.

    `make_batch(idx)` gathers a batch (a dict of tensors) from tensors the head built once; the
    permutation comes from a generator seeded with (seed, epoch), so epochs differ but runs repeat.
    """

    def __init__(self, n: int, batch_size: int, make_batch: Callable[[torch.Tensor], dict],
                 seed: int = 42, shuffle: bool = True):
        if n <= 0:
            raise ValueError("Batches: no training sample (every window lacks valid labels or was filtered out) "
                             "-- check the labels, the feature store and the filter settings")
        self.n, self.batch_size, self.make_batch, self.seed, self.shuffle = n, batch_size, make_batch, seed, shuffle

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[dict]:
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        for i in range(0, self.n, self.batch_size):
            yield self.make_batch(order[i:i + self.batch_size])


class EMA:
    """Exponential moving average of floating-point weights (swap in for validation/checkpoint)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)

    def swap(self, model: nn.Module) -> None:
        """Exchange model weights and shadow weights (call twice to undo)."""
        state = model.state_dict()
        with torch.no_grad():
            for k, s in self.shadow.items():
                tmp = state[k].detach().clone()
                state[k].copy_(s)
                s.copy_(tmp)


_STOP_REASONS = {
    "epochs": "the epoch budget (epochs={cfg.epochs}) ran out",
    "early_stopping": "early stopping, no better validation score in {cfg.early_stopping} epochs",
    "max_minutes": "the wall-clock cap max_minutes={cfg.max_minutes}",
}


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def fit(model: nn.Module, train_batches: Batches, loss_fn: Callable[[nn.Module, dict], torch.Tensor],
        val_fn: Callable[[nn.Module], dict], cfg: TrainConfig, out_dir: str | Path, *,
        metric: str = "ccc_mean", param_groups: list[dict] | None = None,
        checkpoint_extra: dict | None = None, name: str = "model") -> list[dict]:
    """Train `model`; keep the epoch with the best validation `metric` (higher is better).

    `val_fn(model)` returns the ABAW-style validation metrics (e.g. `va_score` or `expr_score` dict);
    when there is no validation data it may return {} and the last epoch is kept.
    Writes out_dir/history.json every epoch and out_dir/model.pt at the end; the model is left
    holding the best weights. Returns the history (one dict per epoch); the last row's `stopped`
    says why training ended (`epochs`, `early_stopping`, or `max_minutes`, which is also logged as
    a warning, since a wall-clock cap makes the result depend on the machine's load). `name` (the
    model's name) starts every epoch line and the closing line.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model.to(device)
    groups = param_groups if param_groups is not None else [{"params": [p for p in model.parameters() if p.requires_grad]}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = plateau_scheduler(opt, cfg)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    history: list[dict] = []
    best, best_state, best_epoch, bad_epochs = -math.inf, None, -1, 0
    t_start = time.perf_counter()
    out_of_time = False
    stopped = "epochs"  # why training ended: epochs | early_stopping | max_minutes

    # the bar over epochs shows for every model (fusions too) unless bars are off (-q, TQDM_DISABLE);
    # `cfg.progress` adds the bar over one epoch's batches. Its bound is the epoch budget: early
    # stopping ends sooner. Bars only print to stderr: no result depends on them.
    with progress_bar(total=cfg.epochs, desc=name, unit="epoch", leave=False) as epochs_bar, logs_above_bars():
        for epoch in range(cfg.epochs):
            model.train()
            t_epoch = time.perf_counter()
            data_s = step_s = loss_sum = 0.0
            steps = 0
            total = len(train_batches) if cfg.max_steps_per_epoch is None else min(len(train_batches), cfg.max_steps_per_epoch)
            bar = progress_bar(enabled=cfg.progress, total=total, desc=f"{name} epoch {epoch}", leave=False)
            it = train_batches.epoch(epoch)
            while steps < total:
                t0 = time.perf_counter()
                batch = next(it, None)
                if batch is None:
                    break
                batch = _to_device(batch, device)
                t1 = time.perf_counter()
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                if ema is not None:
                    ema.update(model)
                loss_val = float(loss.detach())  # syncs CUDA, so step time is honest
                t2 = time.perf_counter()
                data_s += t1 - t0
                step_s += t2 - t1
                loss_sum += loss_val
                steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
                if cfg.max_minutes is not None and (t2 - t_start) / 60 > cfg.max_minutes:
                    out_of_time = True
                    break
            bar.close()

            if ema is not None:
                ema.swap(model)
            model.eval()
            with torch.no_grad():
                val = val_fn(model) or {}
            score = val.get(metric, math.nan)
            improved = not math.isnan(score) and score > best
            if improved or (math.isnan(score) and best_state is None) or not val:
                best = score if improved else best
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                best_epoch = epoch
            if ema is not None:
                ema.swap(model)
            bad_epochs = 0 if (improved or not val) else bad_epochs + 1
            if sched is not None and not math.isnan(score):
                sched.step(score)

            row = {"epoch": epoch, "train_loss": loss_sum / max(steps, 1),
                   **{f"val_{k}": v for k, v in val.items()},
                   "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_epoch,
                   "data_seconds": data_s, "step_seconds": step_s, "steps": steps}
            history.append(row)
            epochs_bar.update(1)
            epochs_bar.set_postfix({f"best {metric}": f"{best:.4f}"} if best > -math.inf else {})
            (out_dir / "history.json").write_text(json.dumps(history, indent=1))
            shown = f"{metric}={score:.4f}" if not math.isnan(score) else "no validation"
            log.info("%s epoch %d: train_loss=%.4f %s lr=%.2e", name, epoch, row["train_loss"], shown, row["lr"])
            if val and bad_epochs >= cfg.early_stopping:
                stopped = "early_stopping"
                break
            if out_of_time:
                stopped = "max_minutes"
                log.warning("training stopped by the wall-clock cap max_minutes=%s after %d epoch(s): the result "
                            "depends on this machine's speed and load; remove the cap for a reproducible run",
                            cfg.max_minutes, epoch + 1)
                break

    if history:
        history[-1]["stopped"] = stopped
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        log.info("%s: stopped after %d epoch(s): %s; kept epoch %d (%s=%.4f)", name, len(history),
                 _STOP_REASONS[stopped].format(cfg=cfg), best_epoch, metric, best)

    if best_state is not None:
        model.load_state_dict(best_state)
    torch.save({"state_dict": model.state_dict(), "best_epoch": best_epoch, "best_metric": best,
                "metric": metric, "stopped": stopped, "train_config": asdict(cfg), **(checkpoint_extra or {})}, out_dir / "model.pt")
    return history
