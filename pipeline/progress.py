"""Progress bars: one constructor, so `-q`, `TQDM_DISABLE=1` and non-terminal output behave alike.

Why a wrapper around tqdm rather than tqdm directly: tqdm reads `TQDM_*` variables when it is
imported, while `affcache -q` is parsed after that; and a bar should follow the log level the user
chose (quiet = warnings only = no bars), which tqdm does not know about.

Bars inside one unit of work (the frames of one video): the engine that runs the unit opens a
`unit_scope` (and decides whether bars are wanted there: not in a remote worker, not with
`progress=False`); code deep inside the unit -- an extractor's batch loop -- asks `inner_bar` for a
bar with its own step count and never needs a flag passed down. Outside a scope that bar is
disabled, so a test or a remote actor calling `compute` directly prints nothing.

Every bar writes to stderr only and reads nothing the computation uses: turning bars on or off
changes no result and no output file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from contextvars import ContextVar
from typing import Any, Iterator

__all__ = ["advance_to", "bars_enabled", "inner_bar", "logs_above_bars", "progress_bar", "unit_scope"]

# (description of the running unit, whether its inner bars may show) -- set by the engine
_SCOPE: ContextVar[tuple[str, bool] | None] = ContextVar("affcache_progress_scope", default=None)


def bars_enabled() -> bool:
    """False under `-q` (root log level above INFO) or with TQDM_DISABLE set to a true value."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> Any:
    """A `tqdm.auto.tqdm` bar (kwargs as tqdm's) on stderr, disabled when `enabled` is False or bars are off."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    return tqdm(disable=not (enabled and bars_enabled()), **kwargs)


@contextlib.contextmanager
def unit_scope(desc: str, enabled: bool = True) -> Iterator[None]:
    """Run one unit of work (e.g. one video, `desc` its id) whose inner steps may show an `inner_bar`."""
    token = _SCOPE.set((desc, enabled))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def inner_bar(total: int, unit: str) -> Any:
    """A bar over the steps of the current unit (`total` of `unit`: frames, chunks, segments), named
    after the unit and removed when closed (`leave=False`: the across-units bar stays). Disabled
    outside a `unit_scope`, in a scope opened with enabled=False, and when bars are off. Update it
    per batch, not per frame: the per-frame cost must stay nil."""
    scope = _SCOPE.get()
    desc, enabled = scope if scope is not None else ("", False)
    return progress_bar(enabled=enabled, total=int(total), desc=desc, unit=unit, leave=False)


def advance_to(bar: Any, position: int) -> None:
    """Move `bar` forward to `position` steps done (never back, never past its total)."""
    if bar.total is not None:
        position = min(int(position), int(bar.total))
    if position > bar.n:
        bar.update(position - bar.n)


@contextlib.contextmanager
def logs_above_bars() -> Iterator[None]:
    """While bars show, route console log lines through tqdm so they print above the bars instead
    of through them (log records, levels and file handlers are untouched)."""
    console = any(type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)
                  for h in logging.getLogger().handlers)
    if not (bars_enabled() and console):  # no console handler (library use): add none
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield
