"""Behavior frames at the processor's resolution by default; explicit per-frame pixel bounds; a cap."""

from __future__ import annotations

import numpy as np
import pytest

from extractors.base import ExtractorError
from extractors.behavior import BehaviorConfig, QwenVLBehaviorExtractor
from tiny_models import make_video, tiny_qwen3vl


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_qwen3vl(tmp_path_factory.mktemp("qwen_pixels"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("pixels") / "wide.mp4", seconds=2.0, fps=10, size=(320, 240), audio=False)


def extractor(model, **kw) -> QwenVLBehaviorExtractor:
    ex = QwenVLBehaviorExtractor(BehaviorConfig(model=str(model), device="cpu", max_frames=4, **kw))
    ex.load()
    return ex


def frame_pixels(ex: QwenVLBehaviorExtractor, clip) -> tuple[tuple[int, int], int]:
    """(decoded frame size, pixels per frame the processor gives the model) for the clip's one segment."""
    batch = next(ex.iter_batches(str(clip), np.array([0]), np.array([20]), 10.0))
    inputs = ex.inputs(batch.frames, batch.rel_indices, 10.0)
    _, h, w = (int(v) for v in inputs["video_grid_thw"][0])
    patch = int(ex.processor.video_processor.patch_size)
    return batch.frames[0].shape[1:3], h * w * patch * patch


def test_default_is_native_frames_and_the_processor_budget(qwen, clip):
    native = extractor(qwen)
    assert BehaviorConfig().frame_long_side is None and BehaviorConfig().max_pixels is None
    shape, pixels = frame_pixels(native, clip)
    assert shape == (240, 320)  # not resized on decode
    capped_shape, capped = frame_pixels(extractor(qwen, frame_long_side=64), clip)
    assert capped_shape == (48, 64) and capped < pixels  # the demo's cap costs fewer visual tokens


def test_explicit_per_frame_budget(qwen, clip):
    _, default = frame_pixels(extractor(qwen), clip)
    budget = default // 4
    ex = extractor(qwen, max_pixels=budget)
    _, pixels = frame_pixels(ex, clip)
    assert pixels <= budget < default
    _, floored = frame_pixels(extractor(qwen, frame_long_side=64, min_pixels=default), clip)
    assert floored >= default  # a small (capped) frame is brought up to the floor
    assert ex.fingerprint()["max_pixels"] == budget and "max_pixels" not in extractor(qwen).fingerprint()
    with pytest.raises(ExtractorError, match="min_pixels"):
        QwenVLBehaviorExtractor(BehaviorConfig(model=str(qwen), min_pixels=100, max_pixels=10))
