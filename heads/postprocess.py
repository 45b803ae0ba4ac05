"""Post-processing of per-frame predictions: temporal smoothing and weighted late fusion.

Both are published steps (`src_audio_and_fusion/`): a per-dimension moving average
(valence k=7, arousal k=13, replicate padding) applied after overlapping windows are averaged, and
a weighted average of several prediction sets whose weights are searched on validation (pair grid
step 0.05 plus Dirichlet(1) samples for combinations of up to 3 sets).
Arousal gets the wider kernel because it changes more slowly than valence in Aff-Wild2 labels.

Two weight searches (`LateFusionConfig.search`). "published" is `scripts/predictions_fusion.py` of
SMIL-SPCRAS/CVPRW-26: every subset of up to `max_combination` sets is fitted on its own (one weight
vector for valence and arousal alike, or one per dimension with its opt-in `--channelwise` flag),
and the ONE subset with the best mean CCC (ties: arousal, then valence) serves both dimensions.
"flexible" (this project's variant) lets each dimension pick its own subset and weights from the
same candidates, always per dimension.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.metrics import ccc_numpy

DIMENSIONS = ("valence", "arousal")
LATE_FUSION = "late_fusion"  # the model name of the weighted late fusion (metrics, export)


@dataclass
class SmoothingConfig:
    """Moving-average kernel per output dimension (frames, odd). 1 (or 0) disables a dimension.

    `kernels` smooth the validation outputs that select the epoch during training; `output_kernels`
    (None: the same) smooth the outputs written after training, which evaluate scores and export
    submits. Why two: the published system selected with 7/13 and smoothed its submission run's
    outputs with 9/11 (`test_mm_cfg_va_s2s.yaml`).
    """

    kernels: tuple[int, ...] = (7, 13)
    output_kernels: tuple[int, ...] | None = None
    enabled: bool = True

    def for_outputs(self) -> "SmoothingConfig":
        """The smoothing of the written outputs (`output_kernels` when set)."""
        return self if self.output_kernels is None else replace(self, kernels=self.output_kernels, output_kernels=None)


def _smooth_channel(x: np.ndarray, ok: np.ndarray, k: int) -> np.ndarray:
    """Centered mean over the valid frames of a k-window; edges replicate the nearest valid value.

    Why invalid-aware: a NaN or a masked frame must neither spread into its neighbours nor be
    overwritten (it stays as it was, so validity keeps its meaning downstream).
    """
    if k <= 1 or not ok.any():
        return x.copy()
    if k % 2 == 0:
        raise ValueError(f"smoothing kernel {k} must be odd so the window is centered; fix `smoothing.kernels`")
    r = k // 2
    idx = np.flatnonzero(ok)
    first, last = x[idx[0]], x[idx[-1]]
    # replicate padding of the valid signal's edges (torch 'replicate' when the edges are valid)
    vals = np.concatenate([np.full(r, first), np.where(ok, x, 0.0), np.full(r, last)])
    w = np.concatenate([np.ones(r), ok.astype(np.float64), np.ones(r)])
    cs_v = np.concatenate([[0.0], np.cumsum(vals)])
    cs_w = np.concatenate([[0.0], np.cumsum(w)])
    n = len(x)
    sums = cs_v[k : k + n] - cs_v[:n]
    cnts = cs_w[k : k + n] - cs_w[:n]
    out = x.astype(np.float64).copy()
    out[ok] = sums[ok] / cnts[ok]
    return out


def smooth(pred: np.ndarray, valid: np.ndarray | None = None, cfg: SmoothingConfig | None = None) -> np.ndarray:
    """Per-dimension moving average of one video's predictions [F, C] -> [F, C] float32.

    `valid` [F] marks frames that hold a prediction; non-finite values count as invalid too.
    Columns beyond `len(cfg.kernels)` are left unchanged.
    """
    cfg = cfg or SmoothingConfig()
    p = np.asarray(pred, np.float64)
    if p.ndim != 2:
        raise ValueError(f"smooth: predictions must be [frames, dims], got shape {p.shape}")
    if not cfg.enabled:
        return p.astype(np.float32)
    base = np.ones(len(p), bool) if valid is None else np.asarray(valid, bool)
    out = p.copy()
    for c, k in enumerate(cfg.kernels[: p.shape[1]]):
        ok = base & np.isfinite(p[:, c])
        out[:, c] = _smooth_channel(p[:, c], ok, int(k))
    return out.astype(np.float32)


SEARCHES = ("published", "flexible")


@dataclass
class LateFusionConfig:
    """Weight search for a weighted average of prediction sets (defaults: `predictions_fusion.py`'s CLI).

    search: "published" (one subset for both dimensions, see the module docstring) | "flexible".
    channelwise: published search only: separate valence/arousal weights within the subset (the
        script's opt-in `--channelwise`; its README's example run passes it with 8000 samples).
    n_dirichlet: Dirichlet samples per combination of 3 or more sets (published default 5000).
    seed: the one random generator of the search (published 42).
    """

    search: str = "published"
    channelwise: bool = False
    grid_step: float = 0.05
    n_dirichlet: int = 5000
    alpha: float = 1.0
    max_combination: int = 3
    seed: int = 42
    chunk: int = 512

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ValueError(f"LateFusionConfig.search must be one of {', '.join(SEARCHES)}, got {self.search!r}")


@dataclass
class LateFusionResult:
    """Weights [n_sets, C] (each column sums to 1) and the validation CCC they reach per dimension.

    `subset`: the sets the published search chose (weights of the others are 0); None for flexible.
    """

    names: list[str]
    weights: np.ndarray
    ccc: list[float]
    config: LateFusionConfig = field(default_factory=LateFusionConfig)
    subset: list[str] | None = None

    def to_json(self) -> dict:
        dims = [DIMENSIONS[c] if c < len(DIMENSIONS) else f"dim{c}" for c in range(self.weights.shape[1])]
        out = {
            "models": self.names,
            "weights": {d: {n: float(self.weights[i, c]) for i, n in enumerate(self.names)} for c, d in enumerate(dims)},
            "ccc": {**{d: float(self.ccc[c]) for c, d in enumerate(dims)}, "mean": float(np.mean(self.ccc))},
            "search": asdict(self.config),
        }
        if self.subset is not None:
            out["subset"] = list(self.subset)
        return out

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def candidate_weights(n_sets: int, cfg: LateFusionConfig) -> np.ndarray:
    """[S, n_sets] candidate weight vectors on the simplex.

    Every single set; for each pair a grid of step `grid_step`; for each combination of 3..max
    sets `n_dirichlet` Dirichlet(alpha) samples (seeded, so the search is reproducible).
    """
    rng = np.random.default_rng(cfg.seed)
    cands = [np.eye(n_sets)]
    steps = np.round(np.arange(0.0, 1.0 + 1e-9, cfg.grid_step), 10)
    for i, j in itertools.combinations(range(n_sets), 2):
        w = np.zeros((len(steps), n_sets))
        w[:, i], w[:, j] = steps, 1.0 - steps
        cands.append(w)
    for r in range(3, min(cfg.max_combination, n_sets) + 1):
        for combo in itertools.combinations(range(n_sets), r):
            w = np.zeros((cfg.n_dirichlet, n_sets))
            w[:, list(combo)] = rng.dirichlet(np.full(r, cfg.alpha), size=cfg.n_dirichlet)
            cands.append(w)
    return np.concatenate(cands, axis=0)


def search_weights(
    preds: Sequence[np.ndarray], true: np.ndarray, valid: np.ndarray | None = None,
    names: Sequence[str] | None = None, cfg: LateFusionConfig | None = None,
) -> LateFusionResult:
    """Search weights maximising validation CCC (`cfg.search`: "published" or "flexible").

    `preds`: per set, [N, C] predictions over the same N concatenated validation frames;
    `true` [N, C]; `valid` [N]. Frames where any set is non-finite are excluded from the search.
    """
    cfg = cfg or LateFusionConfig()
    P = np.stack([np.asarray(p, np.float64) for p in preds])  # [K, N, C]
    t = np.asarray(true, np.float64)
    K, N, C = P.shape
    names = list(names) if names is not None else [f"set{i}" for i in range(K)]
    ok = np.ones(N, bool) if valid is None else np.asarray(valid, bool).copy()
    ok &= np.isfinite(P).all(axis=(0, 2)) & np.isfinite(t).all(1)
    if not ok.any():
        raise ValueError("late fusion: no validation frame where every prediction set and the label are valid")
    if cfg.search == "published":
        return _published_search(P[:, ok], t[ok], names, cfg)
    cands = candidate_weights(K, cfg)
    weights, scores = np.zeros((K, C)), []
    for c in range(C):
        pc, tc = P[:, ok, c], t[ok, c]
        best, best_score = None, -np.inf
        for s in range(0, len(cands), cfg.chunk):
            w = cands[s : s + cfg.chunk]
            fused = pc.T @ w.T  # [N, S]
            sc = np.atleast_1d(ccc_numpy(fused, np.broadcast_to(tc[:, None], fused.shape)))
            i = int(np.argmax(sc))
            if sc[i] > best_score:
                best, best_score = w[i], float(sc[i])
        weights[:, c] = best
        scores.append(best_score)
    return LateFusionResult(names=names, weights=weights, ccc=scores, config=cfg)


def _published_candidates(m: int, cfg: LateFusionConfig, rng: np.random.Generator):
    """Candidate (valence, arousal) weight pairs of one subset of `m` sets, in the published order.

    Returns (Wv [Sv, m], Wa [Sa, m], iv [S], ia [S]): candidate k is (Wv[iv[k]], Wa[ia[k]]). One set:
    weight 1. Two: the grid of step `grid_step`, shared, or every (valence, arousal) grid pair when
    channel-wise. Three or more: `n_dirichlet` Dirichlet samples (channel-wise: two independent
    draws, paired in order), then the uniform vector and each one-hot, shared. `rng` is consumed in
    the published order, so the search repeats the script's candidates for the same seed.
    """
    if m == 1:
        one = np.ones((1, 1))
        return one, one, np.zeros(1, int), np.zeros(1, int)
    if m == 2:
        x = np.arange(0.0, 1.0 + 1e-9, cfg.grid_step)
        grid = np.stack([x, 1.0 - x], 1)
        g = len(grid)
        if cfg.channelwise:
            return grid, grid, np.repeat(np.arange(g), g), np.tile(np.arange(g), g)
        return grid, grid, np.arange(g), np.arange(g)
    alpha = np.full(m, cfg.alpha)
    base = rng.dirichlet(alpha, size=cfg.n_dirichlet)
    extra = np.concatenate([np.full((1, m), 1.0 / m), np.eye(m)])
    if cfg.channelwise:
        base2 = rng.dirichlet(alpha, size=cfg.n_dirichlet)
        wv, wa = np.concatenate([base, extra]), np.concatenate([base2, extra])
        idx = np.arange(len(wv))
        return wv, wa, idx, idx
    w = np.concatenate([base, extra])
    idx = np.arange(len(w))
    return w, w, idx, idx


def _ccc_of_weights(P: np.ndarray, t: np.ndarray, W: np.ndarray) -> np.ndarray:
    """CCC of the fused prediction P^T w against t for every row w of W, from the sets' moments.

    P [m, N], t [N], W [S, m] -> [S]. The fused mean, variance and covariance with t are linear and
    quadratic forms in w, so S candidates cost O(S m^2) after one pass over the frames, not S passes.
    """
    mu, mt = P.mean(1), t.mean()
    D = P - mu[:, None]
    cov = D @ D.T / P.shape[1]           # [m, m] population covariance of the sets
    ct = D @ (t - mt) / P.shape[1]       # [m] covariance of each set with t
    vt = float(((t - mt) ** 2).mean())
    mp, vp, cp = W @ mu, np.einsum("sm,mn,sn->s", W, cov, W), W @ ct
    den = vp + vt + (mp - mt) ** 2
    return np.where(den > 0, 2 * cp / np.where(den > 0, den, 1.0), 0.0)


def _published_search(P: np.ndarray, t: np.ndarray, names: list[str], cfg: LateFusionConfig) -> LateFusionResult:
    """`predictions_fusion.py`: the best candidate of every subset (sizes 1..max_combination, in
    `itertools.combinations` order), then the best subset, both by (mean CCC, arousal, valence);
    the first wins a tie. P [K, N, 2] and t [N, 2] hold the valid frames only."""
    if P.shape[2] != 2:
        raise ValueError(f"late fusion: the published search fuses valence and arousal, got {P.shape[2]} dimensions")
    K = P.shape[0]
    rng = np.random.default_rng(cfg.seed)
    best_key, best = None, None
    for r in range(1, min(cfg.max_combination, K) + 1):
        for combo in itertools.combinations(range(K), r):
            wv, wa, iv, ia = _published_candidates(r, cfg, rng)
            cv = _ccc_of_weights(P[list(combo), :, 0], t[:, 0], wv)[iv]
            ca = _ccc_of_weights(P[list(combo), :, 1], t[:, 1], wa)[ia]
            va = 0.5 * (cv + ca)
            order = np.lexsort((-np.arange(len(va)), cv, ca, va))  # last = max of (va, a, v), earliest index
            k = int(order[-1])
            key = (float(va[k]), float(ca[k]), float(cv[k]))
            if best_key is None or key > best_key:
                best_key, best = key, (combo, wv[iv[k]], wa[ia[k]])
    combo, w_v, w_a = best
    weights = np.zeros((K, 2))
    weights[list(combo), 0] = w_v / w_v.sum()
    weights[list(combo), 1] = w_a / w_a.sum()
    return LateFusionResult(names=names, weights=weights, ccc=[best_key[2], best_key[1]], config=cfg,
                            subset=[names[i] for i in combo])


def apply_weights(preds: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Channel-wise weighted average [F, C]; where a set is NaN its weight is shared by the others."""
    P = np.stack([np.asarray(p, np.float64) for p in preds])  # [K, F, C]
    W = np.asarray(weights, np.float64)[:, None, :] * np.isfinite(P)
    den = W.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.nan_to_num(P) * W).sum(0) / den
    out[den <= 0] = np.nan
    return out.astype(np.float32)


