"""Progress bars follow the user's choice: `-q` (log level above INFO) and TQDM_DISABLE turn them off."""

from __future__ import annotations

import logging

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


def test_quiet_flag_sets_the_level_bars_read(monkeypatch) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main

    root = logging.getLogger()
    before = root.level
    try:
        CliRunner().invoke(main, ["-q", "store", "--help"])
        assert root.getEffectiveLevel() == logging.WARNING and not bars_enabled()
        CliRunner().invoke(main, ["store", "verify", "nope.zarr", "-q"])
        assert root.getEffectiveLevel() == logging.WARNING
    finally:
        root.setLevel(before)
