"""Every DVC stage lists the import closure of the code it lists, so editing any file it runs
re-runs it (and DVC never calls a stale result up to date).

The rule, checked for every stage as DVC itself resolves them (`foreach` included): for each
Python file a stage lists under `deps`, every repository module it imports (module-level and
function-level imports, and `from a import b` where `b` is a module) is listed too, with the
`__init__.py` of every package on the way that holds code. A registry that loads modules by name
(`importlib`) is not followed: the stage lists the module it loads itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.plugins import import_closure, package_inits

REPO = Path(__file__).resolve().parents[1]
DVC_TIMEOUT = 120


def stage_deps(project: Path) -> dict[str, list[str]]:
    """Stage name -> dep paths, as DVC resolves dvc.yaml (foreach and interpolation included)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {s.name: [d.def_path for d in s.deps] for s in repo.index.stages}


def missing_deps(code_root: Path, stages: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per stage, the files in the import closure of its listed code (run as modules, so with their
    packages' `__init__.py`) that it does not list."""
    problems = {}
    for name, deps in stages.items():
        listed = {(code_root / d).resolve() for d in deps}
        code = {p for p in listed if p.suffix == ".py" and p.is_file()}
        for p in list(code):
            code |= package_inits(code_root, ".".join(p.relative_to(code_root).with_suffix("").parts))
        missing = sorted(str(p.relative_to(code_root)) for p in import_closure(code_root, code) - listed)
        if missing:
            problems[name] = missing
    return problems


def test_every_stage_lists_the_import_closure_of_its_code():
    stages = stage_deps(REPO)
    assert stages, "dvc.yaml resolved to no stages"
    problems = missing_deps(REPO, stages)
    assert not problems, "stages miss code deps (add them to dvc.yaml):\n" + "\n".join(
        f"  {name}: {', '.join(files)}" for name, files in sorted(problems.items()))


def test_every_affcache_stage_lists_its_stage_module():
    for name, deps in stage_deps(REPO).items():
        assert any(d.startswith("affcache/stages/") and d.endswith(".py") for d in deps), (
            f"stage {name} runs affcache but lists no affcache/stages/ module")


def _copy_project(tmp: Path, dvc_yaml: dict) -> Path:
    project = tmp / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, check=True, timeout=DVC_TIMEOUT)
    return project


def test_the_check_fails_when_a_dep_is_removed(tmp_path):
    """Drop one imported code file from one stage (a foreach stage, so resolution is exercised)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = spec["stages"]
    name = next(n for n, s in stages.items() if "foreach" in s)
    deps = stages[name]["do"]["deps"]
    victim = next(d for d in deps if d.endswith(".py") and "${" not in d and not d.startswith("affcache/stages/"))
    deps.remove(victim)
    project = _copy_project(tmp_path, spec)
    problems = missing_deps(REPO, stage_deps(project))
    flagged = {stage for stage, files in problems.items() if victim in files}
    assert flagged and all(s.startswith(f"{name}@") for s in flagged), problems


def test_closure_follows_function_level_and_string_imports(tmp_path):
    pkg = tmp_path / "heads"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""docstring only"""\n')
    (pkg / "a.py").write_text("def f():\n    from heads import b\n    return b\n")
    (pkg / "b.py").write_text("import os\nfrom heads.c import g\n")
    (pkg / "c.py").write_text("def g():\n    import heads.d\n")
    (pkg / "d.py").write_text("import importlib\nM = importlib.import_module('heads.e')\n")
    (pkg / "e.py").write_text("")
    closure = import_closure(tmp_path, {pkg / "a.py"})
    assert closure == {pkg / "a.py", pkg / "b.py", pkg / "c.py", pkg / "d.py"}
    with pytest.raises(AssertionError):
        assert not missing_deps(tmp_path, {"s": ["heads/a.py", "heads/b.py"]})