def late_fusion(
    pred_sets: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    cfg: LateFusionConfig | None = None,
) -> tuple[LateFusionResult, dict[str, np.ndarray]]:
    """Search weights on the videos in `labels`, then fuse every video present in all sets.

    `pred_sets`: {set name: {video_id: [F, C]}}; `labels`: {video_id: (values [F, C], valid [F])}
    for the validation videos. Returns the result (save with `.save(path)`) and {video_id: fused}.
    """
    names = list(pred_sets)
    if not names:
        raise ValueError("late fusion: no prediction set given")
    vids = [v for v in labels if all(v in pred_sets[n] for n in names)]
    if not vids:
        raise ValueError("late fusion: no validation video has predictions from every set; check the inputs")
    preds = [np.concatenate([_fit(pred_sets[n][v], len(labels[v][0])) for v in vids]) for n in names]
    true = np.concatenate([labels[v][0] for v in vids])
    valid = np.concatenate([labels[v][1] for v in vids])
    result = search_weights(preds, true, valid, names, cfg)
    common = set.intersection(*(set(pred_sets[n]) for n in names))
    fused = {}
    for v in sorted(common):
        n_frames = len(labels[v][0]) if v in labels else max(len(pred_sets[n][v]) for n in names)
        fused[v] = apply_weights([_fit(pred_sets[n][v], n_frames) for n in names], result.weights)
    return result, fused


