"""affcache: decode once, encode once, cache forever; train small heads many times.

The one import name for using the pipeline from Python (the folders `pipeline/`, `extractors/` and
`heads/` are its implementation)::

    import affcache

    url = affcache.extract(["clip.mp4"], "face", store="features", config={"weights": "grada.pth"})
    feats = affcache.open_features(url)                      # {video_id: {array: np.ndarray}}
    ds = affcache.open_features(url, video="clip", xarray=True)  # xarray.Dataset (time, feature)
    df = affcache.predict(["clip.mp4"], project=".")         # pandas DataFrame, one row per frame

Importing this package is cheap: torch, transformers and the models load only inside the calls.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from affcache.api import EXTRACTOR_DEFAULTS, extract, open_features, predict

try:
    __version__ = version("affcache")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "EXTRACTOR_DEFAULTS", "extract", "open_features", "predict"]
