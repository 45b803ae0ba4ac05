"""The face head's CCC loss modes: per window (published) or pooled over the batch."""

from __future__ import annotations

import pytest
import torch

from heads.face_temporal import FaceTemporal, FaceTemporalConfig, FaceTemporalModel
from heads.losses import ccc_loss, ccc_loss_per_window


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pad = torch.zeros(3, 12, dtype=torch.bool)
    pad[2, 8:] = True
    yv = torch.ones(3, 12, dtype=torch.bool)
    yv[1, :4] = False
    return {"x": torch.randn(3, 12, 5, generator=g), "y": torch.rand(3, 12, 2, generator=g) * 2 - 1,
            "yv": yv, "pad": pad}


@pytest.mark.parametrize("mode, reference", [("per_window", ccc_loss_per_window), ("pooled", ccc_loss)])
def test_face_loss_mode_selects_the_ccc(mode, reference):
    cfg = FaceTemporalConfig(window=12, d_model=16, layers=1, heads=2, ff=16, head_dim=8, dropout=0.0, loss=mode)
    torch.manual_seed(0)
    model = FaceTemporalModel(5, cfg).eval()
    b = _batch()
    pred, _ = model(b["x"], b["pad"])
    want = reference(pred, b["y"], b["yv"] & ~b["pad"])
    assert torch.allclose(FaceTemporal(cfg).loss()(model, b), want)


def test_face_loss_default_is_published_and_bad_mode_refused():
    assert FaceTemporalConfig().loss == "per_window"
    with pytest.raises(ValueError, match="per_window"):
        FaceTemporal(FaceTemporalConfig(loss="windowed"))
