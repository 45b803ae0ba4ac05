"""Static fine-tuning across seeds: does one setting of `train_static.<name>` beat another beyond the
spread that the seed alone gives?

Runs in a project whose `data/index.json` and crops exist (e.g. after the demo's `dvc repro`), with
the project's own `train_static.<name>` params, once per seed and per value of one boolean setting,
and prints each run's validation score and the mean per value. Nothing of the project is written
(weights go to a temporary folder).

    python bench/static_seeds.py --project . --setting discriminative_lr --seeds 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affcache.stages import Layout, read_videos  # noqa: E402
from extractors.registry import declared_static  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.files import working_dir  # noqa: E402


def sweep(project: Path, name: str, setting: str, seeds: int) -> dict[str, list[float]]:
    """{f"{setting}={value}": [validation score per seed]} for value False and True."""
    spec = declared_static()[name]
    with working_dir(project):
        params = load_params(Path("params.yaml"))
        base = params.build(f"train_static.{name}", spec.config_class())
        videos = read_videos(params, Layout.from_params(params), crops=True)
        scores: dict[str, list[float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for value in (False, True):
                for seed in range(seeds):
                    cfg = dataclasses.replace(base, seed=seed, **{setting: value})
                    metrics = spec.trainer().train(videos, cfg, Path(tmp) / f"{value}-{seed}")
                    score = metrics.get("val_ccc_mean", metrics.get("val_accuracy"))
                    scores.setdefault(f"{setting}={value}", []).append(round(float(score), 4))
                    print(f"{setting}={value} seed {seed}: {score:.4f}", flush=True)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=Path("."))
    ap.add_argument("--name", default="sun_face", help="the static encoder (train_static.<name>)")
    ap.add_argument("--setting", default="discriminative_lr", help="a boolean field of its config")
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    scores = sweep(args.project.resolve(), args.name, args.setting, args.seeds)
    print(json.dumps({k: {"scores": v, "mean": round(statistics.mean(v), 4), "min": min(v), "max": max(v)}
                      for k, v in scores.items()}, indent=1))


if __name__ == "__main__":
    main()
