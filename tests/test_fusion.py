"""Fusion models (gated_moe, raav) and the shared fusion run: tiny dims, CPU, a few seconds."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from heads.fusion_gated_moe import GatedMoE, GatedMoEConfig, GatedMoEModel, GatedMoETrainConfig, expert_names
from heads.fusion_inputs import FusionVideo, tokens_from_frames
from heads.fusion_raav import RAAV, RAAVConfig, RAAVModel, RAAVTrainConfig, prior_weights
from heads.fusion_windows import AudioFilter, SecondsWindowing, build_windows
from heads.driver import train_model
from heads.train import TrainConfig
from heads.windows import AudioTrustRule

MODS = ["face", "behavior", "audio"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and far faster on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)


def _split_train(kw: dict) -> tuple[dict, dict]:
    """Model keys and `train:` block keys of a tiny config (the block has the same shape everywhere)."""
    return {k: v for k, v in kw.items() if k not in TRAIN_KEYS}, {k: v for k, v in kw.items() if k in TRAIN_KEYS}


def tiny_moe(**kw) -> GatedMoEConfig:
    base = dict(modalities=MODS, d_model=16, n_heads=2, ff_dim=32, gate_hidden=16, dropout=0.0, window=12, hop=6)
    base.update(kw)
    model, train = _split_train(base)
    return GatedMoEConfig(**model, train=GatedMoETrainConfig(**train))


def moe_batch(b: int = 2, length: int = 10, dims=(6, 5, 4), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"mask": torch.ones(b, length, dtype=torch.bool)}
    for m, d in zip(MODS, dims):
        batch[f"x_{m}"] = torch.randn(b, length, d, generator=g)
        batch[f"valid_{m}"] = torch.ones(b, length, dtype=torch.bool)
    return batch


def test_moe_expert_names_default_every_ordered_pair():
    names = expert_names(tiny_moe())
    assert names[:3] == MODS
    assert len(names) == 3 + 6 and "face<-behavior" in names and "behavior<-face" in names


def test_moe_forward_shapes_and_gates_sum_to_one():
    model = GatedMoEModel(tiny_moe()).eval()
    out = model(moe_batch())
    assert out["pred"].shape == (2, 10, 2)
    assert out["emb"].shape == (2, 10, 16)
    assert out["gates"].shape == (2, 10, 9)
    assert torch.allclose(out["gates"].sum(-1), torch.ones(2, 10), atol=1e-6)


def test_moe_missing_modality_gets_exactly_zero_gate():
    cfg = tiny_moe()
    model = GatedMoEModel(cfg).eval()
    batch = moe_batch()
    batch["valid_audio"][:, 3:6] = False
    batch["valid_face"][1, 8] = False
    gates = model(batch)["gates"]
    names = expert_names(cfg)
    audio_experts = [i for i, n in enumerate(names) if "audio" in n]
    face_experts = [i for i, n in enumerate(names) if "face" in n]
    assert torch.all(gates[:, 3:6, audio_experts] == 0.0)
    assert torch.all(gates[1, 8, face_experts] == 0.0)
    assert torch.all(gates[:, :3, audio_experts] > 0)
    assert torch.allclose(gates.sum(-1), torch.ones(2, 10), atol=1e-6)


def test_moe_missing_frames_are_masked_not_zero_filled():
    """Values behind a missing mask must not change anything: they are never treated as data."""
    model = GatedMoEModel(tiny_moe()).eval()
    batch = moe_batch()
    batch["valid_audio"][:, 2:7] = False
    out1 = model(batch)
    batch["x_audio"][:, 2:7] = 1e3 * torch.randn(2, 5, 4)
    out2 = model(batch)
    assert torch.allclose(out1["pred"], out2["pred"], atol=1e-5)
    assert torch.equal(out1["gates"], out2["gates"])


def test_moe_fully_missing_source_and_no_input_frames_stay_finite():
    model = GatedMoEModel(tiny_moe()).eval()
    batch = moe_batch()
    batch["valid_behavior"][:] = False
    for m in MODS:
        batch[f"valid_{m}"][0, 4] = False
    batch["mask"][1, 8:] = False  # window padding
    out = model(batch)
    assert torch.isfinite(out["pred"]).all()
    assert torch.all(out["gates"][0, 4] == 0) and torch.all(out["gates"][1, 8:] == 0)


def test_moe_mlp_self_experts_and_explicit_pairs():
    cfg = tiny_moe(self_expert_kind="mlp", pairs=[("face", "behavior")], expert_layers=2)
    assert expert_names(cfg) == MODS + ["face<-behavior"]
    out = GatedMoEModel(cfg).eval()(moe_batch())
    assert out["gates"].shape[-1] == 4
    with pytest.raises(ValueError, match="pairs"):
        tiny_moe(pairs=[("face", "face")]).resolved_pairs()


# --------------------------------------------------------------------------- raav


def tiny_raav(**kw) -> RAAVConfig:
    base = dict(d_model=16, latent_heads=2, enc_heads=2, ff_dim=32, dropout=0.0, window_s=2.0, hop_s=1.0)
    base.update(kw)
    model, train = _split_train(base)
    return RAAVConfig(**model, train=RAAVTrainConfig(**train))


def raav_batch(b: int = 2, length: int = 8, tokens: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {"mask": torch.ones(b, length, dtype=torch.bool)}
    for m, d in (("face", 6), ("behavior", 5)):
        batch[f"x_{m}"] = torch.randn(b, length, d, generator=g)
        batch[f"valid_{m}"] = torch.ones(b, length, dtype=torch.bool)
    batch["audio_tokens"] = torch.randn(b, tokens, 7, generator=g)
    batch["audio_valid"] = torch.ones(b, tokens, dtype=torch.bool)
    return batch


def test_raav_priors_init_and_gate_masking():
    cfg = tiny_raav()
    model = RAAVModel(cfg).eval()
    model(raav_batch())  # materialise lazy layers
    assert prior_weights(model) == pytest.approx([0.85, 0.15], abs=1e-6)
    for m in cfg.visual:  # a constant gate MLP leaves the priors alone
        torch.nn.init.zeros_(model.gate[m][-1].weight)
        torch.nn.init.zeros_(model.gate[m][-1].bias)
    batch = raav_batch()
    batch["valid_behavior"][:, 5:] = False
    batch["valid_face"][0, 0] = False
    gates = model(batch)["gates"]
    assert gates.shape == (2, 8, 2)
    assert torch.allclose(gates[1, 1], torch.tensor([0.85, 0.15]), atol=1e-5)
    assert torch.equal(gates[:, 5:], torch.tensor([1.0, 0.0]).expand(2, 3, 2))
    assert torch.equal(gates[0, 0], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="priors"):
        RAAVConfig(priors=[0.85])


def test_raav_visual_only_trains(tmp_path):
    videos = synthetic_set(n_train=2, n_val=1, f=40)
    for v in videos:
        v.emb["behavior"], v.pred["behavior"], v.valid["behavior"] = v.emb["face"], v.pred["face"], v.valid["face"]
    metrics = train_model(RAAV(tiny_raav(audio=None, epochs=1)), videos, tmp_path)
    assert np.isfinite(metrics["ccc_mean"])


def test_raav_masked_audio_equals_no_audio():
    model = RAAVModel(tiny_raav()).eval()
    batch = raav_batch()
    with_audio = model(batch)["pred"]
    batch["audio_valid"][:] = False
    masked = model(batch)["pred"]
    no_audio = model({k: v for k, v in batch.items() if not k.startswith("audio")})["pred"]
    assert not torch.allclose(with_audio, masked)
    assert torch.allclose(masked, no_audio)


def make_video(vid: str, split: str, f: int = 40, fps: float = 10.0, mouth_open: bool = True) -> FusionVideo:
    rng = np.random.default_rng(zlib.crc32(vid.encode()))  # fixed seed per id (hash() is salted)
    v = FusionVideo(vid, split, fps, f)
    for m in MODS:
        v.emb[m] = rng.normal(size=(f, 4)).astype(np.float32)
        v.pred[m] = rng.normal(size=(f, 2)).astype(np.float32)
        v.valid[m] = np.ones(f, bool)
    v.labels = rng.uniform(-1, 1, (f, 2)).astype(np.float32)
    v.label_valid = np.ones(f, bool)
    v.audio_tokens, v.tokens_t0, v.tokens_t1, v.tokens_valid = tokens_from_frames(v.emb["audio"], v.valid["audio"], fps)
    v.face = np.ones(f, np.float32)
    v.mouth_open = np.full(f, mouth_open)
    return v


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_raav_audio_filter_masks_tokens_in_every_split(split):
    windowing = SecondsWindowing(window_s=2.0, hop_s=1.0, audio="audio", audio_filter=AudioFilter(AudioTrustRule(min_open_fraction=0.0, min_open_seconds=1.0, min_face_coverage=0.8)))
    closed = make_video("closed", split, mouth_open=False)
    opened = make_video("open", split, mouth_open=True)
    ws = build_windows([closed, opened], ["face", "behavior"], windowing)
    batch = ws.batch(torch.arange(len(ws.spans)))
    closed_rows = torch.as_tensor(ws.video_of == 0)
    assert batch["audio_tokens"].shape[1] >= 2  # 1-s tokens inside a 2-s window
    assert not batch["audio_valid"][closed_rows].any()
    assert batch["audio_valid"][~closed_rows].any(1).all()


def test_audio_filter_face_coverage_and_missing_signals():
    f = AudioFilter(AudioTrustRule(min_open_fraction=0.0, min_open_seconds=1.0, min_face_coverage=0.8))
    v = make_video("v", "validation")
    v.face[:30] = 0.0
    assert not f.keep(v, 0, 40) and f.keep(v, 30, 40)
    v.face, v.mouth_open = None, None
    assert f.keep(v, 0, 40)  # no reliability signal -> rule not applied


# --------------------------------------------------------------------------- end to end (shared loop + store)


def _smooth_walk(rng, f: int) -> np.ndarray:
    x = np.cumsum(rng.normal(size=f))
    x = np.convolve(x - x.mean(), np.ones(9) / 9, mode="same")
    return (x / (np.abs(x).max() + 1e-6)).astype(np.float32)


def synthetic_set(n_train: int = 6, n_val: int = 3, f: int = 80, fps: float = 10.0, seed: int = 0) -> list[FusionVideo]:
    """Face predicts valence (and noise for arousal), audio the reverse: fusion must combine them."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_train + n_val):
        v = FusionVideo(f"v{k}", "train" if k < n_train else "validation", fps, f)
        val, aro = _smooth_walk(rng, f), _smooth_walk(rng, f)
        v.labels, v.label_valid = np.stack([val, aro], 1), np.ones(f, bool)
        noise = lambda: rng.normal(scale=0.5, size=f).astype(np.float32)  # noqa: E731
        v.pred["face"] = np.stack([val + 0.2 * noise(), noise()], 1)
        v.pred["audio"] = np.stack([noise(), aro + 0.2 * noise()], 1)
        for m in ("face", "audio"):
            v.emb[m] = rng.normal(size=(f, 4)).astype(np.float32)
            v.valid[m] = np.ones(f, bool)
        v.valid["audio"][20:30] = False  # a silent stretch: masked, not zero-filled
        v.audio_tokens, v.tokens_t0, v.tokens_t1, v.tokens_valid = tokens_from_frames(v.emb["audio"], v.valid["audio"], fps)
        out.append(v)
    return out


