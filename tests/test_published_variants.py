"""The published variants the paper profile selects, each next to this project's own (which the demo
keeps): the face block, the ragged behaviour tail, the schedules, RAAV's projections and head, the
mouth signal read from the CSVs, and the published audio windows (extractor and head).

Each test compares the two variants where the difference is observable, so none passes for both.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from heads.windows import frame_windows


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------- face block
def test_published_face_block_adds_pe_with_dropout_and_keeps_the_encoded_query_as_residual():
    from heads.face_temporal import FaceTemporalConfig, FaceTemporalModel, PosAttentionLayer
    from heads.positional import PositionalAttentionLayer, sinusoidal_encoding

    torch.manual_seed(0)
    cfg = FaceTemporalConfig(window=12, d_model=16, layers=1, heads=2, ff=16, head_dim=8, dropout=0.0, pe_dropout=0.0)
    model = FaceTemporalModel(16, cfg).eval()
    layer = model.layers[0]
    assert isinstance(layer, PositionalAttentionLayer)
    x, pe = torch.randn(2, 12, 16), sinusoidal_encoding(12, 16)
    with torch.no_grad():
        qp = x + pe
        a, _ = layer.attn(qp, qp, qp, need_weights=False)
        h = layer.norm1(a + qp)                                    # LN(attn + (q + PE)): published
        want = layer.norm2(layer.ff(h) + h)
        torch.testing.assert_close(layer(x, x, None, pe), want)
        # the affcache block takes the residual around x instead: another function of the same input
        old = PosAttentionLayer(16, 2, 16, 0.0).eval()
        old.load_state_dict({k.replace("norm1", "ln1").replace("norm2", "ln2"): v for k, v in layer.state_dict().items()})
        assert not torch.allclose(old(x, pe, None), want, atol=1e-3)
    # each positional sum has its own dropout: in training, Q, K and V get different masks
    drop = PositionalAttentionLayer(16, 2, 0.0, pe_dropout=0.5).train()
    seen = []
    drop.pe_drop_q.register_forward_hook(lambda m, i, o: seen.append(o))
    drop.pe_drop_k.register_forward_hook(lambda m, i, o: seen.append(o))
    drop(x, x, None, pe)
    assert not torch.equal(seen[0], seen[1])


def test_face_defaults_are_the_published_input_and_training():
    from heads.face_temporal import FaceTemporal, FaceTemporalConfig, prepare_inputs
    from heads.data import HeadVideo

    cfg = FaceTemporalConfig()
    assert (cfg.block, cfg.face_flag, cfg.pe_dropout, cfg.train.grad_clip, cfg.train.bf16) == ("published", False, 0.1, 0.0, False)
    f = 30
    video = HeadVideo("v", "train", 10.0, f, None, {"emb": np.ones((f, 256), np.float32), "t0": np.arange(f) / 10.0,
                                                     "t1": np.arange(1, f + 1) / 10.0, "valid": np.ones(f, bool)})
    assert prepare_inputs(video, cfg)[0].shape == (f, 256)                       # 256-d only
    assert prepare_inputs(video, replace(cfg, face_flag=True))[0].shape == (f, 257)
    with pytest.raises(ValueError, match="block"):
        FaceTemporal(replace(cfg, block="other")).check()


# ------------------------------------------------------------------------------ behaviour tail
def test_ragged_tail_cuts_the_last_sequence_at_the_end_as_published():
    assert frame_windows(20, 16, 8, "ragged") == [(0, 16), (8, 20)]
    assert frame_windows(30, 16, 8, "ragged") == [(0, 16), (8, 24), (16, 30)]
    assert frame_windows(24, 16, 8, "ragged") == [(0, 16), (8, 24)]
    assert frame_windows(30, 16, 8) == [(0, 16), (8, 24), (14, 30)]              # aligned (default)
    assert frame_windows(10, 16, 8, "ragged") == [(0, 10)]
    with pytest.raises(ValueError, match="tail"):
        frame_windows(10, 4, 2, "centred")


def test_behaviour_defaults_train_without_schedule_or_clipping():
    from heads.behavior_temporal import BehaviorTemporalConfig

    cfg = BehaviorTemporalConfig()
    assert (cfg.tail, cfg.train.scheduler, cfg.train.grad_clip) == ("ragged", "none", 0.0)


# ------------------------------------------------------------------------------------ schedules
def test_plateau_on_named_groups_leaves_the_others_and_none_has_no_schedule():
    from heads.train import TrainConfig, plateau_scheduler

    def optimizer():
        a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
        return torch.optim.AdamW([{"params": [a], "lr": 2e-4, "name": "head"},
                                  {"params": [b], "lr": 5e-6, "name": "backbone"}])

    opt = optimizer()
    sched = plateau_scheduler(opt, TrainConfig(plateau_factor=0.5, plateau_patience=0, plateau_groups=["head"]))
    for score in (0.5, 0.4, 0.3):
        sched.step(score)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.25) and opt.param_groups[1]["lr"] == 5e-6
    everything = optimizer()
    sched = plateau_scheduler(everything, TrainConfig(plateau_factor=0.5, plateau_patience=0))
    for score in (0.5, 0.4):
        sched.step(score)
    assert everything.param_groups[1]["lr"] == pytest.approx(2.5e-6)
    assert plateau_scheduler(optimizer(), TrainConfig(scheduler="none")) is None
    with pytest.raises(ValueError, match="plateau_groups"):
        plateau_scheduler(optimizer(), TrainConfig(plateau_groups=["decoder"]))


# ----------------------------------------------------------------------------------------- RAAV
def test_raav_published_projection_is_linear_and_its_head_has_dropout():
    from heads.fusion_raav import RAAVConfig, RAAVModel

    published = RAAVModel(RAAVConfig(d_model=16, ff_dim=32))
    variant = RAAVModel(RAAVConfig(d_model=16, ff_dim=32, projection="norm_dropout", head_dropout=0.0))
    assert isinstance(published.proj["face"].norm, torch.nn.Identity)
    assert isinstance(variant.proj["face"].norm, torch.nn.LayerNorm)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in published.head)
    assert not any(isinstance(m, torch.nn.Dropout) for m in variant.head)
    assert RAAVConfig().train.scheduler == "none"
    with pytest.raises(ValueError, match="projection"):
        RAAVConfig(projection="mlp")


# ------------------------------------------------------------------------- mouth signal from CSV
def _csv(path, frames, areas, flags):
    lines = [",frame,surface_area_mouth,mouth_open"]
    lines += [f"{i},{f:05d},{a},{o}" for i, (f, a, o) in enumerate(zip(frames, areas, flags))]
    path.write_text("\n".join(lines) + "\n")


def _video(tmp_path, n: int, fps: float):
    from pipeline.records import Video

    return Video(video_id="v1", media_path=str(tmp_path / "v1.mp4"), fps=fps, num_frames=n, duration=n / fps,
                 has_audio=False, split="train")


def test_csv_open_flag_and_presence_are_the_published_signal(tmp_path):
    from extractors.reliability import ReliabilityConfig, ReliabilityExtractor

    n, fps = 120, 25.0
    frames = [f for f in range(1, n + 1) if not 41 <= f <= 60]           # frames 41..60: no face in the file
    areas = [1.0] * len(frames)                                           # constant: the rolling rule opens nothing
    flags = [1 if 10 <= f <= 30 or 34 <= f <= 39 or 80 <= f <= 83 else 0 for f in frames]
    _csv(tmp_path / "v1.csv", frames, areas, flags)
    video = _video(tmp_path, n, fps)
    cfg = ReliabilityConfig(mouth_method="csv", mouth_csv_dir=str(tmp_path), mouth_csv_open_column="mouth_open",
                            face_from_csv=True, smoothing_frames="round", vad_backend="energy")
    ex = ReliabilityExtractor(cfg)
    out = ex.compute(video, ex.prepare(video))
    present = np.isin(np.arange(n) + 1, frames)
    np.testing.assert_array_equal(out["face"] > 0, present)              # coverage = presence in the file
    opened = np.flatnonzero(out["mouth_open"]) + 1
    # 10-30 and 34-39 joined across the 3-frame gap (0.12 s <= 0.15 s); 80-83 is a 4-frame blip, and at
    # 25 fps round(0.2 * 25) = 5 frames count as <= 0.2 s, so it is dropped
    assert opened.tolist() == list(range(10, 40))
    assert ex.source(video) == (video.media_path, str(tmp_path / "v1.csv"))   # no crops read at all
    # recomputing the rule from the areas (the previous reading) opens nothing on constant areas
    old = ReliabilityExtractor(replace(cfg, mouth_csv_open_column=None, face_from_csv=False, smoothing_frames="floor",
                                       source="detect"))
    assert not mouth_rule_on(old, video, present, tmp_path).any()
    fp = ex.fingerprint()
    assert fp["face_from_csv"] is True and fp["mouth_csv_open_column"] == "mouth_open" and fp["smoothing_frames"] == "round"
    assert "face_from_csv" not in old.fingerprint() and "smoothing_frames" not in old.fingerprint()


def mouth_rule_on(ex, video, face, tmp_path):
    """The rolling rule of `ex` on the CSV's areas, with `face` as coverage (no detector needed)."""
    from extractors.reliability import ReliabilityPrepared

    columns, _ = ex._csv_columns(video, video.num_frames)
    mouth = np.where(face, columns["surface_area_mouth"], np.nan)
    prepared = ReliabilityPrepared(video.num_frames, face[None], mouth[None], np.zeros(0, np.float32))  # one person
    return ex.compute(video, prepared)["mouth_open"]


