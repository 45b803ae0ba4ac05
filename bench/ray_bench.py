"""The Ray engine vs the local engine on the demo: throughput ratio, per-video overhead, same content.

Builds the tiny demo (demo data, tiny encoders, index; as the tests do) in a temporary folder, then
extracts one modality three ways into fresh stores, in one run on one machine:

  - local: `run_extraction` (decode threads + batched model in this process), the baseline;
  - ray x1, ray x2: `run_extraction_ray` with 1 and 2 actors on a local Ray started once before the
    timings (cluster start-up is a one-off per run and is printed separately; actor start-up, model
    loading and every video are inside the timing).

Prints seconds, videos/s, the ratio local_time / ray_time (above 1: Ray is faster), the per-video
overhead (ray_time - local_time) / videos, and max |ray - local| over every array.

    .venv/bin/python bench/ray_bench.py --modality face --seconds 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.files import working_dir  # noqa: E402


def build_demo(root: Path, seconds: float) -> Path:
    """The tiny demo project (stage functions, no DVC): params, data, tiny encoders, index."""
    from affcache.stages import demo_data, demo_models, index

    project = root / "project"
    project.mkdir()
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["demo"] = {"root": "data/raw/demo", "preset": "tiny", "overrides": {"seconds": [seconds, seconds]}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with working_dir(project):
        demo_data.run(Path("params.yaml"))
        demo_models.run(Path("params.yaml"))
        index.run(Path("params.yaml"))
    return project


def read_all(url: str) -> dict[str, dict[str, np.ndarray]]:
    from pipeline.store import FeatureStore

    store = FeatureStore.open(url)
    return {v: dict(store.read_video(v)) for v in store.video_ids()}


def max_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for vid in a:
        for name, x in a[vid].items():
            if x.dtype.kind in "fiub":
                worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - b[vid][name].astype(np.float64)),
                                                initial=0.0)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", default="face", choices=["face", "audio", "behavior", "reliability"])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each demo video")
    args = ap.parse_args()

    import ray
    import torch

    from extractors.base import run_extraction
    from extractors.engine_ray import RayConfig, run_extraction_ray
    from pipeline.config import load_params
    from affcache.stages import Layout, read_videos
    from affcache.project_extractors import build_extractor

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        project = build_demo(Path(tmp), args.seconds)
        with working_dir(project):
            params = load_params(Path("params.yaml"))
            videos = read_videos(params, Layout(), crops=True)
            t = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
            print(f"ray.init: {time.perf_counter() - t:.1f} s (once per run, not in the timings below)")
            runs: dict[str, tuple[float, str]] = {}
            t = time.perf_counter()
            report = run_extraction(build_extractor(params, args.modality), videos, "local", progress=False)
            runs["local"] = (time.perf_counter() - t, report.url)
            for actors in (1, 2):
                t = time.perf_counter()
                cfg = RayConfig(actors=actors, cpus_per_actor=max(1, (os.cpu_count() or 1) // actors),
                                threads_per_actor=max(1, threads // actors))
                report = run_extraction_ray(build_extractor(params, args.modality), videos, f"ray{actors}", cfg,
                                            progress=False)
                runs[f"ray x{actors}"] = (time.perf_counter() - t, report.url)
            base_s, base_url = runs["local"]
            want = read_all(base_url)
            n = len(videos)
            print(f"{args.modality}: {n} videos of {args.seconds:g} s, {os.cpu_count()} CPUs, local torch threads {threads}")
            print(f"{'engine':<10}{'seconds':>9}{'videos/s':>10}{'ratio':>8}{'overhead/video':>16}{'max |diff|':>12}")
            for name, (sec, url) in runs.items():
                diff = 0.0 if name == "local" else max_diff(read_all(url), want)
                print(f"{name:<10}{sec:>9.2f}{n / sec:>10.2f}{base_s / sec:>7.2f}x{(sec - base_s) / n:>15.2f}s"
                      f"{diff:>12.2e}")
            ray.shutdown()


if __name__ == "__main__":
    main()
