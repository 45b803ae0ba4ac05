"""CCC / F1: the metric decides model selection, so it is checked against a float64 reference."""

import numpy as np
import pytest
import torch

from heads.losses import ccc, ccc_loss, cross_entropy
from pipeline.metrics import ccc_numpy, expr_score, macro_f1, va_score


def test_ccc_matches_float64_reference():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(500, 2))
    p = 0.6 * t + rng.normal(scale=0.5, size=(500, 2)) + 0.1
    ref = ccc_numpy(p, t)
    got = ccc(torch.tensor(p, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # the independent textbook formula
    for d in range(2):
        cov = np.cov(p[:, d], t[:, d], bias=True)[0, 1]
        want = 2 * cov / (p[:, d].var() + t[:, d].var() + (p[:, d].mean() - t[:, d].mean()) ** 2)
        assert abs(ref[d] - want) < 1e-12


def test_ccc_mask_equals_subset():
    rng = np.random.default_rng(1)
    p, t = rng.normal(size=(3, 40, 2)), rng.normal(size=(3, 40, 2))
    m = rng.random((3, 40)) > 0.3
    got = ccc(torch.tensor(p), torch.tensor(t), torch.tensor(m)).numpy()
    np.testing.assert_allclose(got, ccc_numpy(p[m], t[m]), atol=1e-5)


def test_constant_prediction_and_truth_give_zero_not_nan():
    t = torch.randn(100, 2)
    c = ccc(torch.zeros(100, 2), t)
    assert torch.isfinite(c).all() and torch.allclose(c, torch.zeros(2), atol=1e-6)
    assert ccc_numpy(np.zeros(50), np.random.randn(50)) == 0.0
    assert ccc_numpy(np.random.randn(50), np.ones(50)) == 0.0   # constant truth
    assert torch.isfinite(ccc(torch.randn(50), torch.ones(50)))
    assert ccc_numpy(np.ones(5), np.ones(5)) == 0.0            # both constant: defined, no NaN


def test_all_invalid_raises_clear_error():
    with pytest.raises(ValueError, match="no valid"):
        ccc(torch.randn(10, 2), torch.randn(10, 2), torch.zeros(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="no valid frame"):
        va_score(np.zeros((10, 2)), np.full((10, 2), -5.0), np.ones(10, bool))
    with pytest.raises(ValueError, match="no valid"):
        macro_f1(np.zeros(5), np.full(5, -1))


def test_ccc_loss_weights_and_mse():
    p, t = torch.randn(200, 2), torch.randn(200, 2)
    c = ccc(p, t)
    want = 0.7 * (1 - c[0]) + 0.3 * (1 - c[1])
    assert torch.allclose(ccc_loss(p, t, weights=(0.7, 0.3)), want, atol=1e-6)
    with_mse = ccc_loss(p, t, weights=(0.7, 0.3), mse_weight=0.1)
    assert torch.allclose(with_mse, want + 0.1 * ((p - t) ** 2).mean(), atol=1e-5)


def test_va_score_concatenates_all_videos():
    rng = np.random.default_rng(2)
    ts = [rng.normal(size=(n, 2)) for n in (30, 70)]
    ps = [t + rng.normal(scale=0.3, size=t.shape) for t in ts]
    vs = [np.ones(30, bool), rng.random(70) > 0.2]
    s = va_score(ps, ts, vs)
    allp = np.concatenate(ps)[np.concatenate(vs)]
    allt = np.concatenate(ts)[np.concatenate(vs)]
    ref = ccc_numpy(allp, allt)
    assert s["ccc_valence"] == pytest.approx(ref[0]) and s["ccc_arousal"] == pytest.approx(ref[1])
    assert s["ccc_mean"] == pytest.approx(ref.mean()) and s["num_frames"] == len(allp)


def test_macro_f1_over_8_classes():
    t = np.array([0, 0, 1, 1, 2, -1])
    p = np.array([0, 1, 1, 1, 2, 5])
    f1 = [2 / 3, 0.8, 1.0] + [0.0] * 5  # classes 3..7 absent: 0
    assert macro_f1(p, t) == pytest.approx(np.mean(f1))
    logits = np.eye(8)[p]
    assert expr_score(logits, t)["f1"] == pytest.approx(np.mean(f1))
    loss = cross_entropy(torch.randn(6, 8), torch.tensor(t))
    assert torch.isfinite(loss)


def test_class_weights_inverse_sqrt_frequency_mean_one():
    from heads.losses import class_weights

    counts = np.array([400, 100, 25, 0, 100, 100, 100, 100])
    w = class_weights(counts)
    assert w[0] / w[1] == pytest.approx(0.5) and w[1] / w[2] == pytest.approx(0.5)  # n^-0.5
    assert (w * counts).sum() / counts.sum() == pytest.approx(1.0)  # average weight per training frame
    assert w[3] == pytest.approx(w.max())  # an absent class: finite, the largest present weight
    assert np.allclose(class_weights(counts, "none")[counts > 0], 1.0)
    assert class_weights(counts, "inverse")[2] / class_weights(counts, "inverse")[0] == pytest.approx(16.0)
    with pytest.raises(ValueError, match="class weighting must be one of none, inv_sqrt, inverse"):
        class_weights(counts, "focal")
    with pytest.raises(ValueError, match="no labelled training frame"):
        class_weights(np.zeros(8))


def test_weighted_cross_entropy_matches_manual_weighted_mean():
    from heads.losses import cross_entropy, weighted_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, generator=g)
    target = torch.tensor([[0, 1, 2, -1, 3], [3, 3, 0, 1, 2]])
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    cw = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 1.0, 1.0, 1.0])
    keep = (target >= 0) & mask
    ce = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none")
    want = (ce * cw[target[keep]]).sum() / cw[target[keep]].sum()
    assert float(cross_entropy(logits, target, mask, cw)) == pytest.approx(float(want), rel=1e-5)
    assert float(weighted_cross_entropy(logits, target, mask.float(), cw)) == pytest.approx(float(want), rel=1e-5)