def test_rounding_of_durations_to_frames_differs_at_25_fps():
    from extractors.reliability import fill_gaps

    gap4 = np.array([1, 1, 0, 0, 0, 0, 1, 1], bool)                      # 4 closed frames = 0.16 s at 25 fps
    assert not fill_gaps(gap4, 25.0, 0.15, "floor")[2:6].any()
    assert fill_gaps(gap4, 25.0, 0.15, "round")[2:6].all()               # round(3.75) = 4 frames
    with pytest.raises(Exception, match="smoothing_frames"):
        from extractors.reliability import ReliabilityConfig

        ReliabilityConfig(smoothing_frames="ceil").validate()


# -------------------------------------------------------------------------------- audio windows
def test_window_plan_is_the_published_slicing():
    from extractors.windows import window_plan

    assert window_plan(9.0, 4, 2, 1) == [(0, 4), (2, 6), (4, 8), (6, 9.0)]
    assert window_plan(8.0, 4, 2, 1) == [(0, 4), (2, 6), (4, 8)]
    assert window_plan(3.0, 4, 2, 1) == [(0.0, 3.0)]
    assert window_plan(4.5, 4, 2, 3) == [(0, 4)]                          # 2.5 s left < 3 s: dropped
    assert window_plan(0.0, 4, 2, 1) == []


