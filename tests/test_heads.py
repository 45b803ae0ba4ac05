"""Each head learns a tiny synthetic task, writes outputs for every split, and the audio filter obeys
its rules. Tiny dims so the file runs in well under a minute on 2 shared cores."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from heads.audio_pooling import AudioPooling, AudioPoolingConfig, SpeechTopLayers, window_filter
from heads.behavior_temporal import BehaviorTemporal, BehaviorTemporalConfig
from heads.data import HeadVideo, frame_targets
from heads.face_temporal import FaceTemporal, FaceTemporalConfig
from heads.driver import train_model
from heads.train import TrainConfig
from heads.windows import AudioTrustRule, frame_windows
from pipeline.metrics import ccc_numpy
from pipeline.labels import FrameLabels
from pipeline.store import FeatureStore

FPS = 10.0
D = 12


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the CI box is 2 shared cores and tiny ops lose to thread spin-up."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def smooth_labels(rng, f: int) -> np.ndarray:
    """Slow valence/arousal trajectories (period ~15-30 s) in [-0.8, 0.8]."""
    t = np.arange(f) / FPS
    ph = rng.uniform(0, 6.28, 2)
    per = rng.uniform(15, 30, 2)
    return (0.8 * np.sin(2 * np.pi * t[:, None] / per + ph)).astype(np.float32)


def encode(rng, y: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Features that carry the labels linearly plus a little noise."""
    return (y @ proj + 0.05 * rng.normal(size=(len(y), proj.shape[1]))).astype(np.float32)


def make_videos(kind: str, seed: int = 0, task: str = "va") -> list[HeadVideo]:
    """4 train, 1 validation, 1 test (no labels) video with face / behavior / audio store groups."""
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(2, D)).astype(np.float32)
    out = []
    for k, (split, f) in enumerate([("train", 300), ("train", 260), ("train", 320), ("train", 240),
                                    ("validation", 280), ("test", 150)]):
        y = smooth_labels(rng, f)
        valid = np.ones(f, bool)
        valid[:7] = False
        if task == "va":
            lab = FrameLabels("va", np.where(valid[:, None], y, -5.0).astype(np.float32), valid)
        else:
            cls = (y[:, 0] > 0).astype(np.int64) * 4 + (y[:, 1] > 0).astype(np.int64)  # 4 of 8 classes
            lab = FrameLabels("expr", np.where(valid, cls, -1), valid)
        i = np.arange(f)
        if kind == "face":
            present = rng.random(f) > 0.1
            feats = {"emb": encode(rng, y, proj), "t0": (i / FPS).astype(np.float32),
                     "t1": ((i + 1) / FPS).astype(np.float32), "valid": present, "frame_index": i}
        elif kind == "behavior":
            starts = np.arange(0, max(f - 10, 1), 20)          # 2-s hop at 10 fps
            ends = np.minimum(starts + 40, f)                  # 4-s segments
            ys = np.stack([y[s:e].mean(0) for s, e in zip(starts, ends)])
            feats = {"emb": encode(rng, ys, proj), "t0": (starts / FPS).astype(np.float32),
                     "t1": (ends / FPS).astype(np.float32), "valid": np.ones(len(starts), bool),
                     "frame_start": starts, "frame_end": ends}
        else:  # audio: 50 Hz rows
            m = int(f / FPS / 0.02)
            tr = np.arange(m) * 0.02
            yr = y[np.minimum((tr * FPS).astype(int), f - 1)]
            feats = {"emb": encode(rng, yr, proj), "t0": tr.astype(np.float32), "t1": (tr + 0.02).astype(np.float32),
                     "valid": np.ones(m, bool), "vad": np.ones(m, np.float32)}
        out.append(HeadVideo(f"v{k}", split, FPS, f, lab if split != "test" else None, feats, None))
    return out


def tiny_train(**kw) -> TrainConfig:
    base = dict(epochs=40, lr=3e-3, weight_decay=0.0, batch_size=4, early_stopping=100, plateau_patience=100,
                seed=0, device="cpu", progress=False, ema_decay=0.0)
    base.update(kw)
    return TrainConfig(**base)


