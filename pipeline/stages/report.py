"""Stage `report`: the static HTML report (data/reports/index.html). params `report`: ReportConfig.

The Expression section appears when metrics/expr_summary.json exists (stage evaluate_expr); its
confusion matrices are counted from plots/confusion/<model>.csv.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.records import read_index
from pipeline.stages import Layout
from pipeline.stages.evaluate import model_dirs

log = logging.getLogger(__name__)


def run(params_path: Path) -> None:
    from pipeline.evaluate import EvalConfig, load_labels, read_confusion
    from pipeline.report import ReportConfig, build_report

    params = load_params(params_path)
    cfg = params.build("report", ReportConfig)
    layout = Layout()
    summary = json.loads((layout.metrics / "summary.json").read_text())
    labels = load_labels(read_index(layout.index), EvalConfig().split)
    expr_path = layout.metrics / "expr_summary.json"
    expr = json.loads(expr_path.read_text()) if expr_path.exists() else None
    confusion = {}
    for name in model_dirs(layout, "expr") if expr else ():
        f = layout.plots / "confusion" / f"{name}.csv"
        if f.exists():
            confusion[name] = read_confusion(f)
    path = build_report(summary, model_dirs(layout), labels, layout.reports / "index.html", cfg,
                        expr_summary=expr, confusion=confusion)
    log.info("report: %s", path)
