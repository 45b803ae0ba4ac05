"""Story: an audio-only corpus (WAV files with per-utterance VA spans, as MSP-Podcast ships them) runs
with a plain `dvc repro`. The picture models (face, behavior, the fusions that need them) and every
EXPR model (no EXPR labels) are written as "not applicable" (affcache.stages.applicable) instead of
failing the run, as are the sun2024 static encoder and its extraction; the two audio heads train; evaluation, the report, `dvc metrics show` and `dvc plots show`
work on what applies. Real `dvc` in a temporary git repository, with the tiny params (a few minutes
on two cores: the tiny demo's models are built for their speech encoder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from test_audio_only import write_audio
from test_dvc_stories import TINY_OVERLAY, copy_project, deep_merge, ran_stages, sh

TALKS = [("talk_a", "train"), ("talk_b", "train"), ("talk_c", "train"), ("talk_d", "validation"),
         ("talk_e", "validation"), ("talk_f", "test")]


def write_corpus(root: Path) -> None:
    """Six 3-s talks; the test talk has no label file (only predictions can be made for it)."""
    root.mkdir()
    for k, (name, split) in enumerate(TALKS):
        write_audio(root / f"{name}.wav", 3.0, seed=k)
        if split != "test":
            (root / f"{name}.csv").write_text("start,end,valence,arousal\n"
                                              f"0.0,1.2,{0.1 * k:.1f},0.3\n1.2,3.0,-0.4,{0.1 * k - 0.2:.1f}\n")
    (root / "splits.csv").write_text("video_id,split\n" + "".join(f"{n},{s}\n" for n, s in TALKS))


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> dict:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    work = tmp_path_factory.mktemp("audio_only")
    write_corpus(work / "talks")
    project = work / "project"
    project.mkdir()
    copy_project(project)
    params = deep_merge(yaml.safe_load((project / "params.yaml").read_text()), yaml.safe_load(TINY_OVERLAY.read_text()))
    params["dataset"].update(adapter="folder", root=str(work / "talks"))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(project, "git", "init", "-q", "-b", "main")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "project")
    return {"work": work, "project": project, "output": sh(project, "dvc", "repro")}


def test_an_audio_only_corpus_runs_end_to_end(repro) -> None:
    project, output = repro["project"], repro["output"]
    assert {"index", "extract_audio", "extract_face", "train_audio", "train_face", "train_behavior", "fuse_gated_moe",
            "train_expr_audio", "evaluate", "evaluate_expr", "report"} <= ran_stages(output)
    audio = json.loads((project / "metrics" / "audio.json").read_text())
    assert set(audio) == {"ccc_valence", "ccc_arousal", "ccc_mean"} and all(isinstance(v, float) for v in audio.values())
    pictures = "no video has pictures"
    for model, folder, cause in [("face", "heads/face", f"{pictures} (face store empty)"),
                                 ("behavior", "heads/behavior", f"{pictures} (behavior store empty)"),
                                 ("fusion_gated_moe", "fusion/gated_moe", f"{pictures} (face store empty)"),
                                 ("fusion_dcmmoe", "fusion/dcmmoe", f"{pictures} (face store empty)"),
                                 ("expr_audio", "heads/expr_audio", "no video has EXPR labels"),
                                 ("sun_face", "heads/sun_face", f"{pictures} (sun_face store empty)"),
                                 ("fusion_sun_av", "fusion/sun_av", f"{pictures} (sun_face store empty)")]:
        assert json.loads((project / "metrics" / f"{model}.json").read_text()) == {"not_applicable": cause}, model
        marker = json.loads((project / "data" / folder / "not_applicable.json").read_text())
        assert marker["model"] == model and marker["not_applicable"].startswith(cause)
        assert json.loads((project / "plots" / "history" / f"{model}.json").read_text()) == []
        assert f"{model}: not applicable, not trained" in output
    assert not (project / "data" / "heads" / "face" / "model.pt").exists()
    # the static encoder has no crops to fine-tune on, so its extraction has no weights to load: both
    # say so in their folders instead of failing the run
    static_cause = f"{pictures} (sun_face store empty): the sun_face encoder fine-tunes on face crops"
    for folder in ("static/sun_face", "features/sun_face"):
        assert json.loads((project / "data" / folder / "not_applicable.json").read_text())["not_applicable"] == static_cause
    assert "train_static sun_face: not applicable" in output and "extract sun_face: not applicable" in output

    summary = json.loads((project / "metrics" / "summary.json").read_text())
    assert set(summary) == {"audio", "sun_audio", "best"} and summary["best"]["model"] in ("audio", "sun_audio")
    late = json.loads((project / "metrics" / "late_fusion.json").read_text())
    assert late["enabled"] and late["weights"] == {"valence": {"audio": 1.0}, "arousal": {"audio": 1.0}}
    assert "not_applicable" in json.loads((project / "metrics" / "expr_summary.json").read_text())
    report = (project / "data" / "reports" / "index.html").read_text()
    assert "audio" in report and '<table id="expr">' not in report

    shown = sh(project, "dvc", "metrics", "show")
    assert "metrics/audio.json" in shown and "ccc_mean" in shown and "error" not in shown.lower()
    assert max(map(len, shown.splitlines())) <= 200, "dvc metrics show is wider than a terminal"
    views = json.loads(sh(project, "dvc", "plots", "show", "--json"))
    assert not views.get("errors"), views.get("errors")
    assert views["data"]["plots/history/audio.json"] and views["data"]["plots/history/face.json"] == []

    # a submission of the audio head; the face head is refused with the reason
    sh(project, "affcache", "export", "--model", "audio", "--split", "test", "--out", str(repro["work"] / "audio.txt"))
    assert len((repro["work"] / "audio.txt").read_text().splitlines()) == 1 + 75  # 3 s on the 25 Hz grid
    with pytest.raises(AssertionError, match="not applicable to this dataset"):
        sh(project, "affcache", "export", "--model", "face", "--split", "test", "--out", str(repro["work"] / "f.txt"))
