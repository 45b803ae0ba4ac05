"""`affcache predict VIDEO...`: per-frame valence/arousal for new videos with the trained project in
the working directory (the library: `affcache.predicting`, which the Python API calls too)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import load_params
from affcache.predicting import PredictReport, predict_videos


def run(params_path: Path, videos: list[Path], out: Path, model: str | None = None,
        max_faces: int | None = None) -> PredictReport:
    """Predict every video into `out` (`affcache.predicting.predict_videos`); raise StageFailed at the
    end if any video (or one of its modalities) failed."""
    return predict_videos(load_params(params_path), videos, out, model=model, max_faces=max_faces)
