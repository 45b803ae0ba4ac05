"""The README's user stories, with real `dvc` in a temporary git repository on the tiny demo.

(a) `dvc repro` builds everything; (b) changing one fusion param re-runs only that fusion stage and
what follows it; (c) a teammate's clone with a shared DVC remote pulls and recomputes nothing (also
through the run-cache); (e) their own copy of the dataset at another `dataset.root` re-runs nothing
after `index`; (f) an edited crop in it re-extracts that video only. One module-scoped build keeps
the stories to one full pipeline run. `index` checks the dataset itself, so it runs at every
`dvc repro` and `dvc status` always lists it (`ALWAYS`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SUBPROCESS_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_OVERLAY = Path(__file__).with_name("params.tiny.yaml")

TRAIN_FACE_STAGE = "train_face"
EXTRACT_PREFIX = "extract_"
ALWAYS = {"index"}  # dvc.yaml `always_changed`: runs at every repro, rewrites its outputs only on change


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["DVC_NO_ANALYTICS"] = "1"  # AWS_* of the local S3 server (tests/conftest.py) pass through
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "affcache tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@affcache.invalid"
    return env


def sh(cwd: Path, *args: str, code_from: Path | None = None) -> str:
    """Run a command; on failure show its output (the stage's own error message) in the test report.
    `code_from`: import affcache's packages from that folder (a project copy with new plug-ins)."""
    env = _env() if code_from is None else {**_env(), "PYTHONPATH": str(code_from)}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"`{' '.join(args)}` failed ({proc.returncode}):\n{output[-6000:]}")
    return output