def _fit(pred: np.ndarray, n: int) -> np.ndarray:
    """Cut or NaN-pad a prediction array to n frames (the label grid wins)."""
    p = np.asarray(pred, np.float64)
    if len(p) >= n:
        return p[:n]
    return np.concatenate([p, np.full((n - len(p),) + p.shape[1:], np.nan)])


def write_late_fusion(out_dir: str | Path, fused: Mapping[str, np.ndarray], videos: Sequence,
                      weights: Mapping, clip: float | None = 1.0) -> str:
    """Write the late-fusion predictions of every video (every split) as an outputs.zarr.

    Why a store: `affcache export --model late_fusion` then reads it like any fusion's outputs, so
    the weights searched on validation are applied to the test split and submitted. Values are
    clipped to [-clip, clip] (the published submission clips to the label range); frames no set
    predicted are invalid. There is no embedding: `emb` has width 0.
    """
    from types import SimpleNamespace

    from heads.outputs import HeadOutput, write_outputs

    by_id = {v.video_id: v for v in videos}
    rows, outs = [], {}
    for vid, pred in fused.items():
        if vid not in by_id:
            continue
        v, n = by_id[vid], len(pred)
        p = np.asarray(pred, np.float32)
        ok = np.isfinite(p).all(1)
        if clip is not None:
            p = np.clip(p, -clip, clip)
        outs[vid] = HeadOutput(np.where(ok[:, None], p, 0.0).astype(np.float32), np.zeros((n, 0), np.float32), ok)
        rows.append(SimpleNamespace(video_id=vid, num_frames=n, fps=v.fps, split=v.split, times=v.frame_grid(n)[0]))
    return write_outputs(out_dir, LATE_FUSION, "fusion", rows, outs, config={"weights": dict(weights)}, task="va")
