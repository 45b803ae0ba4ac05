"""Progress bars follow the user's choice: `-q` (log level above INFO) and TQDM_DISABLE turn them off."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.progress import bars_enabled, progress_bar


@pytest.fixture()
def info_level():
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    yield root
    root.setLevel(before)


def test_bars_follow_the_log_level(info_level, monkeypatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert bars_enabled()
    assert not progress_bar(total=3).disable
    info_level.setLevel(logging.WARNING)  # what -q sets
    assert not bars_enabled() and progress_bar(total=3).disable


@pytest.mark.parametrize("value, enabled", [("1", False), ("true", False), ("0", True), ("", True)])
def test_tqdm_disable_variable(info_level, monkeypatch, value: str, enabled: bool) -> None:
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert bars_enabled() is enabled


def test_a_caller_can_still_turn_its_bar_off(info_level, monkeypatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_bar(enabled=False, total=3).disable


def test_quiet_flag_sets_the_level_bars_read(monkeypatch, tmp_path) -> None:
    from click.testing import CliRunner

    from affcache.cli import main

    root = logging.getLogger()
    before = root.level
    try:
        CliRunner().invoke(main, ["-q", "store", "--help"])
        assert root.getEffectiveLevel() == logging.WARNING and not bars_enabled()
        CliRunner().invoke(main, ["store", "verify", str(tmp_path / "nope.zarr"), "-q"])
        assert root.getEffectiveLevel() == logging.WARNING
    finally:
        root.setLevel(before)


# ------------------------------------------------------------------ bars within a unit of work


@pytest.fixture()
def bars(monkeypatch):
    """Every tqdm bar `pipeline.progress` makes, recorded (with whether it was closed)."""
    import tqdm.auto

    made = []

    class Recording(tqdm.auto.tqdm):
        was_closed = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.kw = kwargs
            self.off = self.disable  # as made (close() sets `disable`)
            made.append(self)

        def close(self):
            self.was_closed = True
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    return made


def _toy_with_frame_bar():
    """The toy extractor, reporting its 300 rows in batches of 64 the way the real extractors do."""
    from pipeline.progress import inner_bar
    from toy_extractor import ToyConfig, ToyExtractor

    class FramesToy(ToyExtractor):
        def compute(self, video, prepared):
            rows = self.cfg.rows
            with inner_bar(rows, "frame") as bar:
                for s in range(0, rows, 64):
                    bar.update(min(64, rows - s))
            return super().compute(video, prepared)

    return FramesToy(ToyConfig())


def test_extraction_shows_a_bar_within_each_video_and_across_videos(bars, info_level, tmp_path) -> None:
    from extractors.base import run_extraction
    from toy_extractor import toy_videos

    videos = toy_videos(tmp_path, 2)
    report = run_extraction(_toy_with_frame_bar(), videos, str(tmp_path / "features"))
    assert report.ok and len(report.done) == 2
    outer = [b for b in bars if b.kw.get("unit") == "video"]
    inner = [b for b in bars if b.kw.get("unit") == "frame"]
    assert len(outer) == 1 and outer[0].total == 2 and outer[0].n == 2 and outer[0].was_closed
    assert [b.desc.rstrip(": ") for b in inner] == ["vid00", "vid01"]  # named after the video it runs in
    assert all(b.total == 300 and b.n == 300 and b.was_closed and not b.off for b in inner)
    assert all(b.kw.get("leave") is False for b in inner)  # the across-videos bar stays, the inner one goes


def test_quiet_silences_the_inner_bars_and_bars_change_no_output(bars, info_level, tmp_path) -> None:
    from extractors.base import run_extraction
    from pipeline.store import FeatureStore
    from toy_extractor import toy_videos

    videos = toy_videos(tmp_path, 2)
    shown = run_extraction(_toy_with_frame_bar(), videos, str(tmp_path / "a"))
    info_level.setLevel(logging.WARNING)  # -q
    before = len(bars)
    quiet = run_extraction(_toy_with_frame_bar(), videos, str(tmp_path / "b"))
    assert bars[before:] and all(b.off for b in bars[before:])
    a, b = FeatureStore.open(shown.url), FeatureStore.open(quiet.url)
    for v in videos:
        ga, gb = a.read_video(v.video_id), b.read_video(v.video_id)
        assert set(ga) == set(gb) and all(np.array_equal(ga[k], gb[k]) for k in ga)


def test_inner_bar_is_off_outside_an_engine_and_when_the_engine_says_so(bars, info_level) -> None:
    from pipeline.progress import advance_to, inner_bar, unit_scope

    assert inner_bar(10, "frame").disable  # e.g. compute() called by a test or a remote actor
    with unit_scope("v1", enabled=False):
        assert inner_bar(10, "frame").disable
    with unit_scope("v2"):
        bar = inner_bar(10, "frame")
        assert not bar.disable and bar.total == 10
        advance_to(bar, 4)
        advance_to(bar, 3)  # never back
        advance_to(bar, 99)  # never past the total
        assert bar.n == 10
        bar.close()


def test_audio_extractor_reports_its_chunks(bars, info_level, tmp_path) -> None:
    """A real extractor's batch loop: one bar over the waveform's chunks, updated per batch."""
    from extractors.audio import AudioConfig, SpeechSSLExtractor
    from pipeline.progress import unit_scope
    from tiny_models import speechlike, tiny_wavlm

    ex = SpeechSSLExtractor(AudioConfig(model=str(tiny_wavlm(tmp_path)), device="cpu", chunk_seconds=1.0,
                                        overlap_seconds=0.2, batch_size=2))
    ex.load()
    wav = speechlike(4.0)
    with unit_scope("clip"):
        shown = ex.encode(wav)
    (bar,) = [b for b in bars if b.kw.get("unit") == "chunk"]
    assert bar.total >= 4 and bar.n == bar.total and bar.was_closed
    info_level.setLevel(logging.WARNING)
    quiet = ex.encode(wav)
    assert all(np.array_equal(shown[k], quiet[k]) for k in shown)


def test_training_shows_a_bar_over_epochs_even_without_batch_bars(bars, info_level, tmp_path) -> None:
    """Fusions turn the per-batch bar off (`progress: false`); the bar over epochs still shows, and
    no result depends on bars."""
    import json

    import torch

    from heads.train import Batches, TrainConfig, fit

    def train(out):
        torch.manual_seed(0)
        x, y = torch.randn(32, 4), torch.randn(32, 1)
        model = torch.nn.Linear(4, 1)
        batches = Batches(32, 8, lambda idx: {"x": x[idx], "y": y[idx]}, seed=0)
        loss = lambda m, b: torch.nn.functional.mse_loss(m(b["x"]), b["y"])  # noqa: E731
        fit(model, batches, loss, lambda m: {"ccc_mean": 0.5}, TrainConfig(epochs=3, seed=0, progress=False, device="cpu"),
            out, name="fusion_x")
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in json.loads((out / "history.json").read_text())]

    shown = train(tmp_path / "a")
    (epochs,) = [b for b in bars if b.kw.get("unit") == "epoch"]
    assert epochs.total == 3 and epochs.n == 3 and epochs.was_closed and not epochs.off
    assert epochs.desc.startswith("fusion_x")
    batch_bars = [b for b in bars if b.kw.get("unit") != "epoch"]
    assert len(batch_bars) == 3 and all(b.off for b in batch_bars)  # progress=False: no batch bars
    info_level.setLevel(logging.WARNING)
    before = len(bars)
    assert train(tmp_path / "b") == shown
    assert all(b.off for b in bars[before:])


# ------------------------------------------------------------------ bars of the libraries we drive

_LOAD_AFTER_CLI = """
import sys
from click.testing import CliRunner
from transformers import WavLMModel
from affcache.cli import main
CliRunner().invoke(main, sys.argv[2:] + ["store", "--help"])
WavLMModel.from_pretrained(sys.argv[1])
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_silences_transformers_loading_bars(tmp_path, quiet: bool) -> None:
    """transformers draws its own "Loading weights" bar; under -q it goes, as ours do."""
    import os
    import subprocess
    import sys

    from tiny_models import tiny_wavlm

    model = tiny_wavlm(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    run = subprocess.run([sys.executable, "-c", _LOAD_AFTER_CLI, str(model), *(["-q"] if quiet else [])],
                         capture_output=True, text=True, env=env, check=True)
    assert ("Loading weights" in run.stderr) is not quiet, run.stderr[-2000:]
