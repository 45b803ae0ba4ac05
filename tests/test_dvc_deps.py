"""The train, fuse, evaluate and report stages list exactly the in-repo code they run as DVC deps.

Why exact: a missing file means an edit does not re-run the stage (stale results that look fresh);
an extra one re-runs it for nothing. The closure is computed from the source: every `import` and
`from ... import` (function-level included, `if TYPE_CHECKING:` blocks excluded, since they never
run), followed through the in-repo packages, plus the module a registry entry names (imported by
name at run time). Empty package `__init__.py` files are not listed; pipeline/stages/__init__.py
(the data layout) is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from heads.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("heads", "pipeline", "extractors")


def _module_file(name: str) -> Path | None:
    """The in-repo file of a dotted module name (a package resolves to its __init__.py)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """Dotted names a module imports at run time (any depth; TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from heads import registry`
    return names


def closure(*entries: str) -> set[str]:
    """Repo-relative paths of every in-repo module the entry modules import, transitively."""
    todo = [_module_file(e) for e in entries]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += [_module_file(n) for n in _imports(path)]
    return {str(p.relative_to(ROOT)) for p in seen if p.name != "__init__.py" or p.parent.name == "stages"}


def stage_code_deps() -> dict[str, set[str]]:
    """{stage name (train@face, ...): its .py deps} from dvc.yaml, foreach expanded by hand."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in stages.items():
        if "foreach" not in st:
            out[name] = {d for d in st.get("deps", []) if d.endswith(".py")}
            continue
        items = st["foreach"]
        for key, item in (items.items() if isinstance(items, dict) else ((i, i) for i in items)):
            deps = set()
            for d in st["do"].get("deps", []):
                d = d.replace("${key}", str(key))
                if isinstance(item, dict):
                    for k, v in item.items():
                        d = d.replace(f"${{item.{k}}}", str(v))
                else:
                    d = d.replace("${item}", str(item))
                if d.endswith(".py"):
                    deps.add(d)
            out[f"{name}@{key}"] = deps
    return out


EXPECTED = {
    **{f"train@{s.name}": ("pipeline.stages.train", s.module) for s in REGISTRY.values() if s.kind == "head"},
    **{f"fuse@{s.name}": ("pipeline.stages.fuse", s.module) for s in REGISTRY.values() if s.kind == "fusion"},
    "evaluate": ("pipeline.stages.evaluate",),
    "report": ("pipeline.stages.report",),
}


@pytest.mark.parametrize("stage", sorted(EXPECTED))
def test_stage_lists_its_exact_import_closure(stage: str) -> None:
    deps = stage_code_deps()
    assert stage in deps, f"dvc.yaml has no stage {stage}"
    want = closure(*EXPECTED[stage])
    assert deps[stage] == want, (f"{stage}: missing {sorted(want - deps[stage])}, "
                                 f"not imported {sorted(deps[stage] - want)}")


def test_library_modules_never_import_stages_heads_or_extractors() -> None:
    """Layers (DESIGN.md): pipeline/ library code points down only; stages and the CLI point up."""
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "stages" or rel.name == "cli.py":
            continue
        bad = {n for n in _imports(path) if n.split(".")[0] in ("heads", "extractors") or n.startswith("pipeline.stages")}
        assert not bad, f"{rel} imports {sorted(bad)}"
