"""The README's paper-profile table is checked against the resolved configs, row by row.

Each row names a resolved setting (`<dvc stage>.<key path>`, as `affcache params show` prints it),
its published value, the paper profile's and the demo's. The paper profile must equal the published
value, and both files must resolve to what the table says, so the table cannot drift.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from affcache.cli import main
from affcache.stages.resolve import profile_path, resolve_profile

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| setting | published value (source file) | paper profile | demo |"


def table_rows() -> list[tuple[str, Any, str, Any, Any]]:
    """(setting, published, source, paper, demo) of every row of the README table."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(HEADER)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4, line
        m = re.fullmatch(r"`([^`]+)` \(`([^`]+)`\)", cells[1])
        assert m, f"published cell must read `value` (`source file`): {line}"
        values = [yaml.safe_load(c.strip("`")) for c in (cells[2], cells[3])]
        rows.append((cells[0].strip("`"), yaml.safe_load(m.group(1)), m.group(2), *values))
    return rows


def lookup(resolved: dict, setting: str) -> Any:
    stage, _, path = setting.partition(".")
    node: Any = resolved[stage]
    for part in path.split("."):
        node = node[part]
    return node


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


ROWS = table_rows()


def test_table_has_the_published_settings():
    settings = {r[0] for r in ROWS}
    assert len(ROWS) >= 30 and len(settings) == len(ROWS)
    for needed in ("fuse_dcmmoe.layers", "train_face.loss", "train_behavior.conv_kernel"):
        assert needed in settings


@pytest.fixture(scope="module")
def resolved() -> dict[str, dict]:
    return {"paper": resolve_profile("paper"), "demo": resolve_profile(ROOT / "params.yaml")}


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_row_matches_the_resolved_configs(row, resolved):
    setting, published, source, paper, demo = row
    assert same(paper, published), f"{setting}: the paper profile column differs from the published value"
    assert same(lookup(resolved["paper"], setting), paper), f"{setting}: affcache/profiles/paper.yaml resolves otherwise"
    assert same(lookup(resolved["demo"], setting), demo), f"{setting}: params.yaml resolves otherwise"
    assert "/" in source or source.endswith((".py", ".toml", ".yaml"))


def test_params_show_prints_every_stage_with_defaults(tmp_path):
    result = CliRunner().invoke(main, ["params", "show", "paper"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert {"index", "extract_face", "extract_audio", "train_face", "fuse_dcmmoe", "fuse_gated_moe", "evaluate"} <= set(shown)
    assert shown["fuse_dcmmoe"]["layers"] == 5 and shown["train_face"]["train"]["batch_size"] == 8  # class defaults
    one = CliRunner().invoke(main, ["params", "show", str(profile_path("paper")), "--stage", "fuse_dcmmoe"])
    assert one.exit_code == 0 and list(yaml.safe_load(one.output)) == ["fuse_dcmmoe"]
    bad = CliRunner().invoke(main, ["params", "show", "paper", "--stage", "fuse_nothing"])
    assert bad.exit_code != 0 and "fuse_dcmmoe" in bad.output
    missing = CliRunner().invoke(main, ["params", "show", "no-such-profile"])
    assert missing.exit_code != 0 and "paper" in missing.output and "demo" in missing.output


def test_paper_behavior_pixel_budget_and_revision(resolved):
    config = resolved["paper"]["extract_behavior"]["config"]
    assert config["min_pixels"] == 100352 and config["max_pixels"] == 602112  # qwen-vl-utils' defaults
    assert config["revision"]  # pinned, so the features name the weights they came from
    from extractors.behavior import BehaviorConfig, QwenVLBehaviorExtractor

    QwenVLBehaviorExtractor(BehaviorConfig(**config))  # the bounds pass the extractor's own checks


def test_params_show_demo_is_the_repos_params_yaml():
    assert profile_path("demo") == ROOT / "params.yaml"
    result = CliRunner().invoke(main, ["params", "show", "demo"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    demo = yaml.safe_load((ROOT / "params.yaml").read_text())
    for modality in ("face", "audio", "behavior", "reliability"):
        name = demo["extract"][modality]["extractor"]
        assert shown[f"extract_{modality}"]["extractor"] == name and name in result.output


def test_params_show_names_a_bad_key(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fuse"]["dcmmoe"]["layerz"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(main, ["params", "show", str(path)])
    assert result.exit_code != 0 and "layerz" in result.output and "fuse.dcmmoe" in result.output
