"""Stages `demo_data` and `demo_models`: the embedded demo's dataset and its tiny encoders."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pipeline.config import build_config, load_params
from pipeline.stages import check_stage_params

log = logging.getLogger(__name__)


def generate_data(params_path: Path, out: Path | None = None, labels_from: Path | None = None) -> None:
    """Write the synthetic Aff-Wild2-shaped tree (params `demo`: root, preset, overrides)."""
    from pipeline.datasets import synthetic

    params = load_params(params_path)
    check_stage_params(params)
    preset = params.get("demo.preset", "default")
    presets = {"default": synthetic.DemoConfig.default, "tiny": synthetic.DemoConfig.tiny}
    if preset not in presets:
        raise ValueError(f"{params.path}: demo.preset must be one of {', '.join(presets)}, got {preset!r}")
    base = dataclasses.asdict(presets[preset]())
    base.update(params.get("demo.overrides") or {})
    cfg = build_config(synthetic.DemoConfig, base, where=f"{params.path}: demo.overrides")
    root = Path(out or params.section("demo.root"))
    labels_from = labels_from or (Path(params.get("demo.labels_from")) if params.get("demo.labels_from") else None)
    manifest = synthetic.generate(root, cfg, labels_from=labels_from)
    log.info("demo data: %d videos in %s", len(manifest.get("videos", manifest)), root)


def calibration_crops(crops_root: Path, count: int) -> list:
    """`count` face crops spread evenly over every crop folder (sorted, so the choice is stable)."""
    import cv2

    files = sorted(crops_root.glob("*/*.jpg"))
    if not files:
        raise FileNotFoundError(f"{crops_root}: no face crops for the demo encoder's calibration; "
                                "run `affcache demo-data` first or set demo_models.calibration_crops to null")
    picked = files[:: max(1, len(files) // count)][:count]
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in picked]


def write_models(params_path: Path, out: Path | None = None) -> None:
    """Write the tiny random-initialised checkpoints (params `demo_models`).

    `calibration_crops` (a `cropped_aligned` folder) feeds GRADA's BatchNorm calibration; see
    `extractors.demo_models.write_grada` for why a random EfficientNet needs it.
    """
    from extractors import demo_models

    params = load_params(params_path)
    check_stage_params(params)
    out_dir = Path(out or params.section("demo_models.out"))
    crops = params.get("demo_models.calibration_crops")
    images = calibration_crops(Path(crops), int(params.get("demo_models.calibration_count", 64))) if crops else None
    paths = demo_models.write_all(
        out_dir,
        seed=int(params.get("demo_models.seed", 0)),
        face_calibration=images,
        face_image_size=int(params.get("demo_models.face_image_size", 96)),
    )
    for name, path in sorted(paths.items()):
        log.info("demo model %s -> %s", name, path)
