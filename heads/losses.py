"""Training losses: masked, weighted concordance correlation (CCC) and cross-entropy (torch).

Why a masked, weighted CCC: labels carry invalid frames (-5 / -1) and windows carry padding, so
every statistic must be computed only over the frames that count. The same weights let the audio
head *down-weight* (instead of drop) windows that the cross-modal filter distrusts.
EXPR uses class-weighted cross-entropy (`class_weights`): ABAW's expression labels are heavily
imbalanced (Neutral and Happiness dominate, Fear and Disgust are rare), and macro F1 counts every
class equally, so an unweighted loss learns to ignore the rare classes. Weights are inverse
square-root frequencies (the "inv_sqrt" default): plain inverse frequency over-amplifies classes
with a few hundred frames and makes training noisy; square root is the usual middle ground (as in
class-balanced re-weighting). Focal loss was not chosen: it re-weights by difficulty, not by class,
and adds a second knob whose effect on macro F1 is less direct.
The numpy ABAW metrics that score validation (`va_score`, `expr_score`) live in `pipeline.metrics`:
they are a foundation module, so evaluation and export use the same numbers without importing heads.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

_EPS = 1e-8


def _flatten(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor | None):
    """[..., D] tensors (or [...] for one dimension) -> [N, D] plus weights [N, D]."""
    if pred.shape != true.shape:
        raise ValueError(f"ccc: prediction shape {tuple(pred.shape)} != target shape {tuple(true.shape)}")
    squeeze = pred.dim() == 1
    if squeeze:
        pred, true = pred[:, None], true[:, None]
        mask = mask[:, None] if mask is not None and mask.dim() == 1 else mask
    d = pred.shape[-1]
    p, t = pred.reshape(-1, d).float(), true.reshape(-1, d).float()
    if mask is None:
        w = torch.ones_like(p)
    else:
        w = mask.float()
        if w.dim() == pred.dim() - 1:  # one mask per frame, shared by all dimensions
            w = w.unsqueeze(-1)
        w = w.expand(pred.shape).reshape(-1, d)
    return p, t, w, squeeze


def ccc(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Concordance correlation coefficient per last dimension, over all (masked) elements.

    `pred`, `true`: [..., D] (or 1-D). `mask`: bool or float weights, shaped like `pred` or like
    `pred` without its last dimension. Returns [D] (a scalar for 1-D input).
    A constant prediction gives CCC 0 (not NaN): the denominator carries an epsilon.
    Raises ValueError when no element has positive weight (a silent NaN would poison training).
    """
    p, t, w, squeeze = _flatten(pred, true, mask)
    wsum = w.sum(0)
    if bool((wsum <= 0).any()):
        raise ValueError("ccc: no valid element (all masked/invalid) -- check labels or skip empty windows")
    mp, mt = (w * p).sum(0) / wsum, (w * t).sum(0) / wsum
    vp = (w * (p - mp) ** 2).sum(0) / wsum
    vt = (w * (t - mt) ** 2).sum(0) / wsum
    cov = (w * (p - mp) * (t - mt)).sum(0) / wsum
    out = 2 * cov / (vp + vt + (mp - mt) ** 2 + _EPS)
    return out[0] if squeeze else out


def ccc_loss(
    pred: torch.Tensor,
    true: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: Sequence[float] = (0.5, 0.5),
    mse_weight: float = 0.0,
) -> torch.Tensor:
    """sum_d w_d (1 - CCC_d) / sum_d w_d  + mse_weight * masked MSE.

    Per-dimension weights let the audio head follow the published v 0.7 / a 0.3 split; the small MSE
    term anchors the scale (CCC alone is invariant to nothing but cares little about the offset early on).
    """
    c = ccc(pred, true, mask)
    w = torch.as_tensor(weights, dtype=c.dtype, device=c.device)
    loss = (w * (1 - c)).sum() / w.sum()
    if mse_weight > 0:
        p, t, m, _ = _flatten(pred, true, mask)
        loss = loss + mse_weight * ((m * (p - t) ** 2).sum() / m.sum().clamp_min(1.0))
    return loss


