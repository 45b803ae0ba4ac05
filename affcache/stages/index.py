"""Stage `index`: scan the dataset into data/index.json (one `Video` record per annotation id)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.files import sha256_file
from pipeline.records import Video, write_index
from affcache.stages import Layout

log = logging.getLogger(__name__)


def with_label_hashes(video: Video) -> Video:
    """Record each label file's hash so the index (the heads' only label dep) changes with them."""
    return dataclasses.replace(video, label_hashes={task: sha256_file(p) for task, p in video.labels.items()})


def run(params_path: Path, adapter: str | None = None, root: Path | None = None, out: Path | None = None) -> None:
    from pipeline.datasets import build_index

    params = load_params(params_path)
    adapter = adapter or params.section("dataset.adapter")
    root = Path(root or params.section("dataset.root"))
    out = Path(out or params.get("dataset.index") or Layout().index)
    options = dict(params.get("dataset.options") or {})
    videos, warnings = build_index(adapter, root, **options)
    videos = [with_label_hashes(v) for v in videos]
    write_index(videos, out, warnings=warnings)
    splits: dict[str, int] = {}
    for video in videos:
        splits[video.split] = splits.get(video.split, 0) + 1
    log.info("index: %d videos (%s) -> %s; %d warning(s)", len(videos),
             ", ".join(f"{k} {v}" for k, v in sorted(splits.items())), out, len(warnings))
