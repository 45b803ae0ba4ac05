"""The sun2024 heads and fusion: shapes of the published architectures, a short training on tiny
synthetic data through the one driver, outputs on the frame grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heads.driver import train_model
from heads.fusion_inputs import FusionVideo
from heads.fusion_sun import METHODS, SunFusion, SunFusionConfig, SunFusionModel, SunFusionTrainConfig
from heads.sun_audio import SunAudio, SunAudioConfig, SunAudioModel
from heads.sun_temporal import SunTemporal, SunTemporalConfig, SunTemporalModel, frame_steps, step_frames
from test_heads import check_outputs, make_videos, tiny_train


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_temporal_published_shape():
    cfg = SunTemporalConfig()
    assert (cfg.fps, cfg.window, cfg.hop, tuple(cfg.layer_heads)) == (5.0, 30, 15, (8, 8, 8, 8, 4, 4))
    model = SunTemporalModel(256, cfg).eval()
    assert [layer.self_attn.num_heads for layer in model.layers] == [8, 8, 8, 8, 4, 4]
    pred, emb = model(torch.randn(2, 30, 256))
    assert pred.shape == (2, 30, 2) and emb.shape == (2, 30, 256) and pred.abs().max() <= 1


def test_resampling_to_5_fps_and_back():
    idx = step_frames(300, 30.0, 5.0)             # 10 s at 30 fps -> 50 steps, every 6th frame
    assert len(idx) == 50 and list(idx[:3]) == [0, 6, 12]
    back = frame_steps(300, 30.0, 5.0, len(idx))
    assert back[0] == 0 and back[6] == 1 and back[299] == 49 and len(back) == 300


def test_temporal_head_trains_and_writes_every_frame(tmp_path):
    videos = make_videos("face")
    cfg = SunTemporalConfig(window=10, hop=5, d_model=16, layer_heads=(2, 2), ff=32, dropout=0.0,
                            train=tiny_train(epochs=3))
    metrics = train_model(SunTemporal(cfg), videos, tmp_path)
    check_outputs(tmp_path, videos, 2, 16)
    assert np.isfinite(metrics["ccc_mean"])


def test_audio_published_shape():
    cfg = SunAudioConfig()
    assert (cfg.bins, cfg.window_s, cfg.gru_hidden, cfg.gru_layers, cfg.finetune_top_k) == (20, 4.0, 256, 2, 4)
    assert (cfg.conv_kernel, cfg.conv_stride, cfg.conv_dilation) == (5, 3, 2)
    model = SunAudioModel(32, SunAudioConfig(finetune_top_k=0, gru_hidden=16, head_hidden=16)).eval()
    pred, emb = model(torch.randn(2, 20, 10, 32), torch.ones(2, 20, 10, dtype=torch.bool))
    assert pred.shape == (2, 20, 2) and emb.shape == (2, 20, 16) and pred.abs().max() <= 1
    tr = SunAudioModel(32, SunAudioConfig(finetune_top_k=0, temporal="transformer", transformer_heads=(4, 2),
                                          head_hidden=16)).eval()
    assert [layer.self_attn.num_heads for layer in tr.encoder] == [4, 2]
    assert tr(torch.randn(1, 20, 10, 32), torch.ones(1, 20, 10, dtype=torch.bool))[0].shape == (1, 20, 2)


def test_audio_head_trains_with_20_bins_per_window(tmp_path):
    videos = make_videos("audio")
    cfg = SunAudioConfig(finetune_top_k=0, gru_hidden=16, gru_layers=1, head_hidden=16, dropout=0.0,
                         train=tiny_train(epochs=2))
    head = SunAudio(cfg)
    head.store = "features/audio"
    train_model(head, videos, tmp_path)
    check_outputs(tmp_path, videos, 2, 16)


def test_pdem_top_blocks_reproduce_the_full_model(tmp_path):
    from extractors.demo_models import write_pdem
    from heads.audio_pooling import SpeechTopLayers
    from transformers import Wav2Vec2Model

    write_pdem(tmp_path / "pdem")
    model = Wav2Vec2Model.from_pretrained(tmp_path / "pdem").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 8000), output_hidden_states=True)
    top = SpeechTopLayers(str(tmp_path / "pdem"), 2).eval()
    lower = out.hidden_states[-3]
    with torch.no_grad():
        got = top(lower, torch.ones(lower.shape[:2], dtype=torch.bool))
    torch.testing.assert_close(got, out.last_hidden_state, atol=1e-4, rtol=1e-4)


def fusion_batch(b: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {"mask": torch.ones(b, length, dtype=torch.bool)}
    for m, d in (("sun_face", 6), ("sun_audio", 5)):
        batch[f"x_{m}"] = torch.randn(b, length, d, generator=g)
        batch[f"valid_{m}"] = torch.ones(b, length, dtype=torch.bool)
    batch["valid_sun_audio"][:, 8:] = False
    return batch


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pooling", ["avg_max", "none"])
def test_fusion_methods_shapes(method, pooling):
    cfg = SunFusionConfig(method=method, pooling=pooling, d_model=16, n_heads=2, ff_dim=32, dropout=0.0)
    out = SunFusionModel(cfg).eval()(fusion_batch())
    assert out["pred"].shape == (2, 12, 2) and out["emb"].shape == (2, 12, 16)
    assert torch.isfinite(out["pred"]).all() and out["gates"][0, 9].tolist() == [1.0, 0.0]


def test_cross_attention_reads_the_other_stream():
    cfg = SunFusionConfig(d_model=16, n_heads=2, ff_dim=32, dropout=0.0, pooling="none")
    model = SunFusionModel(cfg).eval()
    batch = fusion_batch()
    before = model(batch)["pred"]
    batch["x_sun_audio"] = batch["x_sun_audio"] + 1.0
    assert not torch.allclose(before[:, :8], model(batch)["pred"][:, :8])   # video frames see the audio


def test_fusion_trains(tmp_path):
    rng = np.random.default_rng(0)
    videos = []
    for k, split in enumerate(["train", "train", "validation", "test"]):
        f = 60
        v = FusionVideo(f"v{k}", split, 10.0, f)
        for m in ("sun_face", "sun_audio"):
            v.emb[m] = rng.normal(size=(f, 4)).astype(np.float32)
            v.pred[m] = rng.normal(size=(f, 2)).astype(np.float32)
            v.valid[m] = np.ones(f, bool)
        v.labels = rng.uniform(-1, 1, (f, 2)).astype(np.float32)
        v.label_valid = np.ones(f, bool)
        videos.append(v)
    cfg = SunFusionConfig(d_model=16, n_heads=2, ff_dim=32, dropout=0.0, window_s=2.0, hop_s=1.0,
                          train=SunFusionTrainConfig(epochs=2, device="cpu", batch_size=4))
    metrics = train_model(SunFusion(cfg), videos, tmp_path)
    assert np.isfinite(metrics["ccc_mean"])