def test_moe_fusion_beats_every_single_modality(tmp_path):
    from pipeline.metrics import va_score
    from pipeline.store import FeatureStore

    videos = synthetic_set()
    cfg = tiny_moe(modalities=["face", "audio"], window=40, hop=20, lr=5e-3, epochs=8, early_stopping=8, batch_size=6)
    metrics = train_model(GatedMoE(cfg), videos, tmp_path)
    val = [v for v in videos if v.split == "validation"]
    for m in ("face", "audio"):
        single = va_score([v.pred[m] for v in val], [v.labels for v in val], [v.label_valid for v in val])
        assert metrics["raw"]["ccc_mean"] > single["ccc_mean"] + 0.1, (m, metrics, single)
    assert {"raw", "smoothed", "ccc_mean", "best_epoch"} <= set(metrics)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "history.json").exists()
    store = FeatureStore.open(tmp_path / "outputs.zarr")
    assert store.attrs["gate_names"] == ["face", "audio", "face<-audio", "audio<-face"]
    g = store.read_video("v7")
    assert g["pred"].shape == (80, 2) and g["gates"].shape == (80, 4) and g["valid"].all()
    assert np.all(g["gates"][22:28, 1:] == 0)  # no audio -> only the face self expert
    assert np.allclose(g["gates"].sum(1), 1, atol=1e-3)