def train_split_ccc(out_dir, videos, task="va") -> float:
    """CCC (mean of V and A) of the written train-split predictions, read back from outputs.zarr."""
    store = FeatureStore.open(str(out_dir / "outputs.zarr"))
    ps, ts = [], []
    for v in videos:
        if v.split != "train":
            continue
        g = store.read_video(v.video_id)
        y, yv = frame_targets(v, task)
        keep = yv & g["valid"]
        ps.append(g["pred"][keep])
        ts.append(y[keep])
    return float(np.mean(ccc_numpy(np.concatenate(ps), np.concatenate(ts))))


def check_outputs(out_dir, videos, c: int, e: int) -> None:
    store = FeatureStore.open(str(out_dir / "outputs.zarr"))
    assert sorted(store.video_ids()) == sorted(v.video_id for v in videos)  # every split, test included
    for v in videos:
        g = store.read_video(v.video_id)
        f = v.num_frames
        assert g["pred"].shape == (f, c) and g["emb"].shape == (f, e)
        assert g["t0"].shape == g["t1"].shape == g["valid"].shape == (f,)
        assert np.isfinite(g["pred"]).all() and g.attrs["split"] == v.split
    assert (out_dir / "model.pt").exists()
    hist = json.loads((out_dir / "history.json").read_text())
    assert {"epoch", "train_loss", "lr", "seconds"} <= set(hist[0])


def test_face_head_overfits_and_writes_outputs(tmp_path):
    videos = make_videos("face")
    cfg = FaceTemporalConfig(window=64, hop=32, d_model=32, layers=1, heads=2, ff=32, dropout=0.0, head_dim=16,
                             train=tiny_train(epochs=6))
    metrics = train_model(FaceTemporal(cfg), videos, tmp_path)
    check_outputs(tmp_path, videos, 2, 16)
    assert train_split_ccc(tmp_path, videos) > 0.9
    assert {"ccc_valence", "ccc_arousal", "ccc_mean", "num_frames"} <= set(metrics)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert "val_ccc_mean" in hist[0]


def majority_f1(videos) -> float:
    """Validation macro F1 of always predicting the most frequent training class."""
    from pipeline.metrics import macro_f1

    def labels(split):
        return np.concatenate([v.labels.values[v.labels.valid] for v in videos if v.split == split])

    majority = np.bincount(labels("train")).argmax()
    true = labels("validation")
    return float(macro_f1(np.full_like(true, majority), true))


def test_face_head_expr_path_gives_f1(tmp_path):
    videos = make_videos("face", task="expr")
    cfg = FaceTemporalConfig(task="expr", window=64, hop=32, d_model=32, layers=1, heads=2, ff=32, dropout=0.0,
                             head_dim=16, train=tiny_train(epochs=4))
    metrics = train_model(FaceTemporal(cfg), videos, tmp_path)
    assert metrics["f1"] > majority_f1(videos) + 0.2, metrics   # the class is learnable from the features
    check_outputs(tmp_path, videos, 8, 16)
    assert "val_f1" in json.loads((tmp_path / "history.json").read_text())[0]


def test_behavior_mamba_trains_on_cpu(tmp_path):
    videos = make_videos("behavior")
    cfg = BehaviorTemporalConfig(segments=8, stride=4, d_model=32, d_state=4, layers=2, dropout=0.0,
                                 head_hidden=32, train=tiny_train(epochs=8, batch_size=4))
    metrics = train_model(BehaviorTemporal(cfg), videos, tmp_path)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    check_outputs(tmp_path, videos, 2, 32)
    assert train_split_ccc(tmp_path, videos) > 0.9
    assert metrics["num_frames"] > 0


def test_audio_head_overfits_and_masks_videos_without_audio(tmp_path):
    videos = make_videos("audio")
    videos[-1] = replace(videos[-1], features={})          # test video without audio track
    cfg = AudioPoolingConfig(attn_dim=16, dropout=0.0, head_hidden=16, train=tiny_train(epochs=8))
    train_model(AudioPooling(cfg), videos, tmp_path)
    check_outputs(tmp_path, videos, 2, 16)
    assert train_split_ccc(tmp_path, videos) > 0.9
    g = FeatureStore.open(str(tmp_path / "outputs.zarr")).read_video(videos[-1].video_id)
    assert not g["valid"].any() and (g["pred"] == 0).all()


