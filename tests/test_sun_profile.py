"""The sun2024 profile: the README's second settings table checked row by row against the resolved
profile and params.yaml, `affcache params show sun2024`, and the sections it shares with the paper
profile kept equal (one dvc.yaml holds both systems' stages)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from affcache.cli import main
from affcache.stages.resolve import resolve_profile
from test_paper_profile import lookup, same, table_rows

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| setting | published value (source file) | sun2024 profile | demo |"
SUN_STAGES = ("train_static_sun_face", "extract_sun_face", "extract_sun_audio", "train_sun_face", "train_sun_audio",
              "fuse_sun_av")


ROWS = table_rows(HEADER)


@pytest.fixture(scope="module")
def resolved() -> dict[str, dict]:
    return {"sun2024": resolve_profile("sun2024"), "paper": resolve_profile("paper"),
            "demo": resolve_profile(ROOT / "params.yaml")}


def test_table_covers_every_sun_stage():
    stages = {r[0].split(".")[0] for r in ROWS}
    assert set(SUN_STAGES) <= stages and len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_row_matches_the_resolved_configs(row, resolved):
    setting, published, source, sun, demo = row
    assert same(sun, published), f"{setting}: the sun2024 column differs from the published value"
    assert same(lookup(resolved["sun2024"], setting), sun), f"{setting}: affcache/profiles/sun2024.yaml resolves otherwise"
    assert same(lookup(resolved["demo"], setting), demo), f"{setting}: params.yaml resolves otherwise"
    assert "/" in source


def test_shared_sections_equal_the_paper_profile(resolved):
    """Every stage but evaluate resolves the same in both profiles: the systems share one graph."""
    sun, paper = resolved["sun2024"], resolved["paper"]
    assert set(sun) == set(paper)
    assert [s for s in sun if sun[s] != paper[s]] == ["evaluate"]
    assert sun["evaluate"]["late_fusion"]["models"] == ["sun_face", "sun_audio", "fusion_sun_av"]


def test_params_show_sun2024():
    result = CliRunner().invoke(main, ["params", "show", "sun2024"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert set(SUN_STAGES) <= set(shown)
    assert shown["train_sun_face"]["layer_heads"] == [8, 8, 8, 8, 4, 4]
    assert shown["train_static_sun_face"]["lr_decay"] == 0.85


def test_profile_passes_the_params_check():
    from affcache.stages.schema import check_params_file
    from affcache.stages.resolve import profile_path

    check_params_file(profile_path("sun2024"), memo=None)


def test_readme_steps_fetch_what_the_sun_stages_load(resolved):
    """Steps 7 and 8 of "Real data, step by step" download PDEM and write the encoder copy that the
    profiles' sun_audio stage loads (both profiles hold the sun2024 stages)."""
    from test_paper_profile import readme_steps

    joined = {k: " ".join(v) for k, v in readme_steps().items()}
    model = resolved["sun2024"]["extract_sun_audio"]["config"]["model"]
    assert f"hf download {model}" in joined[7]
    assert resolved["sun2024"]["extract_sun_audio"]["weights"].endswith("models--" + model.replace("/", "--"))
    assert f"save_pretrained('{resolved['sun2024']['train_sun_audio']['backbone_dir']}')" in joined[8]
