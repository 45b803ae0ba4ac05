"""Layers: no top-level folder imports one above it.

The house has three floors. `pipeline/` is the foundation (records, media, labels, metrics, store,
claims, config, datasets, and the views that read stores: evaluation, export, report);
`extractors/` and `heads/` stand beside each other on it and never import each other (training reads
the cache only); `affcache/` is the roof (the DVC stages, the CLI and the Python API) and the only
folder that may import both. Checked on the source (every import, function-level included), so a
lazy import cannot hide a layering break.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = {"pipeline": 0, "extractors": 1, "heads": 1, "affcache": 2}


def imported_names(path: Path) -> set[str]:
    """Dotted names `path` imports at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from extractors import face`
    return names


def layering_problems(root: Path) -> dict[str, list[str]]:
    """Per file, the imports that point at its own floor's other folders or at a floor above."""
    problems = {}
    for folder, floor in FLOOR.items():
        for path in sorted((root / folder).rglob("*.py")):
            bad = sorted(n for n in imported_names(path)
                         if (top := n.split(".")[0]) in FLOOR and top != folder and FLOOR[top] >= floor)
            if bad:
                problems[str(path.relative_to(root))] = bad
    return problems


def test_no_top_level_folder_imports_one_above_or_beside_it() -> None:
    problems = layering_problems(ROOT)
    assert not problems, f"imports that run up or sideways between top-level folders: {problems}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    for folder in FLOOR:
        (tmp_path / folder).mkdir()
    (tmp_path / "pipeline" / "store.py").write_text("def f():\n    from affcache.stages import extract\n")
    (tmp_path / "heads" / "x.py").write_text("import extractors.face\n")
    (tmp_path / "affcache" / "cli.py").write_text("import heads.x\nimport pipeline.store\n")
    assert layering_problems(tmp_path) == {"heads/x.py": ["extractors.face"],
                                           "pipeline/store.py": ["affcache.stages", "affcache.stages.extract"]}


# A variant plug-in builds on the plug-in it varies (same store layout, same loading path, one code);
# no other plug-in imports another: what plug-ins share lives in their folder's shared modules.
VARIANTS = {"extractors.sun_face": {"extractors.face"}, "extractors.sun_audio": {"extractors.audio"},
            "heads.sun_audio": {"heads.audio_pooling"}}


def plugin_modules() -> set[str]:
    """The modules that declare a plug-in (an extractor, a static fine-tuning, a model, an adapter)."""
    from pipeline.plugins import declarations

    return {d.module for package, decorator in [("extractors", "register"), ("extractors", "register_static"),
                                                ("heads", "register_model"), ("pipeline.datasets", "register_adapter")]
            for d in declarations(package, decorator)}


def test_plug_ins_do_not_import_each_other_except_a_variant_its_base() -> None:
    plugins = plugin_modules()
    assert {"extractors.face", "extractors.static_finetune", "heads.fusion_sun", "pipeline.datasets.affwild2"} <= plugins
    sideways = {m: found for m in sorted(plugins)
                if (found := {n for n in imported_names(ROOT.joinpath(*m.split(".")).with_suffix(".py"))
                              if n in plugins and n != m} - VARIANTS.get(m, set()))}
    assert not sideways, f"plug-ins importing other plug-ins (move what they share to a shared module): {sideways}"