def test_audio_filter_rules():
    f = 200  # 20 s at 10 fps -> 20 bins, windows of 4 bins, hop 2
    v = make_videos("audio")[0]
    i = np.arange(f)
    mouth = np.zeros(f, bool)
    mouth[40:80] = True                     # open 4-8 s only
    face = np.ones(f, np.float32)
    face[120:160] = 0.0                     # no face 12-16 s
    v = replace(v, num_frames=f, reliability={"t0": (i / FPS).astype(np.float32),
                                              "t1": ((i + 1) / FPS).astype(np.float32),
                                              "face": face, "mouth_open": mouth})
    wins = frame_windows(20, 4, 2)
    frame_bin = i // 10
    labelled = np.ones(20, bool)
    labelled[0:3] = False
    w, stats = window_filter(v, wins, frame_bin, labelled, AudioPoolingConfig())
    expect = []
    for s, e in wins:
        open_s = mouth[(frame_bin >= s) & (frame_bin < e)].sum() / FPS
        cov = face[(frame_bin >= s) & (frame_bin < e)].mean()
        ok = labelled[s:e].sum() >= 2 and open_s >= 1.0 and cov >= 0.8
        expect.append(1.0 if ok else 0.0)
    np.testing.assert_array_equal(w, expect)
    assert w[2] == 1.0 and w[0] == 0.0 and stats["no_labels"] == 1 and stats["face"] >= 1
    ww, _ = window_filter(v, wins, frame_bin, labelled, AudioPoolingConfig(filter_mode="weight", filter_weight=0.1))
    assert np.isin(ww, np.float32([0.0, 0.1, 1.0])).all() and (ww == np.float32(0.1)).sum() == (w == 0).sum() - 1
    # VAD rule (off by default) drops windows without speech
    vad_v = replace(v, reliability={**v.reliability, "vad": np.zeros(100, np.float32),
                                    "vad_t0": np.arange(100) * 0.2, "vad_t1": np.arange(1, 101) * 0.2})
    wv, st = window_filter(vad_v, wins, frame_bin, labelled, AudioPoolingConfig(audio_trust=AudioTrustRule(min_speech_fraction=0.3)))
    assert not wv.any() and st["rules_applied"]["vad"]


def _tiny_wavlm(path):
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=D * 2 + 8, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                      conv_dim=(16,) * 7, num_buckets=32, max_bucket_distance=64, do_stable_layer_norm=True,
                      feat_extract_norm="layer")
    model = WavLMModel(cfg).eval()
    model.save_pretrained(path)
    return model


def test_speech_top_layers_reproduce_the_full_model(tmp_path):
    model = _tiny_wavlm(tmp_path / "wavlm")
    with torch.no_grad():
        out = model(torch.randn(2, 8000), output_hidden_states=True)
    k = 2
    top = SpeechTopLayers(str(tmp_path / "wavlm"), k).eval()
    lower = out.hidden_states[-1 - k]
    with torch.no_grad():
        got = top(lower, torch.ones(lower.shape[:2], dtype=torch.bool))
    torch.testing.assert_close(got, out.last_hidden_state, atol=1e-4, rtol=1e-4)


def test_audio_finetune_top_k_trains_backbone_layers(tmp_path):
    _tiny_wavlm(tmp_path / "wavlm")
    rng = np.random.default_rng(0)
    videos = make_videos("audio")[:5]
    videos = [replace(v, features={**v.features, "lower": rng.normal(size=(len(v.features["t0"]), 32)).astype(np.float32)})
              for v in videos]
    cfg = AudioPoolingConfig(attn_dim=16, dropout=0.0, head_hidden=16, finetune_top_k=1,
                             backbone_dir=str(tmp_path / "wavlm"), train=tiny_train(epochs=1, batch_size=8))
    train_model(AudioPooling(cfg), videos, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=False)["state_dict"]
    from transformers import WavLMModel

    ref = WavLMModel.from_pretrained(tmp_path / "wavlm").encoder.layers[-1].state_dict()
    name = "feed_forward.output_dense.weight"
    assert not torch.equal(state[f"top.layers.0.{name}"], ref[name])   # the backbone layer was trained
    check_outputs(tmp_path / "run", videos, 2, 16)


