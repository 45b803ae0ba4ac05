"""Smoothing and late fusion (heads.postprocess): known signals, known mixes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.metrics import ccc_numpy
from heads.postprocess import (LateFusionConfig, SmoothingConfig, apply_weights, candidate_weights, late_fusion,
                               search_weights, smooth)


def test_default_kernels_are_published():
    assert SmoothingConfig().kernels == (7, 13)


def test_moving_average_known_signal_and_replicate_padding():
    x = np.arange(10, dtype=np.float64)
    pred = np.stack([x, x], 1)
    out = smooth(pred, cfg=SmoothingConfig(kernels=(3, 5)))
    # interior: a centred mean of a ramp is the ramp itself
    assert out[4:6, 0] == pytest.approx([4, 5])
    assert out[2:8, 1] == pytest.approx(x[2:8])
    # replicate padding: k=3 at frame 0 -> mean(0, 0, 1); k=5 at frame 0 -> mean(0,0,0,1,2)
    assert out[0, 0] == pytest.approx(1 / 3)
    assert out[0, 1] == pytest.approx(3 / 5)
    assert out[-1, 1] == pytest.approx((9 * 3 + 8 + 7) / 5)


def test_kernel_sizes_per_dimension_on_impulse():
    pred = np.zeros((41, 2))
    pred[20] = 1.0
    out = smooth(pred)  # defaults: 7 (valence), 13 (arousal)
    assert np.count_nonzero(out[:, 0]) == 7 and out[20, 0] == pytest.approx(1 / 7)
    assert np.count_nonzero(out[:, 1]) == 13 and out[20, 1] == pytest.approx(1 / 13)


def test_smoothing_is_invalid_aware():
    pred = np.ones((9, 1)) * 2.0
    valid = np.ones(9, bool)
    pred[4] = 100.0
    valid[4] = False
    pred[6] = np.nan
    out = smooth(pred, valid, SmoothingConfig(kernels=(3,)))
    assert out[3, 0] == pytest.approx(2.0) and out[5, 0] == pytest.approx(2.0)  # neither 100 nor NaN spread
    assert out[4, 0] == 100.0 and np.isnan(out[6, 0])  # invalid frames are left as they were
    with pytest.raises(ValueError, match="odd"):
        smooth(pred, cfg=SmoothingConfig(kernels=(4,)))


def test_candidates_cover_pair_grid_and_dirichlet():
    c = candidate_weights(3, LateFusionConfig(n_dirichlet=50))
    assert np.allclose(c.sum(1), 1.0)
    assert len(c) == 3 + 3 * 21 + 50
    assert any(np.allclose(w, [0.35, 0.65, 0]) for w in c)


def test_weight_search_recovers_known_mix_per_dimension():
    rng = np.random.default_rng(0)
    n = 4000
    truth = rng.normal(size=(n, 2))
    a, b = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    # truth = 0.3*A + 0.7*B in valence, 0.8*A + 0.2*B in arousal
    a_, b_ = a.copy(), b.copy()
    truth[:, 0] = 0.3 * a[:, 0] + 0.7 * b[:, 0]
    truth[:, 1] = 0.8 * a[:, 1] + 0.2 * b[:, 1]
    noise = rng.normal(size=(n, 2)) * 3
    res = search_weights([a_, b_, noise], truth, names=["A", "B", "N"], cfg=LateFusionConfig(search="flexible", n_dirichlet=2000))
    assert res.weights[:, 0] == pytest.approx([0.3, 0.7, 0.0], abs=0.03)
    assert res.weights[:, 1] == pytest.approx([0.8, 0.2, 0.0], abs=0.03)
    assert res.ccc[0] > 0.99 and res.ccc[1] > 0.99
    fused = apply_weights([a_, b_, noise], res.weights)
    assert ccc_numpy(fused[:, 0], truth[:, 0]) == pytest.approx(res.ccc[0])


def test_late_fusion_per_video_sets_and_json(tmp_path):
    rng = np.random.default_rng(1)
    labels, sets = {}, {"face": {}, "audio": {}}
    for vid in ("v1", "v2"):
        t = rng.uniform(-1, 1, (300, 2))
        valid = np.ones(300, bool)
        valid[:10] = False
        labels[vid] = (t, valid)
        sets["face"][vid] = np.stack([t[:, 0], rng.normal(size=300)], 1)
        sets["audio"][vid] = np.stack([rng.normal(size=300), t[:, 1]], 1)[:290]  # shorter: NaN-padded
    res, fused = late_fusion(sets, labels, LateFusionConfig(search="flexible", n_dirichlet=10))
    assert res.weights[:, 0] == pytest.approx([1.0, 0.0], abs=0.06)
    assert res.weights[:, 1] == pytest.approx([0.0, 1.0], abs=0.06)
    res.save(tmp_path / "w.json")
    data = json.loads((tmp_path / "w.json").read_text())
    assert set(data["weights"]) == {"valence", "arousal"} and data["models"] == ["face", "audio"]
    assert fused["v1"].shape == (300, 2) and np.isfinite(fused["v1"][:290]).all()
    # arousal rests on the audio set alone, which has no prediction for the last 10 frames
    assert np.isnan(fused["v1"][290:, 1]).all() and np.isfinite(fused["v1"][290:, 0]).all()


def _mix_data(n: int = 3000):
    rng = np.random.default_rng(3)
    a, b, c = (rng.normal(size=(n, 2)) for _ in range(3))
    truth = np.stack([0.3 * a[:, 0] + 0.7 * b[:, 0], 0.8 * a[:, 1] + 0.2 * b[:, 1]], 1)
    return [a, b, c], truth


def test_published_search_fits_one_subset_with_shared_weights():
    """`predictions_fusion.py` without --channelwise: one subset and ONE weight vector for both
    dimensions, so valence and arousal get the same weights even where each would like others."""
    sets, truth = _mix_data()
    res = search_weights(sets, truth, names=["A", "B", "N"], cfg=LateFusionConfig(n_dirichlet=500))
    assert res.subset == ["A", "B"]                               # the noise set is not worth a weight
    assert np.allclose(res.weights[:, 0], res.weights[:, 1])      # shared
    assert res.weights[2].tolist() == [0.0, 0.0] and np.allclose(res.weights.sum(0), 1.0)
    flexible = search_weights(sets, truth, names=["A", "B", "N"], cfg=LateFusionConfig(search="flexible", n_dirichlet=500))
    assert np.mean(flexible.ccc) > np.mean(res.ccc) + 0.01          # per-dimension weights fit this data better
    fused = apply_weights(sets, res.weights)
    assert [ccc_numpy(fused[:, c], truth[:, c]) for c in (0, 1)] == pytest.approx(res.ccc, abs=1e-9)
    assert res.to_json()["subset"] == ["A", "B"] and res.to_json()["search"]["search"] == "published"


def test_published_search_channelwise_flag_fits_each_dimension_in_the_one_subset():
    sets, truth = _mix_data()
    res = search_weights(sets, truth, names=["A", "B", "N"], cfg=LateFusionConfig(channelwise=True, n_dirichlet=500))
    assert res.subset == ["A", "B"]
    assert res.weights[:, 0] == pytest.approx([0.3, 0.7, 0.0], abs=0.026)   # the 0.05 grid of the pair
    assert res.weights[:, 1] == pytest.approx([0.8, 0.2, 0.0], abs=0.026)


def test_published_search_picks_by_mean_ccc_then_arousal_and_repeats_for_a_seed():
    """One subset serves both dimensions: a set that is perfect for valence but useless for arousal
    loses to a set that is good for both, although per dimension the first would win valence."""
    rng = np.random.default_rng(5)
    n = 2000
    truth = rng.normal(size=(n, 2))
    v_only = np.stack([truth[:, 0], rng.normal(size=n)], 1)
    both = truth + rng.normal(size=(n, 2)) * 0.5
    res = search_weights([v_only, both], truth, names=["v_only", "both"], cfg=LateFusionConfig(max_combination=1))
    assert res.subset == ["both"] and res.weights[:, 0].tolist() == [0.0, 1.0]
    cfg = LateFusionConfig(n_dirichlet=200, seed=7)
    sets, truth3 = _mix_data(500)
    one, two = (search_weights(sets, truth3, cfg=cfg) for _ in range(2))
    assert np.array_equal(one.weights, two.weights) and one.ccc == two.ccc
    with pytest.raises(ValueError, match="search must be one of"):
        LateFusionConfig(search="greedy")
