"""The static fine-tuning stage kind: a frame encoder trained from random weights on crops and labels,
its weights loaded by the `face_sun` extractor, its stage in the generated graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extractors.registry import declared_static, declared_extractors
from extractors.static_finetune import (ARCHS, StaticModel, StaticTrainConfig, crop_sets, lr_at, param_groups,
                                        set_trainable, train_static)
from pipeline.labels import write_va
from pipeline.records import Video


def _video(root: Path, vid: str, split: str, n: int, seed: int) -> Video:
    """`n` 32-px crops whose brightness carries the valence, and their VA labels."""
    import cv2

    rng = np.random.default_rng(seed)
    crops = root / vid
    crops.mkdir(parents=True)
    va = rng.uniform(-0.9, 0.9, (n, 2)).astype(np.float32)
    for i in range(n):
        img = np.full((32, 32, 3), int(127 + 120 * va[i, 0]), np.uint8)
        cv2.imwrite(str(crops / f"{i + 1:05d}.jpg"), img)
    labels = root / f"{vid}.txt"
    write_va(labels, va)
    return Video(vid, f"{vid}.mp4", 10.0, n, n / 10, False, split, crops_dir=str(crops), labels={"va": str(labels)})


@pytest.fixture()
def videos(tmp_path):
    return [_video(tmp_path, "a", "train", 12, 0), _video(tmp_path, "b", "train", 12, 1),
            _video(tmp_path, "c", "validation", 8, 2)]


def test_declared_as_a_stage_kind_and_an_extractor():
    spec = declared_static()["face_sun"]
    assert spec.modality == "face_sun" and spec.config_class() is StaticTrainConfig
    ex = declared_extractors()["face_sun"]
    assert ex.modality == "face_sun" and ex.weights and ex.crops


def test_published_schedule_defaults():
    cfg = StaticTrainConfig()
    assert (cfg.arch, cfg.image_size, cfg.embedding_dim) == ("efficientnet_b1", 224, 256)
    assert (cfg.weight_decay, cfg.lr_max, cfg.lr_min, cfg.cycle_epochs) == (1e-4, 5e-3, 1e-4, 5)
    assert (cfg.unfreeze_start, cfg.unfreeze_per_epoch, cfg.lr_decay, cfg.early_stopping) == (7, 1, 0.85, 10)
    assert ARCHS["efficientnet_b4"][2] == 380 and "vit_b_16" in ARCHS
    # warm-up rises to lr_max, the cycle falls back to lr_min and restarts every 5 epochs
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(1, cfg) == pytest.approx(5e-3)
    assert lr_at(5.999, cfg) == pytest.approx(1e-4, abs=1e-6) and lr_at(6, cfg) == pytest.approx(5e-3)


def test_gradual_unfreezing_and_discriminative_rates():
    cfg = StaticTrainConfig()
    model = StaticModel("efficientnet_b1")
    assert set_trainable(model, 0, cfg) == 7
    assert model.out.weight.requires_grad and not model.backbone.features[0][0].weight.requires_grad
    assert set_trainable(model, 1, cfg) == 8
    n_all = len(model.layers())
    assert set_trainable(model, 50, cfg) == n_all and all(p.requires_grad for p in model.parameters())
    factors = [g["factor"] for g in param_groups(model, cfg)]
    assert factors[0] == 1.0 and factors[2] == pytest.approx(0.85 ** 2)
    assert {g["factor"] for g in param_groups(model, StaticTrainConfig(discriminative_lr=False))} == {1.0}
    # every parameter sits in exactly one unfreezing unit
    ids = [id(p) for g in param_groups(model, cfg) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_vit_layers_cover_every_parameter():
    model = StaticModel("vit_b_16")
    ids = [id(p) for layer in model.layers() for p in layer.parameters()]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_crop_sets_follow_splits_and_step(videos):
    sets = crop_sets(videos, StaticTrainConfig(frame_step=2))
    assert len(sets["train"].files) == 12 and len(sets["validation"].files) == 4
    assert sets["train"].targets.shape == (12, 2)


def test_trains_from_random_weights_and_the_extractor_loads_them(videos, tmp_path, torch_threads):
    from extractors.face_sun import SunFaceConfig, SunFaceExtractor

    cfg = StaticTrainConfig(image_size=32, epochs=3, batch_size=8, early_stopping=5, device="cpu")
    out = tmp_path / "static" / "weights.pth"
    metrics = train_static(videos, cfg, out)
    assert out.is_file() and metrics["epochs"] == 3 and metrics["train_frames"] == 24
    assert np.isfinite(metrics["val_ccc_mean"])
    assert (out.parent / "history.json").is_file()

    ex = SunFaceExtractor(SunFaceConfig(weights=str(out), image_size=32, device="cpu", cpu_freeze=False,
                                        source="crops"))
    ex.load()
    saved = torch.load(out, weights_only=True)["state_dict"]
    assert torch.equal(ex.model.embedding.weight.cpu(), saved["embedding.weight"])
    prepared = ex.prepare(videos[2])
    rows = ex.compute(videos[2], prepared)
    prepared.close()
    assert rows["emb"].shape == (8, 256) and rows["valid"].all() and np.abs(rows["emb"]).max() <= 1
    assert ex.fingerprint()["weights"].startswith("sha256:")
    with pytest.raises(Exception, match="trained at 32 px"):
        SunFaceExtractor(SunFaceConfig(weights=str(out), image_size=64, device="cpu")).load()
