"""Stage `demo_models`: the embedded demo's tiny random-initialised encoders."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import load_params

log = logging.getLogger(__name__)


def calibration_crops(crops_root: Path, count: int) -> list:
    """`count` face crops spread evenly over every crop folder (sorted, so the choice is stable)."""
    import cv2

    files = sorted(crops_root.glob("*/*.jpg"))
    if not files:
        raise FileNotFoundError(f"{crops_root}: no face crops for the demo encoder's calibration; "
                                "run `affcache demo-data` first or set demo_models.calibration_crops to null")
    picked = files[:: max(1, len(files) // count)][:count]
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in picked]


def run(params_path: Path, out: Path | None = None) -> None:
    """Write the tiny random-initialised checkpoints (params `demo_models`).

    `calibration_crops` (a `cropped_aligned` folder) feeds GRADA's BatchNorm calibration; see
    `extractors.demo_models.write_grada` for why a random EfficientNet needs it.
    """
    from extractors import demo_models

    params = load_params(params_path)
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