def test_audio_windows_are_their_own_padded_clips(tmp_path):
    from extractors.audio import AudioConfig, SpeechSSLExtractor, masked_zscore
    from tiny_models import speechlike, tiny_wavlm

    sr = 16000
    ex = SpeechSSLExtractor(AudioConfig(model=str(tiny_wavlm(tmp_path)), device="cpu", mode="windows",
                                        chunk_seconds=4.0, overlap_seconds=2.0, vad_backend="energy"))
    ex.load()
    wav = speechlike(7.0, seed=1)
    out = ex.encode(wav, duration=7.0)                                    # windows 0-4, 2-6, 4-7 (3 s, padded)
    per = len(out["t0"]) // 3
    assert out["clip"].tolist() == [0] * per + [1] * per + [2] * per
    assert out["clip_t0"].tolist() == [0.0, 2.0, 4.0] and out["clip_t1"].tolist() == [4.0, 6.0, 7.0]
    real_last = int(out["valid"][out["clip"] == 2].sum())
    assert out["valid"][: 2 * per].all() and real_last < per and not out["valid"][-1]
    # the last window, embedded alone without padding: its real rows are the stored ones (padding is masked)
    clip = wav[4 * sr:]
    with torch.inference_mode():
        alone = ex.model(torch.from_numpy(masked_zscore(clip[None], np.ones((1, len(clip)), bool)))).last_hidden_state[0]
    np.testing.assert_allclose(out["emb"][out["clip"] == 2][:real_last], alone.numpy()[:real_last], atol=2e-4)
    # each window is its own clip: louder audio after 4 s changes nothing in the first window's rows
    louder = wav.copy()
    louder[4 * sr:] *= 20
    np.testing.assert_allclose(ex.encode(louder, duration=7.0)["emb"][:per], out["emb"][:per], atol=1e-5)
    assert ex.fingerprint()["mode"] == "windows" and ex.fingerprint()["window_min_seconds"] == 1.0