def deep_merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def copy_project(dest: Path) -> None:
    """Copy the files git would commit (tracked and untracked-not-ignored), nothing built."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()
    for rel in listed:
        src = REPO_ROOT / rel
        if not src.is_file() or rel.startswith(("data/", "metrics/", "plots/")) or rel == "dvc.lock":
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def assert_nothing_stale(project: Path) -> None:
    """`dvc status`: nothing to do but the stage that always runs."""
    status = json.loads(sh(project, "dvc", "status", "--json"))
    assert status == {stage: ["always changed"] for stage in ALWAYS}, status


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    work = tmp_path_factory.mktemp("dvc")
    project = work / "project"
    project.mkdir()
    copy_project(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params = deep_merge(params, yaml.safe_load(TINY_OVERLAY.read_text()))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(project, "git", "init", "-q", "-b", "main")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "project")
    first = sh(project, "dvc", "repro")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "repro")
    return {"work": work, "project": project, "first": first}


def test_a_repro_builds_everything(built) -> None:
    project = built["project"]
    stages = ran_stages(built["first"])
    expected = {"demo_data@demo", "demo_models@demo", "index", "extract_face", "extract_audio", "extract_behavior",
                "extract_reliability", "train_face", "train_behavior", "train_audio", "fuse_gated_moe",
                "fuse_raav", "fuse_dcmmoe", "evaluate", "report", "train_expr_face", "train_expr_behavior",
                "train_expr_audio", "fuse_expr_gated_moe", "fuse_expr_raav", "evaluate_expr",
                "train_static_sun_face", "extract_sun_face", "extract_sun_audio", "train_sun_face", "train_sun_audio",
                "fuse_sun_av"}
    assert expected <= stages, f"missing stages: {expected - stages}"
    summary = json.loads((project / "metrics" / "summary.json").read_text())
    assert {"face", "behavior", "audio", "fusion_gated_moe", "fusion_raav", "fusion_dcmmoe", "best"} <= set(summary)
    assert {"sun_face", "sun_audio", "fusion_sun_av"} <= set(summary)              # the sun2024 models beside them
    expr = json.loads((project / "metrics" / "expr_summary.json").read_text())
    assert {"expr_face", "expr_fusion_gated_moe", "majority_baseline", "best"} <= set(expr)
    assert (project / "data" / "reports" / "index.html").stat().st_size > 1000
    assert '<table id="expr">' in (project / "data" / "reports" / "index.html").read_text()
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=project, env=_env(), capture_output=True, text=True,
                           timeout=SUBPROCESS_TIMEOUT, check=True).stdout
    assert "ccc_mean" in shown and "metrics/expr_fusion_gated_moe.json" in shown and "f1" in shown
    assert "metrics/late_fusion_ccc.json" in shown and "metrics/coverage.json" in shown and "face_found" in shown
    assert "metrics/fusion_sun_av.json" in shown and "metrics/sun_face.json" in shown
    assert "fusion_sun_av" in (project / "data" / "reports" / "index.html").read_text()
    sh(project, "affcache", "export", "--model", "fusion_sun_av", "--split", "validation", "--out",
       str(built["work"] / "sun_av.txt"))
    assert (built["work"] / "sun_av.txt").read_text().splitlines()[0] == "image_location,valence,arousal"
    assert max(map(len, shown.splitlines())) <= 200, "dvc metrics show is wider than a terminal"
    # `dvc plots show`: the trace charts hold the truth and every VA model (DVC's own rendering)
    plots = sh(project, "dvc", "plots", "show", "--json", "plots/va_traces/valence.csv")
    for series in ("truth", "face", "behavior", "audio", "fusion_gated_moe", "fusion_raav", "fusion_dcmmoe"):
        assert f'"series": "{series}"' in plots or f'"series":"{series}"' in plots, series
    # every plot definition renders in DVC (the per-model training curves too), none with an error
    drawn = subprocess.run(["dvc", "plots", "show", "--json"], cwd=project, env=_env(), capture_output=True,
                           text=True, timeout=SUBPROCESS_TIMEOUT, check=True)
    views = json.loads(drawn.stdout)
    assert not views.get("errors"), views.get("errors")
    for model in ("face", "fusion_gated_moe", "expr_face", "expr_fusion_raav"):
        assert views["data"][f"plots/history/{model}.json"], model
    # late fusion fitted on validation is stored for every split and submitted like any model
    late = json.loads((project / "metrics" / "late_fusion.json").read_text())
    sh(project, "affcache", "export", "--model", "late_fusion", "--split", "validation", "--out",
       str(built["work"] / "late_fusion.txt"))
    rows = (built["work"] / "late_fusion.txt").read_text().splitlines()
    assert rows[0] == "image_location,valence,arousal" and len(rows) > 100
    assert sum(late["videos_fused"].values()) > 0
    assert_nothing_stale(project)


def test_history_plot_keeps_the_columns_every_epoch_has() -> None:
    """DVC cannot draw rows with different keys; the `stopped` reason stays in history.json only."""
    from affcache.stages.train import plot_table

    history = [{"epoch": 0, "val_abaw_ccc_mean": 0.1, "lr": 1e-3},
               {"epoch": 1, "val_abaw_ccc_mean": 0.2, "lr": 1e-4, "stopped": "early_stopping"}]
    assert plot_table(history) == [{"epoch": 0, "val_abaw_ccc_mean": 0.1, "lr": 1e-3},
                                   {"epoch": 1, "val_abaw_ccc_mean": 0.2, "lr": 1e-4}]
    assert plot_table([]) == []


def test_b_fusion_param_reruns_only_fusion(built) -> None:
    project = built["project"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    train = params["fuse"]["gated_moe"]["train"]
    train["seed"] = int(train.get("seed", 0)) + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = sh(project, "dvc", "repro")
    assert ran_stages(output) == ALWAYS | {"fuse_gated_moe", "evaluate", "report"}, output
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "gated_moe seed")


def test_b2_face_train_param_reruns_face_training_not_extraction(built) -> None:
    """Editing a `train.face` key re-runs the face training (and what reads it), never an encoder."""
    project = built["project"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["face"]["train"]["seed"] = int(params["train"]["face"]["train"].get("seed", 0)) + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = sh(project, "dvc", "repro")
    ran = ran_stages(output)
    assert TRAIN_FACE_STAGE in ran, output
    assert not {s for s in ran if s.startswith(EXTRACT_PREFIX)}, output
    assert not {s for s in ran if s.startswith("train") and s != TRAIN_FACE_STAGE}, output
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "face seed")


def test_b3_expr_param_reruns_only_expr_stages(built) -> None:
    """Editing `train.expr_face` re-runs that EXPR head and the EXPR stages after it, no VA stage."""
    project = built["project"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["expr_face"]["train"]["seed"] = int(params["train"]["expr_face"]["train"].get("seed", 0)) + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = sh(project, "dvc", "repro")
    assert ran_stages(output) == ALWAYS | {"train_expr_face", "fuse_expr_gated_moe", "fuse_expr_raav",
                                           "evaluate_expr", "report"}, output
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "expr_face seed")


def test_b4_replaced_weights_file_invalidates_only_its_extraction(built) -> None:
    """`extract.<modality>.weights` is a dep: a different face checkpoint makes only extract_face stale."""
    project = built["project"]
    weights = project / "data" / "models" / "demo" / "grada" / "grada_b1_demo.pth"
    saved = weights.read_bytes()
    try:
        weights.write_bytes(saved + b"\0")
        changed = json.loads(sh(project, "dvc", "status", "--json"))
        face = json.dumps(changed.get("extract_face", []))
        assert "data/models/demo/grada" in face and "modified" in face, changed
        assert not {s for s in changed if s.startswith(EXTRACT_PREFIX)} - {"extract_face"}, changed
    finally:
        weights.write_bytes(saved)
    assert_nothing_stale(project)


@pytest.fixture(scope="module")
def teammate(built) -> Path:
    """A teammate's clone of the project after `dvc pull --run-cache` from a shared local remote."""
    work, project = built["work"], built["project"]
    remote = work / "remote"
    sh(project, "dvc", "remote", "add", "-d", "team", str(remote))
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "remote")
    sh(project, "dvc", "push", "--run-cache")
    clone = work / "clone"
    sh(work, "git", "clone", "-q", str(project), str(clone))
    sh(clone, "dvc", "pull", "--run-cache")
    return clone