@pytest.mark.parametrize("head", ["behavior", "audio"])
def test_expr_path_behavior_and_audio(tmp_path, head):
    videos = make_videos(head, task="expr")
    if head == "behavior":
        cfg = BehaviorTemporalConfig(task="expr", segments=8, stride=4, d_model=16, d_state=4, layers=1,
                                     head_hidden=16, train=tiny_train(epochs=2))
        metrics = train_model(BehaviorTemporal(cfg), videos, tmp_path)
    else:
        cfg = AudioPoolingConfig(task="expr", attn_dim=8, head_hidden=16, train=tiny_train(epochs=2))
        metrics = train_model(AudioPooling(cfg), videos, tmp_path)
    assert metrics["f1"] > majority_f1(videos) + 0.1, metrics
    check_outputs(tmp_path, videos, 8, 16)


def test_load_head_videos_from_store_and_label_files(tmp_path):
    from heads.data import frame_features, load_head_videos
    from pipeline.labels import write_va
    from pipeline.records import Video

    store = FeatureStore.create(str(tmp_path / "face.zarr"), extractor="test", fingerprint={"t": 1})
    vids = []
    for k, (f_lab, f_dec) in enumerate([(50, 50), (60, 55)]):    # 2nd: labels longer than decoded video
        i = np.arange(f_dec)
        store.write_video(f"v{k}", {"emb": np.full((f_dec, 4), k, np.float32), "t0": (i / 25).astype(np.float32),
                                    "t1": ((i + 1) / 25).astype(np.float32), "valid": np.ones(f_dec, bool)})
        write_va(tmp_path / f"v{k}.txt", np.zeros((f_lab, 2), np.float32), np.ones(f_lab, bool))
        vids.append(Video(f"v{k}", "m.mp4", 25.0, f_dec, f_dec / 25, True, "train", labels={"va": str(tmp_path / f"v{k}.txt")}))
    vids.append(Video("v2", "m2.mp4", 25.0, 40, 1.6, False, "test"))   # no labels, no store group
    hv = load_head_videos(vids, str(tmp_path / "face.zarr"), "va")
    assert [v.num_frames for v in hv] == [50, 60, 40]
    assert hv[1].labels.valid[55:].sum() == 0 and hv[2].labels is None and hv[2].features == {}
    x, m = frame_features(hv[1])
    assert x.shape == (60, 4) and m[:56].all() and not m[56:].any()  # frame 55 snaps (half-row rule)


def test_published_training_defaults_survive_partial_overrides():
    from pipeline.config import build_config

    b = build_config(BehaviorTemporalConfig, {"train": {"epochs": 3}})
    assert b.train.epochs == 3 and b.train.lr == 3e-4 and b.train.early_stopping == 12
    a = AudioPoolingConfig()
    assert (a.train.lr, a.train.ema_decay, a.train.plateau_factor, a.backbone_lr) == (2e-4, 0.998, 0.5, 5e-6)
    f = FaceTemporalConfig()
    assert (f.window, f.hop, f.layers, f.train.lr, f.train.early_stopping, f.train.seed) == (400, 150, 5, 1e-4, 15, 42)


def test_fit_records_why_training_stopped(tmp_path, caplog):
    """The last history row says why training ended; a wall-clock cap is also a logged warning,
    since it makes the result depend on the machine's load."""
    import logging

    from heads.train import Batches, fit

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    model = torch.nn.Linear(4, 1)
    batches = Batches(32, 8, lambda idx: {"x": x[idx], "y": y[idx]}, seed=0)

    def loss_fn(m, b):
        return torch.nn.functional.mse_loss(m(b["x"]), b["y"])

    def run(name, cfg):
        history = fit(model, batches, loss_fn, lambda m: {"ccc_mean": 0.5}, cfg, tmp_path / name, name=name)
        assert json.loads((tmp_path / name / "history.json").read_text()) == json.loads(json.dumps(history))
        return history

    with caplog.at_level(logging.INFO, logger="heads.train"):
        assert run("all", TrainConfig(epochs=3, early_stopping=99, seed=0))[-1]["stopped"] == "epochs"
        assert run("early", TrainConfig(epochs=9, early_stopping=2, seed=0))[-1]["stopped"] == "early_stopping"
    assert "all epoch 2: train_loss=" in caplog.text and "early epoch 2: train_loss=" in caplog.text
    assert "all: stopped after 3 epoch(s): the epoch budget (epochs=3) ran out" in caplog.text
    assert "early: stopped after 3 epoch(s): early stopping, no better validation score in 2 epochs" in caplog.text
    with caplog.at_level(logging.WARNING, logger="heads.train"):
        history = run("capped", TrainConfig(epochs=9, max_minutes=0.0, seed=0))
    assert len(history) == 1 and history[-1]["stopped"] == "max_minutes"
    assert "max_minutes" in caplog.text


