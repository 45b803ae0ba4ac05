"""Stage `fuse_<fusion>`: train one fusion (a registry model of kind "fusion") on the heads' outputs.

params `fuse.<fusion>`: the fusion's config dataclass (published defaults in its module), with the
same `train:` block as the heads. Fusion reads head outputs (never raw features) plus the
reliability store for the audio filter; the training itself is the one driver, as for the heads.
"""

from __future__ import annotations

from pathlib import Path

from affcache.stages import train


def run(params_path: Path, name: str) -> dict:
    """Train fusion `name`; returns its metrics."""
    return train.run(params_path, name, kind="fusion")
