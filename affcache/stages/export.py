"""`affcache export`: an ABAW submission file from one model's predictions.

The model's task (heads.registry) picks the format: a VA model writes the VA submission, an EXPR
model (`expr_<...>`) the EXPR one; a template, when given, must be that task's. `late_fusion` is
the weighted late fusion the evaluate stage fits on validation and applies to every split (VA).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.config import load_params
from affcache.stages import Layout, StageFailed, read_videos
from affcache.stages.applicable import not_applicable_model
from affcache.stages.evaluate import model_dirs

log = logging.getLogger(__name__)


def run(params_path: Path, model: str | None, split: str, template: Path | None, out: Path) -> None:
    from pipeline.evaluate import outputs_url
    from pipeline.export import ExportError, export_submission, predictions_from_store

    from heads.postprocess import LATE_FUSION
    from heads.registry import by_model_name

    layout = Layout()
    models = {**model_dirs(layout, "va"), **model_dirs(layout, "expr"), LATE_FUSION: layout.fusion_dir(LATE_FUSION)}
    if model is None:
        summary_path = layout.metrics / "summary.json"
        if not summary_path.exists():
            raise StageFailed(f"{summary_path}: not found; run `dvc repro evaluate` or pass --model")
        model = json.loads(summary_path.read_text())["best"]["model"]
    if model not in models:
        na = not_applicable_model(layout, model)
        if na:
            raise StageFailed(f"model {model!r} is not applicable to this dataset ({na}); choose one of {', '.join(models)}")
        raise StageFailed(f"unknown model {model!r}; choose one of {', '.join(models)}")
    if model == LATE_FUSION and not (models[model] / "outputs.zarr").exists():
        raise StageFailed(f"{models[model]}/outputs.zarr: not found; enable `evaluate.late_fusion` and run "
                          "`dvc repro evaluate`")
    videos = [v for v in read_videos(load_params(params_path), layout) if v.split == split]
    if not videos:
        raise StageFailed(f"{layout.index}: no video in split {split!r}")
    task = "va" if model == LATE_FUSION else by_model_name(model).task
    url = outputs_url(models[model])
    preds = predictions_from_store(url, [v.video_id for v in videos])
    frames = {v.video_id: int(v.label_frames.get(task, v.num_frames)) for v in videos}
    try:
        rows = export_submission(preds, out, num_frames=frames, template=template, source=url, task=task)
    except ExportError as exc:
        raise StageFailed(str(exc)) from exc
    log.info("export: %d rows of %s (%s split) -> %s", rows, model, split, out)
