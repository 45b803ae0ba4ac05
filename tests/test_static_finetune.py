"""The static fine-tuning stage kind: a frame encoder trained from random weights on crops and labels,
its weights loaded by the `sun_face` extractor, its stage in the generated graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extractors.registry import declared_static, declared_extractors
from extractors.static_finetune import StaticTrainConfig, crop_sets, lr_at, param_groups, set_trainable, train_static
from extractors.static_model import ARCHS, StaticModel
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
    spec = declared_static()["sun_face"]
    assert spec.modality == "sun_face" and spec.config_class() is StaticTrainConfig
    ex = declared_extractors()["sun_face"]
    assert ex.modality == "sun_face" and ex.weights and ex.crops


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
    from extractors.sun_face import SunFaceConfig, SunFaceExtractor

    cfg = StaticTrainConfig(image_size=32, epochs=2, batch_size=12, early_stopping=5, device="cpu")
    out = tmp_path / "static" / "weights.pth"
    metrics = train_static(videos, cfg, out)
    assert out.is_file() and metrics["epochs"] == 2 and metrics["train_frames"] == 24
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


def test_the_same_crops_give_the_same_weights_file(videos, tmp_path, torch_threads):
    """Dropout and stochastic depth draw from torch's global generator: the run seeds it, so a second
    run in the same process (its generator moved on) writes the same bytes."""
    cfg = StaticTrainConfig(image_size=32, epochs=1, batch_size=12, device="cpu")
    first, second = tmp_path / "a" / "weights.pth", tmp_path / "b" / "weights.pth"
    train_static(videos, cfg, first)
    torch.rand(7)  # the global generator is elsewhere now
    train_static(videos, cfg, second)
    assert first.read_bytes() == second.read_bytes()
    assert (first.parent / "history.json").read_text() == (second.parent / "history.json").read_text()


def test_generated_stage_reads_crops_and_labels_and_feeds_the_extraction():
    """train_static_<name>: index, crop fingerprints, its code and params in; the weights folder out;
    the extraction of its modality depends on the weights, and nothing else of the graph on crops+labels
    through it."""
    import yaml

    from affcache.dvc_yaml import REPO

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    st = stages["train_static_sun_face"]
    assert st["cmd"] == "affcache train-static sun_face" and st["params"] == ["train_static.sun_face"]
    assert {"data/index.json", "data/index.crops.json", "extractors/static_finetune.py",
            "affcache/stages/train_static.py"} <= set(st["deps"])
    assert st["outs"] == ["data/static/sun_face"]
    assert not any(str(o).startswith("data/features") for o in st["outs"])
    ex = stages["extract_sun_face"]
    assert "${extract.sun_face.weights}" in ex["deps"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["extract"]["sun_face"]["weights"] == st["outs"][0]           # the dep is what the stage writes
    assert params["extract"]["sun_face"]["config"]["weights"].startswith(st["outs"][0] + "/")
    assert params["extract"]["sun_face"]["config"]["image_size"] == params["train_static"]["sun_face"]["image_size"]


def test_stage_runs_from_params(videos, tmp_path, monkeypatch, torch_threads):
    """`affcache train-static` reads its params section and writes data/static/<name>/weights.pth."""
    import yaml

    from affcache.stages import train_static
    from pipeline.records import write_index

    monkeypatch.chdir(tmp_path)
    write_index(videos, tmp_path / "data" / "index.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "dataset": {"adapter": "folder", "root": str(tmp_path), "index": "data/index.json"},
        "train_static": {"sun_face": {"image_size": 32, "epochs": 1, "batch_size": 8, "device": "cpu"}}}))
    metrics = train_static.run(tmp_path / "params.yaml", "sun_face")
    assert (tmp_path / "data" / "static" / "sun_face" / "weights.pth").is_file() and metrics["epochs"] == 1
    with pytest.raises(Exception, match="unknown static encoder"):
        train_static.run(tmp_path / "params.yaml", "nothing")


def test_batchnorm_recalibration_takes_the_exact_crop_statistics(videos):
    """After recalibration over every crop in one batch, the first BatchNorm's running mean is the
    mean of its input over those crops (so eval mode normalises with the current weights' statistics)."""
    from extractors.static_finetune import load_images, recalibrate_batchnorm

    cfg = StaticTrainConfig(image_size=32, batch_size=64, bn_recalibration=24)
    model = StaticModel().to(memory_format=torch.channels_last)
    data = crop_sets(videos, cfg)["train"]
    recalibrate_batchnorm(model, data, cfg, torch.device("cpu"), np.random.default_rng(0))
    conv, bn = model.backbone.features[0][0], model.backbone.features[0][1]
    with torch.no_grad():
        expected = conv(load_images(data.files, 32)).mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, atol=1e-4, rtol=1e-4)
    assert bn.momentum == 0.1                                     # the training momentum is restored