def test_raav_train_fusion_writes_gates_and_audio_mask(tmp_path):
    from pipeline.store import FeatureStore

    videos = synthetic_set(n_train=3, n_val=2, f=60)
    for v in videos:
        v.emb["behavior"], v.pred["behavior"] = v.emb["face"][:, ::-1].copy(), v.pred["face"][:, ::-1].copy()
        v.valid["behavior"] = np.ones(v.num_frames, bool)
        v.face, v.mouth_open = np.ones(v.num_frames, np.float32), np.zeros(v.num_frames, bool)
        v.mouth_open[:30] = True
    cfg = tiny_raav(epochs=2, lr=1e-3, batch_size=4)
    metrics = train_model(RAAV(cfg), videos, tmp_path)
    assert np.isfinite(metrics["ccc_mean"]) and "raw" in metrics
    g = FeatureStore.open(tmp_path / "outputs.zarr").read_video("v4")
    assert g["gates"].shape == (60, 2) and np.allclose(g["gates"].sum(1), 1, atol=1e-3)
    # windows in the closed-mouth second half are masked on validation too
    assert g["audio_mask"][:10].max() == 0.0 and g["audio_mask"][-10:].min() == 1.0


def test_load_fusion_inputs_from_head_stores_labels_and_reliability(tmp_path):
    from heads.fusion_inputs import load_fusion_inputs
    from pipeline.labels import write_va
    from pipeline.records import Video
    from pipeline.store import FeatureStore

    fps, f = 10.0, 30
    t0 = (np.arange(f) / fps).astype(np.float32)
    lab = np.full((f, 2), 0.5, np.float32)
    write_va(tmp_path / "v.txt", lab, np.ones(f, bool))
    videos = [Video("v", "v.mp4", fps, f + 2, (f + 2) / fps, True, "validation", labels={"va": str(tmp_path / "v.txt")}),
              Video("t", "t.mp4", fps, f, f / fps, False, "test")]
    urls = {}
    for m, ids in (("face", ["v", "t"]), ("audio", ["v"])):
        store = FeatureStore.create(str(tmp_path / m / "outputs.zarr"), extractor=f"head:{m}", fingerprint={"m": m})
        for vid in ids:
            valid = np.ones(f, bool)
            valid[:5] = m != "audio"  # audio head: nothing for the first 5 frames
            store.write_video(vid, {"pred": np.ones((f, 2), np.float32), "emb": np.ones((f, 4), np.float32),
                                    "t0": t0, "t1": t0 + 0.1, "valid": valid})
        urls[m] = str(tmp_path / m / "outputs.zarr")
    rel = FeatureStore.create(str(tmp_path / "rel.zarr"), extractor="reliability", fingerprint={"r": 1})
    mouth = np.zeros(f + 2, bool)
    mouth[10:25] = True
    rel.write_video("v", {"t0": np.arange(f + 2, dtype=np.float32) / fps, "t1": (np.arange(f + 2) + 1) / fps,
                          "valid": np.ones(f + 2, bool), "face": np.ones(f + 2, np.float32), "mouth_open": mouth})
    got = {v.video_id: v for v in load_fusion_inputs(videos, urls, reliability_url=str(tmp_path / "rel.zarr"))}
    v, t = got["v"], got["t"]
    assert v.num_frames == f and v.emb["face"].shape == (f, 4) and v.pred["audio"].shape == (f, 2)
    assert v.valid["face"].all() and not v.valid["audio"][:5].any() and v.valid["audio"][5:].all()
    assert v.label_valid.all() and np.allclose(v.labels, 0.5)
    assert v.mouth_open[10:25].all() and not v.mouth_open[:10].any() and v.face.min() == 1.0
    assert v.audio_tokens.shape == (3, 6) and v.tokens_valid.tolist() == [True, True, True]
    assert not t.valid["audio"].any() and not t.label_valid.any() and t.mouth_open is None
    # a video without audio next to one with audio: windows, tokens and a forward pass stay finite
    ws = build_windows([v, t], ["face"], SecondsWindowing(1.0, 0.5, "audio", AudioFilter(AudioTrustRule(min_open_fraction=0.0, min_open_seconds=0.5, min_face_coverage=0.8))))
    batch = ws.batch(torch.arange(len(ws.spans)))
    assert not batch["audio_valid"][torch.as_tensor(ws.video_of == 1)].any()
    out = RAAVModel(tiny_raav(visual=["face"], priors=[1.0])).eval()(batch)
    assert torch.isfinite(out["pred"]).all()
    with pytest.raises(FileNotFoundError, match="train that head"):
        load_fusion_inputs(videos, {"face": str(tmp_path / "missing.zarr")})


