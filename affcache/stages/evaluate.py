"""Stage `evaluate`: score every head and fusion on validation; metrics, plot data, late fusion.

params `evaluate`: the `EvalConfig` fields plus `late_fusion` (`enabled`, `models`, and the
`LateFusionConfig` search settings). Late-fusion weights are searched on the validation split
itself, so its figure is optimistic by construction; it is reported apart from the models. The
weights are then applied to every indexed video (test included) and written to
data/fusion/late_fusion/outputs.zarr, which `affcache export --model late_fusion` submits.

Stage `evaluate_expr` (`affcache evaluate --task expr`) scores the EXPR models on the same split
(`evaluate.split`): metrics/expr_summary.json (F1, accuracy, the first ABAW's score, the
majority-class baseline) and one confusion-matrix plot file per model under plots/confusion.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import click

from pipeline.config import build_config, load_params
from affcache.stages import Layout, read_videos, write_json
from affcache.stages.applicable import applicable_dirs

log = logging.getLogger(__name__)


def model_dirs(layout: Layout, task: str = "va") -> dict[str, Path]:
    """Every model of `task` the pipeline trains (heads.registry), by the name used in metrics and the
    report, without those the dataset has no media for (`affcache.stages.applicable`; one log line each)."""
    from heads.registry import specs

    return applicable_dirs({s.model_name: layout.model_dir(s.kind, s.name) for s in specs(task)})


def run_expr(params_path: Path) -> dict:
    """Score the EXPR models (heads.registry task "expr") on `evaluate.split`; returns the summary."""
    from pipeline.evaluate import evaluate_expr, expr_table, load_expr_labels

    params = load_params(params_path)
    split = str(params.get("evaluate.split", "validation"))
    layout = Layout()
    records = read_videos(params, layout)
    models = model_dirs(layout, "expr")
    if not models:  # e.g. a corpus labelled for VA only: every EXPR model says why it is not applicable
        return write_no_models(layout.metrics / "expr_summary.json", layout.plots / "confusion", "EXPR")
    summary = evaluate_expr(models, load_expr_labels(records, split),
                            load_expr_labels(records, "train"), layout.metrics / "expr_summary.json",
                            layout.plots / "confusion")
    click.echo(expr_table(summary))
    return summary


def write_no_models(summary_path: Path, plots_dir: Path, task: str) -> dict:
    """The outputs of an evaluation with no applicable model: a summary that says so, no plot file."""
    summary = {"not_applicable": f"no {task} model is applicable to this dataset (see each model's metrics file)"}
    write_json(summary_path, summary)
    shutil.rmtree(plots_dir, ignore_errors=True)
    plots_dir.mkdir(parents=True)
    log.warning("evaluate: %s", summary["not_applicable"])
    return summary


def run(params_path: Path) -> None:
    from heads.postprocess import LATE_FUSION, LateFusionConfig, late_fusion, write_late_fusion
    from pipeline.evaluate import (EvalConfig, coverage, evaluate, label_frame_times, load_labels, metrics_table,
                                   prediction_sets)

    params = load_params(params_path)
    section = dict(params.get("evaluate") or {})
    late = dict(section.pop("late_fusion", None) or {})
    cfg = build_config(EvalConfig, section, where=f"{params.path}: evaluate")
    layout = Layout()
    records = read_videos(params, layout)
    labels = load_labels(records, cfg.split)
    times = label_frame_times(records, labels)
    models = model_dirs(layout)
    summary = evaluate(models, labels, layout.metrics / "summary.json", layout.plots, cfg, times)
    click.echo(metrics_table(summary))
    # flat keys: `dvc metrics show` prints one column per key, and the split is the evaluate.split param
    write_json(layout.metrics / "coverage.json", coverage(labels, reliability_rows(layout, labels), times))
    late_path, late_dir = layout.metrics / "late_fusion.json", layout.fusion_dir(LATE_FUSION)
    headline_path = layout.metrics / "late_fusion_ccc.json"  # the per-model files' keys, for the metrics table
    if not late.pop("enabled", False):
        write_json(late_path, {"enabled": False})
        write_json(headline_path, {})
        # the stage's declared output, empty when disabled: no earlier run's fusion left to export
        shutil.rmtree(late_dir, ignore_errors=True)
        late_dir.mkdir(parents=True)
        return
    names = [n for n in (late.pop("models", None) or models) if n in models or not_listed(n, layout)]
    late_cfg = build_config(LateFusionConfig, late, where=f"{params.path}: evaluate.late_fusion")
    every_video = [v.video_id for v in records]
    result, fused = late_fusion(prediction_sets({n: models[n] for n in names}, every_video, fill=True),
                                labels, late_cfg)
    summary_json = result.to_json()
    write_late_fusion(late_dir, fused, records, summary_json["weights"])
    write_json(late_path, {"enabled": True, **summary_json, "note": f"weights searched on {cfg.split}",
                           "videos_fused": {s: sum(1 for v in records if v.split == s and v.video_id in fused)
                                            for s in dict.fromkeys(v.split for v in records)}})
    write_json(headline_path, {f"ccc_{k}": summary_json["ccc"][k] for k in ("valence", "arousal", "mean")})
    log.info("late fusion of %s: ccc_mean=%.4f (weights searched on %s)", ", ".join(names),
             summary_json["ccc"]["mean"], cfg.split)


def not_listed(name: str, layout: Layout) -> bool:
    """False for a model of `evaluate.late_fusion.models` that is not applicable (it is left out, with a
    log line); True otherwise, so an unknown name still fails where it is used."""
    from affcache.stages.applicable import not_applicable_model

    reason = not_applicable_model(layout, name)
    if reason:
        log.info("late fusion: leaving out %s, not applicable (%s)", name, reason)
    return not reason


def reliability_rows(layout: Layout, labels: dict) -> dict:
    """The reliability store's rows of the scored videos (face found, voice activity)."""
    from pipeline.store import FeatureStore

    store = FeatureStore.open(layout.input_url("features/reliability"))
    ids = [v for v in labels if store.is_complete(v)]
    return store.read_many(ids, ["t0", "t1", "face", "vad", "vad_t0", "vad_t1"]) if ids else {}
