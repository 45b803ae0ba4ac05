"""Progress bars: one constructor, so `-q`, `TQDM_DISABLE=1` and non-terminal output behave alike.

Why a wrapper around tqdm rather than tqdm directly: tqdm reads `TQDM_*` variables when it is
imported, while `affcache -q` is parsed after that; and a bar should follow the log level the user
chose (quiet = warnings only = no bars), which tqdm does not know about.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["bars_enabled", "progress_bar"]


def bars_enabled() -> bool:
    """False under `-q` (root log level above INFO) or with TQDM_DISABLE set to a true value."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> Any:
    """A `tqdm.auto.tqdm` bar (kwargs as tqdm's), disabled when `enabled` is False or bars are off."""
    from tqdm.auto import tqdm

    return tqdm(disable=not (enabled and bars_enabled()), **kwargs)