def test_raav_visual_only_learns(tmp_path):
    """No audio track anywhere; face and behaviour each carry both labels (noisily): RAAV must fuse
    them well above a constant predictor (CCC 0) and above the noisier single modality."""
    from pipeline.metrics import va_score

    videos = synthetic_set(n_train=6, n_val=3, f=80, seed=3)
    rng = np.random.default_rng(3)
    for v in videos:
        f = v.num_frames
        v.pred["face"] = (v.labels + rng.normal(scale=0.4, size=(f, 2))).astype(np.float32)
        v.pred["behavior"] = (v.labels + rng.normal(scale=0.6, size=(f, 2))).astype(np.float32)
        v.emb["behavior"], v.valid["behavior"] = rng.normal(size=(f, 4)).astype(np.float32), np.ones(f, bool)
        v.valid["audio"][:] = False
        v.audio_tokens, v.tokens_t0, v.tokens_t1, v.tokens_valid = tokens_from_frames(v.emb["audio"], v.valid["audio"], v.fps)
        v.face, v.mouth_open = np.ones(f, np.float32), np.zeros(f, bool)
    metrics = train_model(RAAV(tiny_raav(epochs=6, lr=3e-3, batch_size=4)), videos, tmp_path)
    val = [v for v in videos if v.split == "validation"]
    behavior = va_score([v.pred["behavior"] for v in val], [v.labels for v in val], [v.label_valid for v in val])
    assert metrics["raw"]["ccc_mean"] > 0.3, metrics
    assert metrics["raw"]["ccc_mean"] > behavior["ccc_mean"], (metrics, behavior)