def _window_store(f: int, fps: float, y: np.ndarray, proj: np.ndarray, rng) -> dict:
    """An audio store group in the published window layout: 50 Hz rows per 4-s window, padded."""
    from extractors.windows import window_plan

    plan = window_plan(f / fps, 4.0, 2.0, 1.0)
    per = 200
    rows = {"emb": [], "t0": [], "t1": [], "valid": [], "clip": []}
    for j, (s, e) in enumerate(plan):
        t = s + np.arange(per) * 0.02
        ok = t + 0.02 <= e + 1e-9
        yr = y[np.minimum((t * fps).astype(int), f - 1)]
        rows["emb"].append(np.where(ok[:, None], yr @ proj + 0.05 * rng.normal(size=(per, proj.shape[1])), 0.0))
        rows["t0"].append(t)
        rows["t1"].append(t + 0.025)
        rows["valid"].append(ok)
        rows["clip"].append(np.full(per, j))
    out = {k: np.concatenate(v) for k, v in rows.items()}
    out["emb"], out["t0"], out["t1"] = out["emb"].astype(np.float32), out["t0"].astype(np.float32), out["t1"].astype(np.float32)
    out["clip"] = out["clip"].astype(np.int32)
    out["clip_t0"] = np.array([s for s, _ in plan], np.float32)
    out["clip_t1"] = np.array([e for _, e in plan], np.float32)
    return out


def test_audio_head_trains_on_published_windows_and_averages_the_windows_covering_a_frame(tmp_path):
    from heads.audio_pooling import AudioPooling, AudioPoolingConfig, video_bins
    from heads.data import HeadVideo
    from heads.driver import train_model
    from heads.train import TrainConfig
    from pipeline.labels import FrameLabels
    from pipeline.store import FeatureStore

    fps, rng = 10.0, np.random.default_rng(0)
    proj = rng.normal(size=(2, 12)).astype(np.float32)
    videos = []
    for k, (split, f) in enumerate([("train", 250), ("train", 225), ("train", 273), ("validation", 215)]):
        t = np.arange(f) / fps
        y = (0.8 * np.sin(2 * np.pi * t[:, None] / rng.uniform(15, 30, 2) + rng.uniform(0, 6, 2))).astype(np.float32)
        lab = FrameLabels("va", y, np.ones(f, bool))
        videos.append(HeadVideo(f"v{k}", split, fps, f, lab, _window_store(f, fps, y, proj, rng)))
    cfg = AudioPoolingConfig(attn_dim=16, dropout=0.0, head_hidden=16,
                             train=TrainConfig(epochs=12, lr=3e-3, weight_decay=0.0, batch_size=4, early_stopping=100,
                                               seed=0, device="cpu", progress=False))
    d = video_bins(videos[0], cfg, "emb")                                 # 25 s: windows 0-4 ... 22-25 (3 s)
    assert d.windows[-1] == (4 * 11, 4 * 12) and d.frame_bin is None
    assert d.bin_count[-4:].tolist()[3] == 0 and d.bin_count[-4:].tolist()[2] > 0   # the 4th second lies past 25 s
    fs, fe = d.bin_frames
    assert (fs[-1], fe[-1]) == (250, 250) and (fs[-2], fe[-2]) == (240, 250)
    # a frame's output is the mean over the bins of every window covering it: a stand-in model whose
    # output names the bin (its count of real rows and its window's first row) makes that visible
    class Echo(torch.nn.Module):
        def forward(self, x, mask):
            key = torch.stack([mask.sum(-1).float(), x[:, :1, 0, 0].expand(-1, mask.shape[1])], -1)
            return key, key

    from heads.audio_pooling import predict_video
    echo = predict_video(Echo(), videos[0], d, cfg, int(d.bin_count.max()), torch.device("cpu")).pred
    b0 = torch.from_numpy(d.x[d.bin_start].astype(np.float32))[:, 0].numpy()  # first row of each bin
    window_first = np.repeat(b0[::4], 4)                                 # each bin's window's first row
    for frame in (5, 25, 235, 247):      # 0.5 s: window 0; 2.5 s: 0 and 1; 23.5 s: 10 and 11; 24.7 s: 11 only
        bins = [b for b in range(len(fs)) if fs[b] <= frame < fe[b] and d.bin_count[b] > 0]
        assert len(bins) == (1 if frame in (5, 247) else 2)
        np.testing.assert_allclose(echo[frame], [np.mean(d.bin_count[bins]), np.mean(window_first[bins])], rtol=1e-5)
    metrics = train_model(AudioPooling(cfg), videos, tmp_path)
    assert metrics["ccc_mean"] > 0.5
    g = FeatureStore.open(str(tmp_path / "outputs.zarr")).read_video("v0")
    assert g["valid"].all() and np.isfinite(g["pred"]).all()
