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

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from affcache.cli import main
from affcache.stages.resolve import profile_path, resolve_profile

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| setting | published value (source file) | paper profile | demo |"


def table_rows(header: str = HEADER) -> list[tuple[str, Any, str, Any, Any]]:
    """(setting, published, source, profile, demo) of every row of the README table under `header`."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(header)
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
    assert "/" in source or source.split(" ")[0].split(":")[0].endswith((".py", ".toml", ".yaml", ".md"))


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


# ------------------------------------------------------------------ the real-data path, step by step
def readme_steps() -> dict[int, list[str]]:
    """Step number -> the command lines of the README's "Real data, step by step" list."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("### Real data, step by step")
    steps: dict[int, list[str]] = {}
    number, in_code = None, False
    for line in lines[start + 1:]:
        if line.startswith("### "):
            break
        m = re.match(r"(\d+)\. ", line)
        if m:
            number = int(m.group(1))
        elif line.strip().startswith("```"):
            in_code = not in_code
        elif in_code and number is not None:
            steps.setdefault(number, []).append(line.strip())
    return steps


def test_readme_steps_run_from_an_empty_machine_to_the_submission():
    steps = readme_steps()
    assert sorted(steps) == list(range(1, 11)) and all(steps[k] for k in steps)   # every step is a command
    joined = {k: " ".join(v) for k, v in steps.items()}
    assert "export HF_HOME=$PWD/models/hf" in joined[7] and "--revision ebb281ec70b05090aa6165b016eac8ec08e71b17" in joined[7]
    assert "models/wavlm-large-ser" in joined[8] and joined[9] == "dvc repro"
    assert "models/GRADA/affective_static_efficientNet_b1.pth" in joined[6]
    assert joined[10].startswith("affcache export") and "--split test" in joined[10]
    assert "'.[paper]'" in joined[2]
    paper_extra = re.search(r'^paper = \[(.*)\]', (ROOT / "pyproject.toml").read_text(), re.M)
    assert paper_extra and '"transformers==' in paper_extra.group(1)             # the pinned release
    resolved = resolve_profile("paper")
    assert resolved["extract_behavior"]["config"]["revision"] in joined[7]        # the revision the profile pins


def run_step(command: str, cwd: Path, env: dict) -> None:
    import os
    import subprocess

    done = subprocess.run(["bash", "-c", command], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (command, done.stderr)


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory, realdata):
    """A project after the README's steps 4 and 5: params.yaml written by its `sed` command, the
    published mouth CSVs copied by its `cp` command (from ../shared/realdata instead of the clone)."""
    import shutil

    tmp = tmp_path_factory.mktemp("paper")
    project, root = tmp / "affcache", tmp / "srv" / "datasets" / "Aff-Wild2"
    (project / "affcache" / "profiles").mkdir(parents=True)
    root.mkdir(parents=True)
    shutil.copy(ROOT / "affcache" / "profiles" / "paper.yaml", project / "affcache" / "profiles" / "paper.yaml")
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    steps = readme_steps()
    env = {"AFFWILD2": str(root)}
    (sed,) = [c for c in steps[4] if c.startswith("sed ")]
    run_step(sed, project, env)
    (cp,) = [c for c in steps[5] if c.startswith("cp ")]
    source = "../CVPRW-26/src_audio_and_fusion/data/openmouth"
    assert source in cp
    run_step(cp.replace(source, str(realdata / "affwild2-openmouth")), project, env)
    return project, root


def test_step_4_sets_only_the_dataset_root(paper_project):
    project, root = paper_project
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["dataset"]["root"] == str(root)
    profile = yaml.safe_load((ROOT / "affcache" / "profiles" / "paper.yaml").read_text())
    profile["dataset"]["root"] = str(root)
    assert params == profile
    text = (project / "params.yaml").read_text()
    assert "/data/Aff-Wild2" not in text and text.count(str(root)) == 1   # no other absolute path to change


