"""The Python API: the same library calls the CLI stages make, with typed arguments instead of
params.yaml (library code never reads params files; `predict` is the one exception because a trained
project *is* its params file plus its `data/` folder, as `dvc repro` left them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside the calls
    import pandas
    import xarray

    from pipeline.store import VideoArrays

PathLike = str | os.PathLike



def __getattr__(name: str) -> Any:
    """`EXTRACTOR_DEFAULTS`: modality -> the extractor it uses unless `extractor=` names another, as
    the extractors declare it (read on first use, so importing this module stays cheap)."""
    if name == "EXTRACTOR_DEFAULTS":
        from extractors.registry import default_extractors

        return default_extractors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def extract(videos: PathLike | Sequence[PathLike], modality: str, store: PathLike = "features", *,
            extractor: str | None = None, config: dict[str, Any] | None = None, workers: int = 2,
            prefetch: int = 2, progress: bool = True) -> str:
    """Extract one modality's features for video files (or folders of them) into a feature store.

    `store` is a features root (local path or fsspec URL): the store itself is
    `<store>/<modality>/<extractor>-<hash>.zarr`, keyed by the config's fingerprint, so a second call
    with the same files and config recomputes nothing. `config` holds the extractor config's fields
    (e.g. `{"model": "microsoft/wavlm-large", "device": "cuda"}`; checked strictly, unknown keys
    rejected). Video ids are file stems (distinct ids where stems repeat, as `affcache predict` makes
    them). Returns the store URL; raises `extractors.base.ExtractorError` if some video failed (the
    others are stored, a re-run retries only the failed ones).
    """
    from affcache.predicting import PredictReport, expand_inputs, probe_videos
    from extractors.base import ExtractorError, run_extraction
    from extractors.registry import build_extractor, default_extractors

    defaults = default_extractors()
    if modality not in defaults:
        raise ValueError(f"modality must be one of {', '.join(defaults)}, got {modality!r}")
    name = extractor or defaults[modality]
    try:
        ext = build_extractor(name, dict(config or {}), where=f"affcache.extract({name}) config", modality=modality)
    except ExtractorError as e:
        raise ValueError(str(e)) from e
    paths = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
    probed = PredictReport()
    records = probe_videos(expand_inputs([Path(p) for p in paths]), probed)
    if probed.failed:
        raise ExtractorError("; ".join(f["error"] for f in probed.failed))
    report = run_extraction(ext, records, str(store), workers=workers, prefetch=prefetch, progress=progress)
    if report.failed:
        raise ExtractorError(f"{len(report.failed)} video(s) failed, the others are stored in {report.url}: "
                             + "; ".join(f"{f['file']}: {f['error']}" for f in report.failed))
    return report.url


def open_features(store: PathLike, video: str | None = None, *, arrays: Sequence[str] | None = None,
                  xarray: bool = False, storage_options: dict | None = None
                  ) -> "dict[str, VideoArrays] | VideoArrays | xarray.Dataset | xarray.DataTree":
    """Read a feature store (the URL `extract` returns, or any `<modality>/*.zarr` of `data/features`).

    Without `video`: every complete video, `{video_id: {array: np.ndarray}}` (`.attrs` holds the
    group's attributes). With `video`: that video only. `xarray=True` returns an `xarray.Dataset` for
    one video, or an `xarray.DataTree` (one node per video) for the whole store; dimensions are named
    in the store (`time`, `feature`, ...), see the README's feature schema.
    """
    from pipeline.store import FeatureStore, open_xarray

    url = str(store)
    if xarray:
        if video is not None:
            ds = open_xarray(url, video, storage_options=storage_options)
            return ds[list(arrays)] if arrays else ds
        return open_xarray(url, storage_options=storage_options)
    fs = FeatureStore.open(url, storage_options=storage_options)
    if video is not None:
        return fs.read_video(video, arrays)
    ids = [v for v in fs.video_ids() if fs.is_complete(v)]
    return fs.read_many(ids, arrays)


def predict(videos: PathLike | Sequence[PathLike], *, project: PathLike = ".", params: PathLike = "params.yaml",
            model: str | None = None, out: PathLike = "data/predictions",
            max_faces: int | None = None) -> "pandas.DataFrame":
    """Per-frame predictions for video files (or folders) with a trained project's models.

    `project` is a folder where `dvc repro` (or `dvc pull`) has left `data/heads` and `data/fusion`;
    `params` and `out` are relative to it (the working directory stays where it is: `videos` are
    read relative to it). Exactly what `affcache predict` does (features cached in
    `<out>/features`, one CSV and plot per video there); returns all videos' rows in one DataFrame
    with a leading `video_id` column, one row per frame and person (`person`: 0 = the face seen
    longest; `max_faces` as `--max-faces`). Raises `affcache.stages.StageFailed` if any file failed.
    """
    import pandas as pd

    from affcache.predicting import predict_videos
    from affcache.stages.schema import MEMO, check_params_file
    from pipeline.config import load_params

    root = Path(project)
    paths = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
    params_path = root / params
    check_params_file(params_path, memo=root / MEMO)
    report = predict_videos(load_params(params_path), [Path(p).resolve() for p in paths], Path(out), root=root,
                            model=model, max_faces=max_faces)
    frames = [pd.read_csv(o["csv"]).assign(video_id=vid) for vid, o in sorted(report.outputs.items())]
    df = pd.concat(frames, ignore_index=True)
    return df[["video_id"] + [c for c in df.columns if c != "video_id"]]
