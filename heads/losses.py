"""Losses and ABAW metrics: concordance correlation (CCC) and macro F1.

Why a masked, weighted CCC: labels carry invalid frames (-5 / -1) and windows carry padding, so
every statistic must be computed only over the frames that count. The same weights let the audio
head *down-weight* (instead of drop) windows that the cross-modal filter distrusts.
The validation score is computed the ABAW way (`va_score`): CCC over all validation frames of all
videos concatenated, invalid frames excluded -- never an average of per-video CCCs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

NUM_EXPR_CLASSES = 8
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


def ccc_numpy(pred: np.ndarray, true: np.ndarray) -> float | np.ndarray:
    """float64 reference CCC (population statistics); per column for 2-D input."""
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if p.shape != t.shape:
        raise ValueError(f"ccc_numpy: shapes differ {p.shape} vs {t.shape}")
    if p.shape[0] == 0:
        raise ValueError("ccc_numpy: no valid frame (all invalid) -- nothing to score")
    mp, mt = p.mean(0), t.mean(0)
    cov = ((p - mp) * (t - mt)).mean(0)
    den = p.var(0) + t.var(0) + (mp - mt) ** 2
    out = np.where(den > 0, 2 * cov / np.where(den > 0, den, 1.0), 0.0)
    return float(out) if out.ndim == 0 else out


def _concat(arrays) -> np.ndarray:
    if isinstance(arrays, np.ndarray):
        return arrays
    arrays = list(arrays)
    return np.concatenate([np.asarray(a) for a in arrays]) if arrays else np.zeros((0,))


def va_score(pred, true, valid) -> dict[str, float]:
    """ABAW VA metric: CCC per dimension over ALL frames concatenated, invalid frames excluded.

    Each argument is one array or a sequence of per-video arrays: pred/true [F, 2], valid [F] bool.
    Frames whose prediction is not finite are excluded too (a head that cannot predict a frame marks it).
    """
    p, t, v = _concat(pred).reshape(-1, 2), _concat(true).reshape(-1, 2), _concat(valid).astype(bool).reshape(-1)
    v = v & np.isfinite(p).all(1) & (t > -5 + 1e-6).all(1)
    if not v.any():
        raise ValueError("va_score: no valid frame -- every label is -5/invalid or every prediction is masked")
    c = ccc_numpy(p[v], t[v])
    return {"ccc_valence": float(c[0]), "ccc_arousal": float(c[1]), "ccc_mean": float(c.mean()), "num_frames": int(v.sum())}


def macro_f1(pred, true, num_classes: int = NUM_EXPR_CLASSES) -> float:
    """Mean F1 over all `num_classes` classes (ABAW EXPR), frames with true == -1 excluded.

    A class absent from both truth and prediction scores 0 (as sklearn with labels=range(8),
    zero_division=0): the ABAW metric averages over the 8 classes, not over the classes present.
    """
    p, t = _concat(pred).astype(np.int64).reshape(-1), _concat(true).astype(np.int64).reshape(-1)
    keep = t >= 0
    if not keep.any():
        raise ValueError("macro_f1: no valid frame -- every EXPR label is -1")
    p, t = p[keep], t[keep]
    f1 = []
    for c in range(num_classes):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        den = 2 * tp + fp + fn
        f1.append(2 * tp / den if den > 0 else 0.0)
    return float(np.mean(f1))


def expr_score(logits, true) -> dict[str, float]:
    """EXPR metric dict from per-frame logits [F, 8] (or sequences of them) and labels [F] (-1 invalid)."""
    lg, t = _concat(logits), _concat(true).reshape(-1)
    ok = np.isfinite(lg).all(1)
    pred = np.where(ok, lg.argmax(1) if len(lg) else 0, -1)
    t = np.where(ok, t, -1)
    keep = t >= 0
    if not keep.any():
        raise ValueError("expr_score: no valid frame -- every EXPR label is -1 or every prediction is masked")
    return {"f1": macro_f1(pred, t), "accuracy": float((pred[keep] == t[keep]).mean()), "num_frames": int(keep.sum())}


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over [..., C] logits; targets -1 (and masked-out elements) ignored."""
    t = target.long().clone()
    if mask is not None:
        t[~mask.bool()] = -1
    if not bool((t >= 0).any()):
        raise ValueError("cross_entropy: no valid EXPR label in the batch")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), t.reshape(-1), ignore_index=-1)


def window_task_loss(task: str, loss_weights: Sequence[float], mse_weight: float):
    """Loss for window models whose forward is `model(x, pad) -> (pred, emb)` and whose batches hold
    `y`, `yv` (valid labels) and `pad`: masked CCC (VA) or cross-entropy (EXPR) over the valid,
    unpadded steps of the batch. The face and behavior heads share it."""
    def loss_fn(model: torch.nn.Module, b: dict) -> torch.Tensor:
        pred, _ = model(b["x"], b["pad"])
        mask = b["yv"] & ~b["pad"]
        if task == "va":
            return ccc_loss(pred, b["y"], mask, weights=loss_weights, mse_weight=mse_weight)
        return cross_entropy(pred, b["y"], mask)
    return loss_fn
