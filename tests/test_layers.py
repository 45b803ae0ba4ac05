"""Layers (DESIGN.md, "Contracts"): `pipeline/` library modules point down only.

Foundation and library modules under pipeline/ (everything but pipeline/stages/ and
pipeline/cli.py) never import heads, extractors or the stages: evaluation, export and the report
use `pipeline.metrics` and `pipeline.labels`, and only stages and the CLI point up. Checked on the
source (every import, function-level included), so a lazy import cannot hide a layering break.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("heads", "extractors", "pipeline.stages", "pipeline.cli")


def imported_names(path: Path) -> set[str]:
    """Dotted names `path` imports at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pipeline_library_modules_never_import_upper_layers() -> None:
    problems = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "stages" or rel.name == "cli.py":
            continue
        bad = sorted(n for n in imported_names(path) if any(n == u or n.startswith(u + ".") for u in UPPER))
        if bad:
            problems[str(rel)] = bad
    assert not problems, f"pipeline/ library modules import upper layers: {problems}"
