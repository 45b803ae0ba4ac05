"""Dataset adapters declare themselves (`@register_adapter`): the registry, the CLI's `--adapter`
choices, the params schema and the `index` stage's code deps all follow from the declarations, and
adapters share `pipeline.datasets.common` instead of borrowing from each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.datasets import DatasetError, adapter_class, adapter_classes, adapter_names, declared_adapters
from pipeline.plugins import DeclarationError, declarations

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "pipeline" / "datasets"


def test_declared_names_and_classes() -> None:
    from pipeline.datasets.affwild2 import AffWild2Adapter
    from pipeline.datasets.folder import FolderAdapter

    assert declared_adapters() == {"affwild2": "pipeline.datasets.affwild2", "folder": "pipeline.datasets.folder"}
    assert adapter_names() == ["affwild2", "folder"]
    assert adapter_class("affwild2") is AffWild2Adapter and AffWild2Adapter.name == "affwild2"
    assert adapter_classes() == {"affwild2": AffWild2Adapter, "folder": FolderAdapter}


def test_unknown_adapter_names_the_known_ones() -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset adapter 'abaw9'.*affwild2, folder.*dataset\.adapter"):
        adapter_class("abaw9")


def test_cli_choices_follow_the_declarations() -> None:
    from affcache.cli import main

    runner = CliRunner()
    shown = runner.invoke(main, ["index", "--help"])
    assert shown.exit_code == 0 and "affwild2|folder" in shown.output.replace("\n", "").replace(" ", "")
    wrong = runner.invoke(main, ["index", "--adapter", "abaw9"])
    assert wrong.exit_code != 0 and "'abaw9' is not one of" in wrong.output


def test_params_schema_and_resolve_follow_the_declarations(tmp_path: Path) -> None:
    from affcache.stages.resolve import resolve
    from affcache.stages.schema import params_schema
    from pipeline.config import ParamsError, load_params

    schema = params_schema()
    assert sorted(schema.adapters) == adapter_names()
    assert {f for f in schema.adapters["folder"].__dataclass_fields__} >= {"recursive", "labeled_split", "workers"}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"]["adapter"] = "abaw9"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"dataset\.adapter: unknown dataset adapter 'abaw9'"):
        resolve(load_params(tmp_path / "params.yaml"))


def test_index_stage_depends_on_every_declared_adapter_module() -> None:
    index = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["index"]
    for module in declared_adapters().values():
        assert module.replace(".", "/") + ".py" in index["deps"], module


def test_adapters_borrow_nothing_from_each_other() -> None:
    """An adapter module imports, from its own package, only the shared modules (`common` and the
    ones below it) or another adapter's declared class whole (to subclass it), and no private name
    from anywhere in the repository."""
    shared = {"pipeline.datasets.common", "pipeline.datasets.scan_cache", "pipeline.datasets.crops"}
    classes = {d.module: d.cls for d in declarations("pipeline.datasets", "register_adapter")}
    for module in declared_adapters().values():
        path = REPO / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                    "pipeline", "extractors", "heads", "affcache"):
                if node.module in classes:
                    assert [a.name for a in node.names] == [classes[node.module]], f"{path.name}: {ast.unparse(node)}"
                elif node.module.startswith("pipeline.datasets"):
                    assert node.module in shared, f"{path.name} imports {node.module}"
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_a_declaration_needs_a_literal_name(tmp_path: Path) -> None:
    from pipeline.plugins import _declarations_in

    f = tmp_path / "bad.py"
    f.write_text("NAME = 'x'\n@register_adapter(NAME + '1')\nclass X:\n    pass\n")
    with pytest.raises(DeclarationError, match="literals"):
        _declarations_in(f, "pkg.bad", "register_adapter")


def test_a_program_may_register_its_own_adapter(tmp_path: Path) -> None:
    """Classes registered at run time (a test, a notebook) are found too, without a declaration."""
    from dataclasses import dataclass

    from pipeline.datasets import build_index
    from pipeline.datasets.common import ADAPTER_REGISTRY, AdapterOptions, register_adapter

    @register_adapter("empty-test")
    @dataclass
    class EmptyAdapter(AdapterOptions):
        def build(self) -> list:
            self.warnings = ["nothing here"]
            return []

    try:
        assert adapter_class("empty-test") is EmptyAdapter
        report = build_index("empty-test", tmp_path)
        assert report.videos == [] and report.warnings == ["nothing here"]
        with pytest.raises(DatasetError, match="registered twice"):
            register_adapter("empty-test")(type("Other", (), {}))
    finally:
        ADAPTER_REGISTRY.pop("empty-test", None)
    assert "empty-test" not in {d.name for d in declarations("pipeline.datasets", "register_adapter")}
