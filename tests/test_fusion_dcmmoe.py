"""dcmmoe, the published directed fusion (face queries behavior), and the per-window CCC loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heads.driver import train_model
from heads.fusion_dcmmoe import DCMMOE, DCMMOEConfig, DCMMOEModel, DCMMOETrainConfig
from heads.fusion_inputs import FusionVideo
from heads.losses import ccc, ccc_loss_per_window, va_loss
from heads.positional import sinusoidal_encoding
from heads.registry import spec


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> DCMMOEConfig:
    train = DCMMOETrainConfig(**{k: kw.pop(k) for k in list(kw) if k in DCMMOETrainConfig.__dataclass_fields__})
    base = dict(d_model=16, n_heads=2, layers=2, dropout=0.0, window=12, hop=6)
    base.update(kw)
    return DCMMOEConfig(**base, train=train)


def batch(b: int = 2, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"mask": torch.ones(b, length, dtype=torch.bool)}
    for m, d in (("face", 6), ("behavior", 5)):
        out[f"x_{m}"] = torch.randn(b, length, d, generator=g)
        out[f"valid_{m}"] = torch.ones(b, length, dtype=torch.bool)
    return out


def test_defaults_are_the_published_model():
    cfg = DCMMOEConfig()
    assert (cfg.query, cfg.source, cfg.layers, cfg.n_heads, cfg.d_model) == ("face", "behavior", 5, 8, 256)
    assert (cfg.window, cfg.hop, cfg.loss, cfg.smoothing.enabled) == (400, 150, "per_window", False)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.early_stopping) == (1e-4, 0.01, 8, 15)
    model = DCMMOEModel(cfg)
    assert len(model.layers) == 5 and model.layers[0].attn.num_heads == 8
    assert spec("dcmmoe").model_name == "fusion_dcmmoe" and spec("gated_moe").kind == "fusion"


def test_forward_shapes_and_single_expert_gate():
    model = DCMMOEModel(tiny()).eval()
    b = batch()
    b["valid_face"][0, :3] = False
    out = model(b)
    assert out["pred"].shape == (2, 10, 2) and out["emb"].shape == (2, 10, 16) and out["gates"].shape == (2, 10, 1)
    assert out["gates"][0, :3].sum() == 0 and bool((out["gates"][1] == 1).all())


def test_invalid_behavior_frames_are_masked_not_attended():
    model = DCMMOEModel(tiny()).eval()
    b = batch()
    b["valid_behavior"][:, 4:7] = False
    ref = model(b)["pred"]
    b["x_behavior"][:, 4:7] = 100.0  # what an invalid frame holds must not matter
    assert torch.allclose(model(b)["pred"], ref, atol=1e-6)
    b["x_behavior"][:, 0] += 1.0       # a valid key/value frame does
    assert not torch.allclose(model(b)["pred"], ref)


def test_every_layer_adds_positions_to_q_k_and_v_and_keeps_behavior_fixed():
    """Each layer's attention gets Q = face state + PE and K = V = projected behavior + PE (the same
    behavior rows in every layer); the face state is updated by the outer residual."""
    model = DCMMOEModel(tiny(layers=3)).eval()
    b = batch()
    seen: list[tuple] = []
    layer_io: list[tuple] = []
    for layer in model.layers:
        layer.attn.register_forward_pre_hook(lambda mod, args: seen.append(tuple(a.detach() for a in args[:3])))
        layer.register_forward_hook(lambda mod, args, out: layer_io.append((args[0].detach(), out.detach())))
    model(b)
    kv = model.proj["behavior"](b["x_behavior"], b["valid_behavior"])
    pe = sinusoidal_encoding(10, 16).unsqueeze(0)
    assert len(seen) == 3
    for i, (q, k, v) in enumerate(seen):
        assert torch.allclose(k, kv + pe, atol=1e-6) and torch.allclose(v, kv + pe, atol=1e-6)
        assert torch.allclose(q, layer_io[i][0] + pe, atol=1e-6)
        if i:
            prev_in, prev_out = layer_io[i - 1]
            assert torch.allclose(layer_io[i][0], prev_in + prev_out, atol=1e-6)


def test_per_window_ccc_is_the_mean_of_window_cccs():
    g = torch.Generator().manual_seed(1)
    pred, true = torch.randn(3, 8, 2, generator=g), torch.randn(3, 8, 2, generator=g)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2] = False  # an empty window is left out of the mean
    want = torch.stack([1 - ccc(pred[i], true[i], mask[i]) for i in range(2)]).mean()
    got = ccc_loss_per_window(pred, true, mask)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(va_loss(pred, true, mask, (0.5, 0.5), 0.0, "pooled"), got)
    with pytest.raises(ValueError, match="per_window"):
        va_loss(pred, true, mask, (0.5, 0.5), 0.0, "windowed")
    with pytest.raises(ValueError, match="no window"):
        ccc_loss_per_window(pred, true, torch.zeros_like(mask))


def _videos(n_train: int = 3, n_val: int = 2, f: int = 40) -> list[FusionVideo]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n_train + n_val):
        v = FusionVideo(f"v{k}", "train" if k < n_train else "validation", 10.0, f)
        y = np.cumsum(rng.normal(scale=0.1, size=(f, 2)), 0).clip(-1, 1).astype(np.float32)
        v.labels, v.label_valid = y, np.ones(f, bool)
        for m in ("face", "behavior"):
            v.pred[m] = (y + rng.normal(scale=0.3, size=y.shape)).astype(np.float32)
            v.emb[m] = rng.normal(size=(f, 4)).astype(np.float32)
            v.valid[m] = np.ones(f, bool)
        out.append(v)
    return out


def test_dcmmoe_trains_through_the_driver(tmp_path):
    metrics = train_model(DCMMOE(tiny(epochs=2)), _videos(), tmp_path)
    assert np.isfinite(metrics["ccc_mean"]) and metrics["gate_names"] == ["face<-behavior"]
    assert (tmp_path / "model.pt").exists()


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="differ"):
        DCMMOE(tiny(source="face"))
    with pytest.raises(ValueError, match="loss"):
        DCMMOE(tiny(loss="mean"))
