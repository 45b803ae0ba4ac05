"""Behavior extractor: the published segment rule, frame sampling, Qwen3-VL prefill features."""

from __future__ import annotations

import numpy as np
import pytest

from extractors.base import ExtractorError
from extractors.behavior import (
    BehaviorConfig,
    QwenVLBehaviorExtractor,
    sample_indices,
    segment_frames,
    segments,
)
from tiny_models import make_video, tiny_qwen3vl, video_record


# ------------------------------------------------------------------------------------ segment rule
@pytest.mark.parametrize(
    "duration, expected",
    [
        (0.0, []),
        (0.5, [(0.0, 0.5)]),  # shorter than the minimum: a lone window is kept whole (published rule)
        (3.0, [(0.0, 3.0)]),
        (4.0, [(0.0, 4.0)]),
        (4.5, [(0.0, 4.0), (2.0, 4.5)]),
        (5.0, [(0.0, 4.0), (2.0, 5.0)]),
        (8.0, [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0)]),  # window ending exactly at the end: kept, stop
        (9.0, [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 9.0)]),
        (10.0, [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0)]),
    ],
)
def test_published_segment_rule(duration, expected):
    assert segments(duration, BehaviorConfig()) == expected


@pytest.mark.parametrize(
    "duration, expected",
    [
        (8.0, [(0.0, 4.0), (3.5, 7.5), (7.0, 8.0)]),  # last window exactly 1 s: kept
        (7.9, [(0.0, 4.0), (3.5, 7.5)]),  # last window 0.9 s < 1 s: dropped
        (7.5, [(0.0, 4.0), (3.5, 7.5)]),
    ],
)
def test_last_window_minimum(duration, expected):
    """With the published 2 s hop a clipped last window is always >= 2 s; a 3.5 s hop exercises the minimum."""
    got = segments(duration, BehaviorConfig(hop_seconds=3.5))
    assert got == expected  # 3.5 and k*3.5 are exact in binary


def test_segment_frames_and_sampling():
    assert segment_frames(2.0, 6.0, 29.97) == (60, 180)
    assert segment_frames(6.0, 9.0, 30.0) == (180, 270)
    cfg = BehaviorConfig()
    np.testing.assert_array_equal(sample_indices(0, 120, 30.0, cfg), np.linspace(0, 119, 16).round())
    assert len(sample_indices(0, 30, 30.0, cfg)) == 4  # 1 s at 4 fps
    np.testing.assert_array_equal(sample_indices(0, 3, 30.0, cfg), [0, 2])  # even count for frame pairs
    np.testing.assert_array_equal(sample_indices(5, 6, 30.0, cfg), [0, 0])  # 1 frame, duplicated


