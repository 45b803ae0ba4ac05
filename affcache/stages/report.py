"""Stage `report`: the static HTML report (data/reports/index.html). params `report`: ReportConfig.

The Expression section appears when metrics/expr_summary.json exists (stage evaluate_expr); its
confusion matrices are counted from plots/confusion/<model>.csv.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from pipeline.config import Params, load_params
from affcache.stages import Layout, read_videos
from affcache.stages.evaluate import model_dirs

log = logging.getLogger(__name__)


def run(params_path: Path) -> None:
    from pipeline.evaluate import EvalConfig, label_frame_times, load_labels, read_confusion
    from pipeline.report import ReportConfig, build_report

    params = load_params(params_path)
    cfg = params.build("report", ReportConfig)
    layout = Layout()
    summary = json.loads((layout.metrics / "summary.json").read_text())
    records = read_videos(params, layout)
    labels = load_labels(records, EvalConfig().split)
    times = label_frame_times(records, labels)  # the report's time axis, in seconds
    expr_path = layout.metrics / "expr_summary.json"
    expr = json.loads(expr_path.read_text()) if expr_path.exists() else None
    expr = None if expr and "not_applicable" in expr else expr  # no EXPR model applies: no Expression section
    confusion = {}
    for name in model_dirs(layout, "expr") if expr else ():
        f = layout.plots / "confusion" / f"{name}.csv"
        if f.exists():
            confusion[name] = read_confusion(f)
    late = _json(layout.metrics / "late_fusion.json")
    coverage = _json(layout.metrics / "coverage.json")
    path = build_report(summary, model_dirs(layout), labels, layout.reports / "index.html", cfg,
                        expr_summary=expr, confusion=confusion, late_fusion=late, coverage=coverage,
                        run_info=run_info(params), frame_times=times)
    log.info("report: %s", path)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_info(params: Params) -> dict[str, str]:
    """What identifies the run: the git revision of the code (with `+changes` when the work tree
    differs) and the SHA-256 (first 12 hex digits) of the params as canonical JSON, without
    `dataset.root`: where the dataset sits on this machine is no part of any result (dvc.yaml lists
    the same params for this stage, so a teammate's other root re-runs nothing after `index`)."""
    import hashlib
    import subprocess

    data = copy.deepcopy(params.data)
    (data.get("dataset") or {}).pop("root", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    info = {"params sha256": hashlib.sha256(canonical.encode()).hexdigest()[:12]}
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        # the pipeline's own bookkeeping (dvc.lock, metrics/) changes during every run: not "changes"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock",
                                ":!metrics", ":!plots"], capture_output=True, text=True, timeout=10).stdout.strip()
        info["git revision"] = rev + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        info["git revision"] = "unknown (not a git checkout)"
    return info
