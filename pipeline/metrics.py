"""ABAW metrics in numpy: concordance correlation (CCC), the VA score, macro F1 and the EXPR score.

Why a foundation module: heads select epochs with these numbers and `pipeline.evaluate` reports them,
so both must run the one implementation -- and library code in `pipeline/` must not import `heads`
(README, "Layout"). The VA score is computed the ABAW way: CCC over all frames of all
videos concatenated, invalid frames excluded -- never an average of per-video CCCs.
"""

from __future__ import annotations

import numpy as np

NUM_EXPR_CLASSES = 8


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