def ccc_loss_per_window(
    pred: torch.Tensor,
    true: torch.Tensor,
    mask: torch.Tensor,
    weights: Sequence[float] = (0.5, 0.5),
    mse_weight: float = 0.0,
) -> torch.Tensor:
    """1 - CCC computed inside each window [B, T, D] and averaged over the windows (published rule).

    The published face and DCMMOE models score every window on its own; windows without a single
    valid frame carry no information and are left out of the average (the published loss counts
    them as a constant 1, which only rescales the loss). A window with one valid frame has zero
    variance: its CCC is 0 through the epsilon, as in `ccc`.
    """
    if pred.shape != true.shape or pred.dim() != 3:
        raise ValueError(f"ccc_loss_per_window: expected equal [B, T, D] shapes, got {tuple(pred.shape)} and "
                         f"{tuple(true.shape)}")
    w = mask.float().unsqueeze(-1).expand(pred.shape) if mask.dim() == 2 else mask.float()
    p, t = pred.float(), true.float()
    cnt = w.sum(1)                                        # [B, D]
    keep = cnt[:, 0] > 0
    if not bool(keep.any()):
        raise ValueError("ccc_loss_per_window: no window holds a valid frame -- check labels or skip empty windows")
    n = cnt.clamp_min(1.0)
    mp, mt = (w * p).sum(1) / n, (w * t).sum(1) / n
    dp, dt = (p - mp.unsqueeze(1)) * w, (t - mt.unsqueeze(1)) * w
    cov = (dp * dt).sum(1) / n
    vp, vt = (dp ** 2).sum(1) / n, (dt ** 2).sum(1) / n
    c = 2 * cov / (vp + vt + (mp - mt) ** 2 + _EPS)       # [B, D]
    dim_w = torch.as_tensor(weights, dtype=c.dtype, device=c.device)
    loss = ((1 - c[keep]) * dim_w).sum(-1).mean() / dim_w.sum()
    if mse_weight > 0:
        loss = loss + mse_weight * ((w * (p - t) ** 2).sum() / w.sum().clamp_min(1.0))
    return loss


def va_loss(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor, weights: Sequence[float],
            mse_weight: float, mode: str = "pooled") -> torch.Tensor:
    """Masked CCC loss over a batch of windows: `pooled` (every valid frame of the batch together) or
    `per_window` (CCC per window, averaged; published face and DCMMOE rule)."""
    if mode == "pooled":
        return ccc_loss(pred, true, mask, weights=weights, mse_weight=mse_weight)
    if mode == "per_window":
        return ccc_loss_per_window(pred, true, mask, weights=weights, mse_weight=mse_weight)
    raise ValueError(f"unknown CCC loss mode {mode!r}: use 'per_window' or 'pooled'")


CLASS_WEIGHTINGS = ("none", "inv_sqrt", "inverse")


def class_weights(counts: Sequence[int] | np.ndarray, weighting: str = "inv_sqrt") -> np.ndarray:
    """Per-class loss weights from training label counts: 1 (none), n_c^-0.5 (inv_sqrt) or n_c^-1 (inverse).

    Normalised so the average weight over the training frames is 1 (the loss keeps its scale and
    the learning rate its meaning). A class with no training frame gets the largest weight of the
    others (it cannot occur in a batch; the value only keeps the vector finite).
    """
    if weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got {weighting!r}")
    n = np.asarray(counts, np.float64)
    if n.sum() <= 0:
        raise ValueError("class_weights: no labelled training frame to count classes from")
    power = {"none": 0.0, "inv_sqrt": 0.5, "inverse": 1.0}[weighting]
    w = np.zeros_like(n)
    present = n > 0
    w[present] = n[present] ** -power
    w = w / ((w * n).sum() / n.sum())
    w[~present] = w[present].max()
    return w.astype(np.float32)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                  class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over [..., C] logits; targets -1 (and masked-out elements) ignored.

    With `class_weight` [C] it is the weighted mean (PyTorch's rule: divided by the summed weights
    of the counted targets), so a batch of rare classes does not get a larger step than any other.
    """
    t = target.long().clone()
    if mask is not None:
        t[~mask.bool()] = -1
    if not bool((t >= 0).any()):
        raise ValueError("cross_entropy: no valid EXPR label in the batch")
    w = None if class_weight is None else class_weight.to(logits.device, torch.float32)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), t.reshape(-1), weight=w, ignore_index=-1)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                           class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with a per-element weight (0 = not counted) and optional per-class weights.

    The audio head weights its windows by the cross-modal filter; the class weight multiplies in.
    """
    t = target.reshape(-1).long()
    w = weight.reshape(-1).float() * (t >= 0).float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), t.clamp_min(0), reduction="none")
    if class_weight is not None:
        w = w * class_weight.to(logits.device, torch.float32)[t.clamp_min(0)]
    return (ce * w).sum() / w.sum().clamp_min(1e-6)


def window_task_loss(task: str, loss_weights: Sequence[float], mse_weight: float,
                     class_weight: torch.Tensor | None = None, mode: str = "pooled"):
    """Loss for window models whose forward is `model(x, pad) -> (pred, emb)` and whose batches hold
    `y`, `yv` (valid labels) and `pad`: masked CCC (VA; `mode` as in `va_loss`) or cross-entropy
    (EXPR, weighted by `class_weight`) over the valid, unpadded steps of the batch. The face and
    behavior heads share it."""
    def loss_fn(model: torch.nn.Module, b: dict) -> torch.Tensor:
        pred, _ = model(b["x"], b["pad"])
        mask = b["yv"] & ~b["pad"]
        if task == "va":
            return va_loss(pred, b["y"], mask, loss_weights, mse_weight, mode)
        return cross_entropy(pred, b["y"], mask, class_weight)
    return loss_fn