# ------------------------------------------------------------------------------------ extractor
@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_qwen3vl(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("behavior_media")
    return {
        "5s": make_video(root / "five.mp4", seconds=5.0, fps=10, audio=False),
        "9s": make_video(root / "nine.mp4", seconds=9.0, fps=10, audio=False),
        "short": make_video(root / "short.mp4", seconds=0.5, fps=10, audio=False),
        "one": make_video(root / "one.mp4", seconds=0.1, fps=10, audio=False),
    }


def extractor(model, **kw) -> QwenVLBehaviorExtractor:
    """fp32 arithmetic unless a test asks otherwise: `cpu_compute: auto` picks bf16 on CPUs with
    native bf16 dot products, where a different batch changes the last bf16 bit (the comparisons
    below are about padding and order, not precision; tests/test_precision.py covers bf16)."""
    kw = {"frame_long_side": 64, "device": "cpu", "cpu_compute": "fp32", **kw}
    ex = QwenVLBehaviorExtractor(BehaviorConfig(model=str(model), **kw))
    ex.load()
    return ex


def run(ex, path, seconds, fps=10):
    video = video_record(path, path.stem, seconds, fps, has_audio=False)
    prepared = ex.prepare(video)
    try:
        return ex.compute(video, prepared)
    finally:
        prepared.close()


def test_extractor_arrays(qwen, clips):
    ex = extractor(qwen, batch_size=2)
    assert type(ex.model).__name__ == "Qwen3VLForConditionalGeneration"
    out = run(ex, clips["5s"], 5.0)
    np.testing.assert_array_equal(out["t0"], [0, 2])
    np.testing.assert_array_equal(out["t1"], [4, 5])
    np.testing.assert_array_equal(out["frame_start"], [0, 20])
    np.testing.assert_array_equal(out["frame_end"], [40, 50])
    assert out["emb"].shape == (2, 64) and out["emb_mean"].shape == (2, 64)
    assert np.isfinite(out["emb"]).all() and not np.allclose(out["emb"][0], out["emb"][1])
    assert out["valid"].all() and out["text"].tolist() == ["", ""]


def test_short_videos(qwen, clips):
    ex = extractor(qwen)
    out = run(ex, clips["short"], 0.5)  # shorter than min_last_seconds: one segment, kept
    assert out["emb"].shape == (1, 64) and out["t1"].tolist() == [0.5] and out["frame_end"].tolist() == [5]
    out = run(ex, clips["one"], 0.1)  # a single frame: duplicated for the 2-frame temporal patch
    assert out["emb"].shape == (1, 64) and np.isfinite(out["emb"]).all()


def test_batched_prefill_equals_one_at_a_time(qwen, clips):
    """Left padding: the 3 s last segment has fewer frames, hence a shorter sequence, in the same batch."""
    batched = run(extractor(qwen, batch_size=4), clips["9s"], 9.0)
    single = run(extractor(qwen, batch_size=1), clips["9s"], 9.0)
    assert batched["emb"].shape == (4, 64)
    np.testing.assert_allclose(batched["emb"], single["emb"], atol=1e-4)
    np.testing.assert_allclose(batched["emb_mean"], single["emb_mean"], atol=1e-4)


def test_generation_stores_text(qwen, clips):
    ex = extractor(qwen, max_new_tokens=3, batch_size=2)
    out = run(ex, clips["5s"], 5.0)
    assert out["text"].shape == (2,) and all(isinstance(t, str) and t for t in out["text"].tolist())
    assert ex.fingerprint()["new_tokens"] == 3


def test_video_metadata_timestamps_reach_the_prompt(qwen):
    """Timestamps come from our fps + segment-relative indices, not the processor's 24 fps default."""
    ex = extractor(qwen)
    rel = np.linspace(0, 39, 16).round().astype(int)  # a 4 s segment of a 10 fps video
    frames = [np.zeros((16, 48, 64, 3), np.uint8)]
    ids = ex.inputs(frames, [rel], 10.0)["input_ids"][0]
    text = ex.processor.tokenizer.decode(ids)
    expected = [f"<{(rel[i] + rel[i + 1]) / 2 / 10.0:.1f} seconds>" for i in range(0, 16, 2)]
    assert all(e in text for e in expected)
    assert "<3.8 seconds>" in text  # last pair (36+39)/2/10; 24 fps would give 1.6


def test_through_engine_stores_text(qwen, clips, tmp_path):
    from extractors.base import run_extraction
    from pipeline.store import FeatureStore

    ex = QwenVLBehaviorExtractor(BehaviorConfig(model=str(qwen), frame_long_side=64, device="cpu", max_new_tokens=2))
    report = run_extraction(ex, [video_record(clips["5s"], "five", 5.0, 10, has_audio=False)],
                            str(tmp_path / "features"), progress=False)
    assert report.ok, report.failed
    got = FeatureStore.open(report.url).read_video("five")
    assert np.asarray(got["emb"]).shape == (2, 64) and len(np.asarray(got["text"])) == 2
    assert np.asarray(got["frame_end"]).tolist() == [40, 50]


def test_bad_model_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExtractorError, match="no-such-org/qwen.*HF_HUB_OFFLINE"):
        QwenVLBehaviorExtractor(BehaviorConfig(model="no-such-org/qwen", device="cpu")).load()


def test_left_right_share_one_pass(qwen, clips):
    """`_left`/`_right` ids of one file: the second id reuses the first one's arrays (no decode, no forward)."""
    ex = extractor(qwen, batch_size=4)
    calls = []
    ex.model.model.register_forward_hook(lambda *a: calls.append(1))  # the prefill runs the base model
    left = video_record(clips["5s"], "five_left", 5.0, 10, has_audio=False)
    right = video_record(clips["5s"], "five_right", 5.0, 10, has_audio=False)
    out_l = ex.compute(left, ex.prepare(left))
    prep_r = ex.prepare(right)
    assert prep_r.batches == []  # nothing decoded for the partner
    out_r = ex.compute(right, prep_r)
    assert len(calls) == 1
    np.testing.assert_array_equal(out_l["emb"], out_r["emb"])
    np.testing.assert_array_equal(out_l["frame_end"], out_r["frame_end"])


def test_prefill_keeps_only_the_last_layer(qwen):
    """`emb` is the full model's last hidden state at the last token, computed without the output head
    and without holding every layer's states (0.9 GB per segment at the published budget)."""
    import torch

    ex = extractor(qwen)
    rel = np.linspace(0, 39, 8).round().astype(int)
    frames = [np.random.default_rng(1).integers(0, 255, (8, 48, 64, 3), dtype=np.uint8)]
    heads = []
    ex.model.lm_head.register_forward_hook(lambda *a: heads.append(1))
    got = ex.encode(frames, [rel], 10.0)
    assert not heads  # no logits computed
    with torch.inference_mode():
        full = ex.model(**ex.inputs(frames, [rel], 10.0), output_hidden_states=True, use_cache=False)
    np.testing.assert_allclose(got["emb"], full.hidden_states[-1][:, -1].float().numpy(), rtol=0, atol=1e-6)