@pytest.mark.parametrize("head, cfg", [(FaceTemporal, FaceTemporalConfig), (BehaviorTemporal, BehaviorTemporalConfig),
                                       (AudioPooling, AudioPoolingConfig)])
def test_unknown_task_is_refused_naming_the_config(head, cfg):
    with pytest.raises(ValueError, match=f"{cfg.__name__}.task must be 'va' or 'expr', got 'valence'"):
        head(cfg(task="valence"))


def test_behavior_head_on_cpu_gives_no_kernel_install_advice(capfd) -> None:
    """mamba-ssm cannot be installed without CUDA: a normal CPU run must not print advice to install it."""
    import torch

    from heads.behavior_temporal import BehaviorTemporalConfig, BehaviorTemporalModel

    if torch.cuda.is_available():
        pytest.skip("the advice is right on a CUDA machine")
    model = BehaviorTemporalModel(8, BehaviorTemporalConfig(d_model=16, d_state=4, layers=1, head_hidden=16))
    model(torch.randn(2, 5, 8), torch.zeros(2, 5, dtype=torch.bool))
    captured = capfd.readouterr()
    assert "falling back" not in captured.err + captured.out


def test_registry_expr_entries_have_own_names_sections_and_expr_inputs():
    """Every EXPR model is its VA model's module on EXPR labels, with its own name, params section
    and directory (so VA and EXPR stages invalidate independently); EXPR fusions read EXPR heads."""
    from heads.registry import REGISTRY, by_model_name, model_names, specs

    assert model_names() and not [n for n in model_names() if n.startswith("expr_")]  # the default: VA
    assert set(model_names(None)) == set(model_names()) | set(model_names("expr"))
    assert {"expr_face", "expr_behavior", "expr_audio", "expr_fusion_gated_moe"} <= set(model_names("expr"))
    for s in specs("expr"):
        va = REGISTRY[s.base]
        assert (s.module, s.config, s.head, s.kind) == (va.module, va.config, va.head, va.kind)
        assert s.name == f"expr_{s.base}" and s.params_section.endswith(f".expr_{s.base}")
        assert by_model_name(s.model_name) is s and s.task_overrides() == {"task": "expr"}
    moe = by_model_name("expr_fusion_gated_moe")
    assert moe.inputs == ("heads/expr_face", "heads/expr_behavior", "heads/expr_audio", "features/reliability")
    assert by_model_name("fusion_gated_moe").inputs[0] == "heads/face"


def test_train_stage_fixes_the_task_of_an_expr_section(tmp_path):
    """`train.expr_face` builds task=expr without saying so; a section that says otherwise is an error."""
    from heads.registry import spec
    from pipeline.config import ParamsError, load_params
    from affcache.stages.train import fixed_keys

    p = tmp_path / "params.yaml"
    p.write_text("train:\n  expr_face: {window: 8}\n  face: {task: va}\n  expr_audio: {task: va}\n")
    params = load_params(p)
    s = spec("expr_face")
    cfg = params.build(s.params_section, s.config_class(), **fixed_keys(params, s, s.config_class()))
    assert cfg.task == "expr" and cfg.window == 8
    assert fixed_keys(params, spec("face"), spec("face").config_class()) == {"task": "va"}
    with pytest.raises(ParamsError, match=r"train.expr_audio.task: is 'va', but model 'expr_audio' is the 'expr' entry"):
        fixed_keys(params, spec("expr_audio"), spec("expr_audio").config_class())