def test_c_teammate_pulls_and_recomputes_nothing(teammate) -> None:
    output = sh(teammate, "dvc", "repro")
    assert ran_stages(output) == ALWAYS, output  # their first index: a stat walk (pulled crops: no key changes)
    assert "0 set(s) changed" in output, output
    assert_nothing_stale(teammate)


def test_e_own_copy_at_another_root_reruns_nothing_after_index(built, teammate) -> None:
    """The teammate's own copy of the dataset elsewhere (new inodes and mtimes), named by their
    `dataset.root`: the index files come out identical, so nothing after `index` runs."""
    theirs = built["work"] / "teammate_data" / "demo"
    shutil.copytree(teammate / "data" / "raw" / "demo", theirs, copy_function=shutil.copyfile)
    index_before = (teammate / "data" / "index.json").read_bytes()
    params = yaml.safe_load((teammate / "params.yaml").read_text())
    params["dataset"]["root"] = str(theirs)
    (teammate / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = sh(teammate, "dvc", "repro")
    assert ran_stages(output) == ALWAYS, output
    assert (teammate / "data" / "index.json").read_bytes() == index_before
    assert_nothing_stale(teammate)


def test_f_edited_crop_reextracts_that_video_only(built, teammate) -> None:
    """One crop overwritten with its mirror image at the same size (names and sizes unchanged): the
    face and reliability stores redo that video, no other video and no other extractor."""
    from test_dataset_place import mirror_same_size

    theirs = built["work"] / "teammate_data" / "demo"
    if not theirs.is_dir():
        pytest.skip("needs the teammate's copy of test_e")
    crops = sorted(p for p in (theirs / "cropped_aligned").iterdir() if len(list(p.iterdir())) > 2)[0]
    mirror_same_size(sorted(crops.iterdir())[1])
    output = sh(teammate, "dvc", "repro", "extract_face", "extract_reliability")
    assert ran_stages(output) == ALWAYS | {"extract_face", "extract_reliability"}, output
    assert output.count(" 1 to extract, ") == 2, output  # face and reliability: that video only


def test_d_team_shares_over_s3(built, s3_server) -> None:
    """The README's S3 sharing commands against a local S3 server: push with the run-cache, a fresh
    clone pulls and `dvc repro` runs nothing."""
    work, project = built["work"], built["project"]
    url = f"s3://{s3_server['bucket']}/dvc-cache"
    sh(project, "dvc", "remote", "add", "-d", "s3team", url)
    sh(project, "dvc", "remote", "modify", "s3team", "endpointurl", s3_server["endpoint"])
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "s3 remote")
    pushed = sh(project, "dvc", "push", "--run-cache")
    assert "pushed" in pushed, pushed
    clone = work / "s3clone"
    sh(work, "git", "clone", "-q", str(project), str(clone))
    sh(clone, "dvc", "pull", "--run-cache")
    output = sh(clone, "dvc", "repro")
    assert ran_stages(output) == ALWAYS, output
    assert_nothing_stale(clone)
    assert (clone / "metrics" / "summary.json").read_text() == (project / "metrics" / "summary.json").read_text()


def test_e_a_new_plugin_is_one_file_and_a_params_section(built) -> None:
    """A new extractor (its own modality), a new fusion and a new dataset adapter: one file each plus
    a params section, then `affcache dvc-yaml`; `dvc repro` runs exactly their stages and the views
    that read every model. The adapter (an ABAW mirror reusing the Aff-Wild2 one) is a code dep of
    `index`, which indexes with it; its index is the one it replaces, byte for byte, so nothing after
    `index` re-runs for it."""
    from test_dvc_yaml import add_plugins

    project = built["project"]
    index_before = (project / "data" / "index.json").read_bytes()
    add_plugins(project)
    sh(project, "affcache", "dvc-yaml", code_from=project)
    output = sh(project, "dvc", "repro", code_from=project)
    assert ran_stages(output) == ALWAYS | {"extract_brightness", "fuse_raav_copy", "evaluate", "report"}, output
    assert "index (abaw_mirror):" in output, output
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["index"]
    assert "pipeline/datasets/abaw_mirror.py" in {d["path"] for d in lock["deps"]}
    assert lock["params"]["params.yaml"]["dataset.adapter"] == "abaw_mirror"
    assert (project / "data" / "index.json").read_bytes() == index_before
    summary = json.loads((project / "metrics" / "summary.json").read_text())
    assert "fusion_raav_copy" in summary
    from pipeline.store import FeatureStore, read_current

    store = FeatureStore.open(read_current(str(project / "data" / "features" / "brightness")))
    assert all(store.is_complete(v) for v in store.video_ids()) and store.video_ids()
    assert_nothing_stale(project)
