"""Audio extractor: rows on the model's frame grid, chunk stitching, lower layers, pair sharing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors.audio import (
    AudioConfig,
    SpeechSSLExtractor,
    chunk_plan,
    conv_frame_geometry,
    num_frames,
    stitch_bounds,
)
from extractors.base import ExtractorError
from pipeline.media import read_audio
from tiny_models import make_video, speechlike, tiny_wavlm, video_record

KERNEL, STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_models")
    return {"wavlm": tiny_wavlm(root), "local": tiny_wavlm(root, num_hidden_layers=0)}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_media")
    return {
        "av": make_video(root / "clip.mp4", seconds=3.0, fps=10),
        "mute": make_video(root / "mute.mp4", seconds=1.0, fps=10, audio=False),
    }


def extractor(model, **kw) -> SpeechSSLExtractor:
    ex = SpeechSSLExtractor(AudioConfig(model=str(model), device="cpu", **kw))
    ex.load()
    return ex


def test_frame_geometry_matches_wavlm():
    assert conv_frame_geometry(KERNEL, STRIDE) == (320, 400)  # 20 ms hop, 25 ms receptive field
    assert num_frames(16000, KERNEL, STRIDE) == 49
    assert num_frames(399, KERNEL, STRIDE) == 0


def test_chunk_plan_equal_chunks_on_hop_grid():
    starts = chunk_plan(50_000, chunk=16_000, overlap=8_000, hop=320)
    assert starts[0] == 0 and all(s % 320 == 0 for s in starts)
    assert starts[-1] + 16_000 <= 50_000 and 50_000 - (starts[-1] + 16_000) < 320  # end-aligned
    assert chunk_plan(10_000, chunk=16_000, overlap=8_000, hop=320) == [0]
    # every global row comes from exactly one chunk
    bounds = stitch_bounds([0, 25, 50], [49, 49, 49], 99)
    assert bounds[0][0] == 0 and bounds[-1][1] == 99
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_rows_timing_and_vad(models, media):
    ex = extractor(models["wavlm"], chunk_seconds=1.0, overlap_seconds=0.4)
    video = video_record(media["av"], "clip", 3.0, 10)
    out = ex.compute(video, ex.prepare(video))
    m = len(out["t0"])
    assert m == num_frames(len(read_audio(video.media_path)), KERNEL, STRIDE) > 140
    assert out["emb"].shape == (m, 64) and out["valid"].all()
    np.testing.assert_allclose(np.diff(out["t0"]), 0.02, atol=1e-6)
    np.testing.assert_allclose(out["t1"] - out["t0"], 0.025, atol=1e-6)
    assert out["vad"].shape == (m,) and out["vad"].dtype == np.float32
    assert np.all((out["vad"] >= 0) & (out["vad"] <= 1))
    assert "lower" not in out


def test_video_without_audio_gives_zero_rows(models, media):
    ex = extractor(models["wavlm"])
    video = video_record(media["mute"], "mute", 1.0, 10, has_audio=False)
    out = ex.compute(video, ex.prepare(video))
    assert out["emb"].shape == (0, 64)
    assert {k: len(v) for k, v in out.items() if k != "emb"} == {"t0": 0, "t1": 0, "valid": 0, "vad": 0}


def test_chunk_stitching_equals_whole_sequence(models):
    """A model whose context is local (conv front end + positional conv, no attention layers):
    chunked inference with a 0.5 s overlap must reproduce whole-sequence inference."""
    wav = speechlike(3.3)  # > 2 chunks of 1 s
    whole = extractor(models["local"], chunk_seconds=100.0).encode(wav)
    chunked = extractor(models["local"], chunk_seconds=1.0, overlap_seconds=0.5, batch_size=2).encode(wav)
    assert chunked["emb"].shape == whole["emb"].shape
    np.testing.assert_allclose(chunked["emb"], whole["emb"], atol=1e-4)
    np.testing.assert_array_equal(chunked["t0"], whole["t0"])


def test_keep_lower_layers(models):
    ex = extractor(models["wavlm"], keep_lower_layers=1, chunk_seconds=100.0)
    wav = speechlike(1.0)
    out = ex.encode(wav)
    assert out["lower"].shape == out["emb"].shape
    with torch.inference_mode():
        ref = ex.model(torch.from_numpy(wav[None] - wav.mean()) / wav.std(), output_hidden_states=True)
    np.testing.assert_allclose(out["lower"], ref.hidden_states[-2][0].numpy(), atol=1e-3)
    with pytest.raises(ExtractorError, match="keep_lower_layers"):
        extractor(models["wavlm"], keep_lower_layers=3)


def test_left_right_share_one_extraction(models, media):
    ex = extractor(models["wavlm"], chunk_seconds=100.0)
    calls = []
    ex.model.register_forward_hook(lambda *a: calls.append(1))
    left = video_record(media["av"], "clip_left", 3.0, 10)
    right = video_record(media["av"], "clip_right", 3.0, 10)
    prep_l, prep_r = ex.prepare(left), None
    out_l = ex.compute(left, prep_l)
    prep_r = ex.prepare(right)  # partner already computed: no decode
    assert prep_r.cached and prep_r.audio is None
    out_r = ex.compute(right, prep_r)
    assert len(calls) == 1
    np.testing.assert_array_equal(out_l["emb"], out_r["emb"])


def test_left_right_through_engine(models, media, tmp_path):
    from extractors.base import run_extraction
    from pipeline.store import FeatureStore

    ex = SpeechSSLExtractor(AudioConfig(model=str(models["wavlm"]), device="cpu", chunk_seconds=100.0))
    ex.load()
    calls = []
    ex.model.register_forward_hook(lambda *a: calls.append(1))
    vids = [video_record(media["av"], f"clip_{s}", 3.0, 10) for s in ("left", "right")]
    report = run_extraction(ex, vids, str(tmp_path / "features"), workers=2, prefetch=2, progress=False)
    assert report.ok and sorted(report.done) == ["clip_left", "clip_right"]
    assert len(calls) == 1
    store = FeatureStore.open(report.url)
    a, b = store.read_video("clip_left"), store.read_video("clip_right")
    np.testing.assert_array_equal(np.asarray(a["emb"]), np.asarray(b["emb"]))
    assert set(a.keys()) >= {"emb", "t0", "t1", "valid", "vad"}


def test_bad_model_id_fails_before_any_video(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ex = SpeechSSLExtractor(AudioConfig(model="no-such-org/no-such-wavlm", device="cpu"))
    touched = []
    monkeypatch.setattr(ex, "prepare", lambda v: touched.append(v))
    video = video_record(tmp_path / "missing.mp4", "x", 1.0, 10)
    from extractors.base import run_extraction

    with pytest.raises(ExtractorError) as err:
        run_extraction(ex, [video], str(tmp_path / "features"), progress=False)
    msg = str(err.value)
    assert "no-such-org/no-such-wavlm" in msg and "HF_HUB_OFFLINE" in msg and "local folder" in msg
    assert touched == []


@pytest.mark.parametrize("model", ["data/models/nowhere/wavlm", "./wavlm-local", "/no/such/folder"])
def test_missing_local_model_folder_says_folder_not_found(monkeypatch, tmp_path, model):
    """A path that names a folder (not a hub `org/name` id) and does not exist is reported as a
    missing folder, not as a hub id that could not be downloaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(ExtractorError, match="folder not found") as err:
        SpeechSSLExtractor(AudioConfig(model=model, device="cpu")).load()
    assert model in str(err.value) and "HF_HUB_OFFLINE" not in str(err.value)


