"""affcache: decode once, encode once, cache forever; train small heads many times.

The one import name for using the pipeline from Python (the folders `pipeline/`, `extractors/` and
`heads/` are its implementation)::

    import affcache

    url = affcache.extract(["clip.mp4"], "face", store="features", config={"weights": "grada.pth"})
    feats = affcache.open_features(url)                      # {video_id: {array: np.ndarray}}
    ds = affcache.open_features(url, video="clip", xarray=True)  # xarray.Dataset (time, feature)
    df = affcache.predict(["clip.mp4"], project=".")         # pandas DataFrame, one row per frame

Importing this package is cheap: torch, transformers and the models load only inside the calls.
The package also holds the roof of the house (the CLI in `affcache.cli`, the DVC stages in
`affcache.stages`); the API attributes load on first use, so importing a stage never imports the API.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("affcache")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "EXTRACTOR_DEFAULTS", "extract", "open_features", "predict"]
_API = {"EXTRACTOR_DEFAULTS", "extract", "open_features", "predict"}


def __getattr__(name: str) -> Any:
    if name in _API:  # by name, so a stage that imports `affcache.stages` never depends on the API
        return getattr(importlib.import_module("affcache.api"), name)
    raise AttributeError(f"module 'affcache' has no attribute {name!r}")