def expr_set(n_train: int = 6, n_val: int = 3, f: int = 80, fps: float = 10.0, seed: int = 1) -> list[FusionVideo]:
    """EXPR: the class is a function of (valence sign, arousal sign); face logits know valence, audio
    logits arousal, so only a fusion of both recovers the class."""
    rng = np.random.default_rng(seed)
    out = []
    for v in synthetic_set(n_train, n_val, f, fps, seed):
        val, aro = v.labels[:, 0], v.labels[:, 1]
        cls = (val > 0).astype(np.int64) * 2 + (aro > 0).astype(np.int64)  # classes 0..3 of 8
        v.labels, v.label_valid = cls, np.ones(f, bool)
        v.label_valid[:4] = False
        for m, sig in (("face", val), ("audio", aro)):
            logits = rng.normal(scale=0.3, size=(f, 8)).astype(np.float32)
            logits[:, 0] += 2 * sig
            v.pred[m] = logits
        out.append(v)
    return out


@pytest.mark.parametrize("fusion", ["gated_moe", "raav"])
def test_expr_fusion_trains_on_class_logits(tmp_path, fusion):
    """An EXPR fusion reads the heads' 8-class logits, predicts 8 logits, scores macro F1 and
    records the class weights it trained with (inverse square-root frequency)."""
    from pipeline.store import FeatureStore

    videos = expr_set()
    if fusion == "gated_moe":
        cfg = tiny_moe(task="expr", modalities=["face", "audio"], window=40, hop=20, lr=5e-3, epochs=6,
                       early_stopping=6, batch_size=6)
        head = GatedMoE(cfg)
    else:
        for v in videos:
            v.emb["behavior"], v.pred["behavior"] = v.emb["face"].copy(), v.pred["face"].copy()
            v.valid["behavior"] = np.ones(v.num_frames, bool)
        head = RAAV(tiny_raav(task="expr", epochs=6, lr=5e-3, batch_size=4))
    metrics = train_model(head, videos, tmp_path)
    assert {"f1", "accuracy", "class_weights", "train_class_counts"} <= set(metrics)
    counts = np.asarray(metrics["train_class_counts"])
    assert counts[4:].sum() == 0 and counts[:4].min() > 0
    w = np.asarray(metrics["class_weights"])
    assert np.allclose(w[:4] * np.sqrt(counts[:4]), w[0] * np.sqrt(counts[0]), rtol=1e-3)
    g = FeatureStore.open(tmp_path / "outputs.zarr").read_video("v7")
    assert g["pred"].shape == (80, 8) and g["valid"].all()
    # four balanced-ish classes: a constant predictor gets macro F1 <= 1/8 * 2p/(1+p) < 0.06
    assert metrics["f1"] > 0.15, metrics