def test_wav2vec2_with_task_head_loads_as_base(tmp_path):
    """PDEM-style checkpoints (wav2vec2 + a custom head) load through AutoModel as the base model."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, num_labels=3)
    Wav2Vec2ForSequenceClassification(cfg).save_pretrained(tmp_path / "pdem")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "pdem")
    ex = extractor(tmp_path / "pdem", keep_lower_layers=2)
    out = ex.encode(speechlike(1.0))
    assert type(ex.model).__name__ == "Wav2Vec2Model"
    assert out["emb"].shape == (49, 32) and out["lower"].shape == (49, 32)


def test_a_checkpoint_saved_in_bf16_runs_on_cpu(models, media, tmp_path):
    """Published checkpoints are often stored in bf16; CPU inference still gets fp32 weights and the
    same features as from the fp32 file, up to the bf16 rounding of the weights."""
    import torch
    from transformers import WavLMModel

    bf16_dir = tmp_path / "wavlm_bf16"
    WavLMModel.from_pretrained(models["wavlm"]).to(torch.bfloat16).save_pretrained(bf16_dir)
    for f in ("preprocessor_config.json",):
        (bf16_dir / f).write_bytes((models["wavlm"] / f).read_bytes())
    video = video_record(media["av"], "clip", 3.0, 10)
    ex16 = extractor(bf16_dir, chunk_seconds=1.0, overlap_seconds=0.4)
    assert next(ex16.model.parameters()).dtype == torch.float32
    ex32 = extractor(models["wavlm"], chunk_seconds=1.0, overlap_seconds=0.4)
    a, b = ex16.compute(video, ex16.prepare(video)), ex32.compute(video, ex32.prepare(video))
    assert a["emb"].shape == b["emb"].shape
    assert np.corrcoef(a["emb"].ravel(), b["emb"].ravel())[0, 1] > 0.99