def test_step_5_puts_the_csvs_where_the_profile_reads_them(paper_project, realdata):
    """The CSV folder follows dataset.root, and the reliability extractor reads the published signal
    from it: a frame's presence as face coverage and the file's own open flag, smoothed as published."""
    from extractors.reliability import smooth_open
    from pipeline.config import load_params
    from pipeline.records import Video
    from affcache.project_extractors import build_extractor

    project, root = paper_project
    assert len(list((root / "openmouth").glob("*.csv"))) == 594
    resolved = resolve_profile(project / "params.yaml")
    assert resolved["extract_reliability"]["config"]["mouth_csv_dir"] == str(root / "openmouth")
    extractor = build_extractor(load_params(project / "params.yaml"), "reliability")
    vid, frames, fps = "1-30-1280x720", 10356, 30.0   # label lines of this video; fps from videos_fps.csv
    video = Video(video_id=vid, media_path=str(root / "videos" / f"{vid}.mp4"), fps=fps, num_frames=frames,
                  duration=frames / fps, has_audio=False, split="validation")
    assert extractor.csv_path(video) == root / "openmouth" / f"{vid}.csv"
    out = extractor.compute(video, extractor.prepare(video))
    import pandas as pd

    table = pd.read_csv(root / "openmouth" / f"{vid}.csv", dtype={"frame": str})
    listed = table["frame"].astype(int).to_numpy() - 1
    present = np.zeros(frames, bool)
    present[listed] = True
    flag = np.zeros(frames, bool)
    flag[listed] = table["mouth_open"].to_numpy() > 0
    assert (~present).sum() > 1000                                    # the file leaves faceless frames out
    np.testing.assert_array_equal(out["face"] > 0, present)
    np.testing.assert_array_equal(out["mouth_open"], smooth_open(flag, fps, extractor.cfg))
    assert out["mouth_open"].sum() != flag.sum()                      # the smoothing did change something


def test_paper_graph_with_real_looking_paths(paper_project):
    """`dvc` resolves the project of steps 4-5: no demo stage, no absolute path in the graph (the
    index stage always runs and reads the dataset itself, so a copy at another root changes nothing),
    and every weights file of steps 6-8 is a dep of the stages that read it."""
    import subprocess

    from test_dvc_deps import DVC_TIMEOUT, stage_deps

    project, root = paper_project
    if not (project / ".dvc").exists():
        subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, check=True, timeout=DVC_TIMEOUT)
    deps = stage_deps(project)
    assert not [s for s in deps if s.startswith("demo")], sorted(deps)
    assert str(root) not in deps["index"]
    expected = {
        "extract_face": "models/GRADA/affective_static_efficientNet_b1.pth",
        "extract_audio": "models/hf/hub/models--3loi--SER-Odyssey-Baseline-WavLM-Multi-Attributes",
        "extract_behavior": "models/hf/hub/models--Qwen--Qwen3-VL-4B-Instruct",
        "train_audio": "models/wavlm-large-ser",
        "train_expr_audio": "models/wavlm-large-ser",
    }
    for stage, weights in expected.items():
        assert weights in deps[stage], (stage, deps[stage])
    outside = {d for ds in deps.values() for d in ds if Path(d).is_absolute()}
    assert not outside, outside                                        # no other absolute path in the graph
    assert not any(d.startswith("data/models/demo") for ds in deps.values() for d in ds)


def test_params_show_says_what_the_cache_cannot_reproduce():
    result = CliRunner().invoke(main, ["params", "show", "paper", "--stage", "train_audio", "--stage", "extract_face"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index("train_audio:")
    assert lines[0].startswith("# The published audio training augments waveforms") and all(
        line.startswith("# ") for line in lines[:at])
    comment = " ".join(line[2:] for line in lines[:at])
    assert "cannot be augmented" in comment and not any(line.startswith("#") for line in lines[at:])
    assert yaml.safe_load(result.output)["train_audio"]["finetune_top_k"] == 4