def test_expr_smoothing_treats_every_class_logit_alike():
    from heads.fusion import smoothing_for
    from heads.postprocess import SmoothingConfig

    assert smoothing_for(tiny_moe()).kernels == (7, 13)  # VA: one kernel per dimension, as configured
    assert smoothing_for(tiny_moe(task="expr")).kernels == (7,) * 8
    own = SmoothingConfig(kernels=(1, 3, 5, 7, 9, 11, 13, 15))
    assert smoothing_for(tiny_moe(task="expr", smoothing=own)) is own


def test_written_outputs_take_output_kernels_while_selection_keeps_kernels():
    """`smoothing.output_kernels` (published submission: 9/11) re-smooth the unsmoothed outputs."""
    from heads.fusion_gated_moe import GatedMoE
    from heads.outputs import HeadOutput
    from heads.postprocess import SmoothingConfig, smooth

    rng = np.random.default_rng(0)
    raw = rng.normal(size=(60, 2)).astype(np.float32)
    valid = np.ones(60, bool)
    valid[20:25] = False
    selected = smooth(raw, valid, SmoothingConfig())
    outs = {"v": HeadOutput(selected, np.zeros((60, 4), np.float32), valid, {"pred_raw": raw})}
    same = GatedMoE(tiny_moe()).final_outputs(outs)
    np.testing.assert_array_equal(same["v"].pred, selected)
    head = GatedMoE(tiny_moe(smoothing=SmoothingConfig(output_kernels=(9, 11))))
    final = head.final_outputs(outs)["v"]
    np.testing.assert_allclose(final.pred, smooth(raw, valid, SmoothingConfig(kernels=(9, 11))), atol=1e-6)
    assert not np.allclose(final.pred, selected)
    np.testing.assert_array_equal(final.extras["pred_raw"], raw)
