"""Stage `train_<head>` (and the body of `fuse_<fusion>`): train one registry model.

params `train.<head>` / `fuse.<fusion>`: the model's config dataclass (published defaults live in
its module; params.yaml only overrides), with the same-shaped `train:` block (heads.train.TrainConfig)
in every one. The EXPR models have sections of their own (`train.expr_<head>`, `fuse.expr_<fusion>`);
their `task` is fixed by the registry entry, not by params. Reads the index and the model's registry inputs (feature stores, head outputs),
writes data/heads/<head>/ or data/fusion/<fusion>/, metrics/<model>.json and the history plot.
A model the dataset has no media for (`affcache.stages.applicable`) writes a "not applicable" marker there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from pipeline.config import Params, ParamsError, load_params
from affcache.stages import Layout, read_videos, write_json
from affcache.stages.applicable import MARKER, modality_media, reason_not_applicable, write_not_applicable

log = logging.getLogger(__name__)

HEADLINE_KEYS = ("ccc_valence", "ccc_arousal", "ccc_mean", "f1", "accuracy")


def publish_metrics(metrics: dict, out_dir: Path, metrics_path: Path) -> None:
    """Full metrics next to the model; only the headline figures in the DVC metrics file.

    Every model's metrics file then has the same keys, so `dvc metrics show` is one readable
    table (a row per model) instead of the union of every head's diagnostics.
    """
    write_json(out_dir / "metrics.json", metrics)
    write_json(metrics_path, {k: metrics[k] for k in HEADLINE_KEYS if k in metrics})


def publish_history(out_dir: Path, plot_path: Path) -> None:
    """Write the per-epoch log where dvc.yaml declares the plot, as a table DVC can draw."""
    write_json(plot_path, plot_table(json.loads((out_dir / "history.json").read_text())))


def plot_table(history: list[dict]) -> list[dict]:
    """The history's numeric columns that every epoch has, one row per epoch.

    DVC's plot renderer fails ("argument of type 'NoneType' is not iterable") on rows whose keys
    differ, as the last row's `stopped` reason makes them; history.json keeps it.
    """
    if not history:
        return []
    shared = [k for k in history[0] if all(k in row for row in history)
              and all(isinstance(row[k], (int, float)) and not isinstance(row[k], bool) for row in history)]
    return [{k: row[k] for k in shared} for row in history]


def fixed_keys(params: Params, spec, cls: type) -> dict:
    """The config keys the registry entry fixes (its `task`); a params section that sets them
    otherwise is an error rather than a silently retargeted model."""
    fields = {f.name for f in dataclasses.fields(cls)}
    fixed = {k: v for k, v in spec.task_overrides().items() if k in fields}
    section = params.section(spec.params_section) or {}
    for k, v in fixed.items():
        if k in section and section[k] != v:
            raise ParamsError(f"{params.path}: {spec.params_section}.{k}: is {section[k]!r}, but model {spec.name!r} "
                              f"is the {v!r} entry of heads.registry; drop the key (or use that task's model)")
    return fixed


def run(params_path: Path, name: str, kind: str = "head") -> dict:
    """Train registry model `name` of `kind` through the one driver; returns its metrics."""
    from heads import registry
    from heads.driver import train_model

    spec = registry.spec(name, kind)  # type: ignore[arg-type]
    params = load_params(params_path)
    cls = spec.config_class()
    cfg = params.build(spec.params_section, cls, **fixed_keys(params, spec, cls))
    head = spec.build(cfg)
    layout = Layout.from_params(params)
    records = read_videos(params, layout)  # first: a missing index is the error to report, not a missing store
    out_dir = layout.model_dir(spec.kind, spec.name)
    reason = reason_not_applicable(spec, records, modality_media(params))
    if reason:  # the dataset has no media for its inputs: an explicit "not applicable" model, no failure
        return write_not_applicable(out_dir, layout.metrics / f"{spec.model_name}.json",
                                    layout.plots / "history" / f"{spec.model_name}.json", spec.model_name, reason)
    urls = {inp: layout.input_url(inp) for inp in spec.inputs}
    videos = head.load(records, urls)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)  # applicable now (e.g. videos added since an earlier run)
    metrics = train_model(head, videos, out_dir)
    publish_metrics(metrics, out_dir, layout.metrics / f"{spec.model_name}.json")
    publish_history(out_dir, layout.plots / "history" / f"{spec.model_name}.json")
    log.info("%s %s: %s; stopped by %s after %s epochs (best epoch %s)", "train" if spec.kind == "head" else "fuse",
             name, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
             metrics.get("stopped"), metrics.get("epochs"), metrics.get("best_epoch"))
    return metrics
