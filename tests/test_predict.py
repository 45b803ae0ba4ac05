"""`affcache predict` end to end on a tiny demo built without DVC (stage functions called directly).

One module-scoped build (tiny demo, tiny encoders, 4 extractions, 3 heads and the gated_moe fusion at one
epoch and toy widths) serves every test; predictions go to folders outside the project so the
DVC-tracked data/features are never touched.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from affcache.cli import main
from pipeline.files import working_dir as cwd  # stages resolve data/... against it, as under `dvc repro`

TRAIN = {"epochs": 1, "device": "cpu", "progress": False, "bf16": False}
MODELS = "data/models/demo"
PARAMS = {
    "demo": {"root": "data/raw/demo", "preset": "tiny", "overrides": {"seconds": [5.0, 6.0]}},
    "demo_models": {"out": MODELS, "seed": 0},
    "dataset": {"adapter": "affwild2", "root": "data/raw/demo", "index": "data/index.json", "options": {}},
    "extract": {
        "face": {"extractor": "grada", "weights": f"{MODELS}/grada", "workers": 1, "prefetch": 1,
                 "config": {"weights": f"{MODELS}/grada/grada_b1_demo.pth", "image_size": 32, "batch_size": 32,
                            "device": "cpu", "bf16": False}},
        "audio": {"extractor": "speech_ssl", "weights": f"{MODELS}/wavlm", "workers": 1, "prefetch": 1,
                  "config": {"model": f"{MODELS}/wavlm", "device": "cpu"}},
        "behavior": {"extractor": "qwen3vl", "weights": f"{MODELS}/qwen3vl", "workers": 1, "prefetch": 1,
                     "config": {"model": f"{MODELS}/qwen3vl", "device": "cpu", "frame_long_side": 64, "max_frames": 4}},
        "reliability": {"extractor": "reliability", "workers": 1, "prefetch": 1, "config": {"vad_backend": "energy"}},
    },
    "train": {
        "face": {"window": 32, "hop": 16, "d_model": 16, "layers": 1, "heads": 2, "ff": 16, "head_dim": 16,
                 "train": TRAIN},
        "behavior": {"segments": 4, "stride": 2, "d_model": 16, "d_state": 4, "layers": 1, "head_hidden": 16,
                     "train": TRAIN},
        "audio": {"attn_dim": 8, "head_hidden": 16, "train": TRAIN},
    },
    "fuse": {
        "gated_moe": {"d_model": 16, "n_heads": 2, "ff_dim": 16, "gate_hidden": 8, "window": 32, "hop": 16,
                      "train": {"epochs": 1, "device": "cpu"}},
        "raav": {"d_model": 16, "n_latents": 2, "latent_heads": 2, "enc_heads": 2, "ff_dim": 16,
                 "train": {"epochs": 1, "device": "cpu"}},
    },
}
HEADS = ("face", "behavior", "audio")
# the EXPR twins (same toy widths): predict adds their class probabilities
PARAMS["train"].update({f"expr_{h}": PARAMS["train"][h] for h in HEADS})
PARAMS["fuse"]["expr_gated_moe"] = PARAMS["fuse"]["gated_moe"]
MODALITIES = ("face", "behavior", "audio", "reliability")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    import torch

    from affcache.stages import demo_data, demo_models, extract, fuse, index, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict") / "project"
    root.mkdir()
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    with cwd(root):
        demo_data.run(params)
        demo_models.run(params)
        index.run(params)
        for m in MODALITIES:
            extract.run(params, m)
        for h in HEADS:
            train.run(params, h)
        for fusion in ("gated_moe", "raav"):
            fuse.run(params, fusion)
        for h in HEADS:
            train.run(params, f"expr_{h}")
        fuse.run(params, "expr_gated_moe")
    yield root
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(project: Path) -> dict[str, Path]:
    """A demo video with audio copied out of the project, a generated silent one, a corrupt one."""
    from pipeline.records import read_index
    from tiny_models import make_video

    folder = project.parent / "inputs"
    folder.mkdir()
    root = project / PARAMS["dataset"]["root"]
    with_audio = next(v for v in read_index(project / "data" / "index.json", root) if v.has_audio and v.crops_dir)
    source = Path(with_audio.media_path)  # index paths are relative to the dataset root
    speech = folder / "speaker.mp4"
    shutil.copy(source, speech)
    silent = make_video(folder / "silent.mp4", seconds=3.0, fps=10, size=(96, 72), audio=False)
    broken = folder / "broken.mp4"
    broken.write_bytes(source.read_bytes()[:4000])
    return {"speaker": speech, "silent": silent, "broken": broken}


def predict(project: Path, files: list[Path], out: Path, params: str = "params.yaml"):
    with cwd(project):
        return CliRunner().invoke(main, ["--params", params, "predict", *map(str, files), "--out", str(out)])


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def decoded_frames(path: Path) -> int:
    from pipeline.media import iter_frames

    return sum(len(b) for b in iter_frames(path))


@pytest.fixture(scope="module")
def first_run(project: Path, inputs: dict[str, Path]):
    out = project.parent / "predictions"
    result = predict(project, [inputs["speaker"], inputs["silent"]], out)
    return out, result


def test_predict_writes_csv_and_plot_per_video(first_run, inputs) -> None:
    out, result = first_run
    assert result.exit_code == 0, result.output
    for key, persons in (("speaker", 2), ("silent", 1)):  # the demo's two-person clip; no face: one row set
        header, rows = read_csv(out / f"{key}.csv")
        assert header[:5] == ["frame", "time", "person", "valence", "arousal"]
        assert {f"{h}_{d}" for h in HEADS for d in ("valence", "arousal")} <= set(header)
        assert any(c.startswith("gate_") for c in header)  # the gated_moe expert weights
        n = decoded_frames(inputs[key])
        assert len(rows) == n * persons
        assert [(int(r[0]), int(r[2])) for r in rows] == [(f, p) for f in range(n) for p in range(persons)]
        png = out / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, rows = read_csv(out / "silent.csv")
    audio = header.index("audio_valence")
    assert all(r[audio] == "" for r in rows), "no audio track: the audio head must be masked, not zero"
    assert all(r[2] != "" for r in rows), "the fusion still predicts from the other modalities"
    assert all(r[header.index("vad")] == "" for r in rows), "no audio track: no voice activity value"
    header, all_rows = read_csv(out / "speaker.csv")
    assert any(r[header.index("audio_valence")] != "" for r in all_rows)
    found = np.array([r[header.index("face_found")] for r in all_rows])
    assert set(found) <= {"0", "1"} and (found == "1").any()
    box = np.array([[float(x) if x else np.nan for x in r[header.index("face_x0"):header.index("face_y1") + 1]]
                    for r in all_rows])
    assert (np.isfinite(box).all(1) == (found == "1")).all(), "a box exactly where a face was found"
    assert (box[found == "1", 2] > box[found == "1", 0]).all()
    person = np.array([int(r[2]) for r in all_rows])
    centre = (box[:, 0] + box[:, 2]) / 2
    # person 0 is the face seen longest: the left one, in every frame; the right one turns away once
    assert (found[person == 0] == "1").all() and (centre[person == 0] < 80).all()
    assert (found[person == 1] == "0").any() and (centre[(person == 1) & (found == "1")] > 80).all()
    mouth = np.array([r[header.index("mouth_open")] for r in all_rows])
    assert set(mouth[found == "1"]) <= {"0", "1"} and (mouth[found == "0"] == "").all()
    rows = [r for r in all_rows if r[2] == "0"]
    vad = np.array([float(r[header.index("vad")]) for r in rows if r[header.index("vad")] != ""])
    assert len(vad) >= 0.9 * len(rows) and ((vad >= 0) & (vad <= 1)).all() and vad.max() > 0.5  # speaks
    assert [r[header.index("vad")] for r in all_rows if r[2] == "1"] == [r[header.index("vad")] for r in rows]
    times = np.array([float(r[1]) for r in rows])
    assert np.all(np.diff(times) > 0) and times[0] == 0.0
    gates = np.array([[float(x) for x in r[header.index("gate_face"):]] for r in rows if r[2] != ""])
    assert np.allclose(gates.sum(1), 1.0, atol=1e-4)


def test_predict_adds_expression_probabilities(first_run) -> None:
    """With EXPR models trained, each CSV holds p_<class> per frame (before the gate weights): a
    distribution over the 8 classes wherever the VA fusion predicts."""
    out, result = first_run
    assert result.exit_code == 0, result.output
    classes = ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "other"]
    header, rows = read_csv(out / "speaker.csv")
    cols = [header.index(f"p_{c}") for c in classes]
    assert cols == list(range(cols[0], cols[0] + 8)) and header[cols[-1] + 1].startswith("gate_")
    probs = np.array([[float(r[i]) for i in cols] for r in rows if r[2] != ""])
    assert len(probs) > 0 and np.allclose(probs.sum(1), 1.0, atol=1e-4) and probs.min() >= 0


def test_predict_never_touches_the_tracked_feature_stores(first_run, project) -> None:
    out, _ = first_run
    report = json.loads((out / "predict_report.json").read_text())
    assert report["model"] == "fusion_gated_moe"  # no metrics/summary.json -> the default fusion
    for m in MODALITIES:
        assert Path(report["extraction"][m]["store"]).is_relative_to(out / "features")
        assert sorted(report["extraction"][m]["extracted"]) == ["silent", "speaker"]
    with cwd(project):
        from pipeline.store import FeatureStore, read_current

        for m in MODALITIES:
            assert "speaker" not in FeatureStore.open(read_current(f"data/features/{m}")).video_ids()


def test_max_faces_follows_fewer_persons(first_run, project, inputs) -> None:
    """`--max-faces 1`: one person per video (the face seen longest), rows one per frame."""
    out = project.parent / "one_face"
    with cwd(project):
        result = CliRunner().invoke(main, ["predict", str(inputs["speaker"]), "--out", str(out), "--max-faces", "1"])
    assert result.exit_code == 0, result.output
    header, rows = read_csv(out / "speaker.csv")
    assert len(rows) == decoded_frames(inputs["speaker"]) and {r[2] for r in rows} == {"0"}
    _, two = read_csv(first_run[0] / "speaker.csv")
    same = [r[header.index("face_x0")] for r in rows] == [r[header.index("face_x0")] for r in two if r[2] == "0"]
    assert same, "person 0 is the same face whatever the number of persons followed"


def test_second_run_reuses_the_cache(first_run, project, inputs) -> None:
    out, _ = first_run
    before = (out / "speaker.csv").read_text()
    result = predict(project, [inputs["speaker"], inputs["silent"]], out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "predict_report.json").read_text())
    for m in MODALITIES:
        assert report["extraction"][m]["extracted"] == [], m
        assert sorted(report["extraction"][m]["cached"]) == ["silent", "speaker"]
    assert (out / "speaker.csv").read_text() == before


def test_corrupt_file_is_reported_and_the_others_predicted(first_run, project, inputs) -> None:
    out = project.parent / "with_broken"
    result = predict(project, [inputs["broken"], inputs["silent"]], out)
    assert result.exit_code != 0
    assert str(inputs["broken"]) in result.output
    assert (out / "silent.csv").exists() and (out / "silent.png").exists()
    assert not (out / "broken.csv").exists()
    report = json.loads((out / "predict_report.json").read_text())
    assert [f["video_id"] for f in report["failed"]] == ["broken"]


def test_a_failed_extraction_leaves_no_csv(first_run, project, inputs, monkeypatch) -> None:
    """A video whose face extraction fails mid-file gets no CSV (a prediction from the other inputs
    would read as complete), a CSV an earlier run left for it is removed, and the run fails naming it."""
    import extractors.face
    from pipeline.media import MediaError

    def broken(path, *args, **kwargs):
        raise MediaError(path, "decoding failed mid-stream (Invalid data found when processing input)")

    monkeypatch.setattr(extractors.face, "iter_face_crops", broken)
    out = project.parent / "face_fails"
    out.mkdir()
    (out / "silent.csv").write_text("frame,time,valence,arousal\n0,0.0,0.1,0.2\n")  # an earlier run's
    result = predict(project, [inputs["silent"]], out)
    assert result.exit_code != 0 and "extract face" in result.output and "decoding failed" in result.output
    assert not (out / "silent.csv").exists() and not (out / "silent.png").exists()
    report = json.loads((out / "predict_report.json").read_text())
    assert report["outputs"] == {} and [f["stage"] for f in report["failed"]] == ["extract face"]


def test_a_folder_predicts_every_video_and_same_names_get_distinct_ids(first_run, project, inputs) -> None:
    """A folder argument stands for every video below it; two files named alike in different
    folders are both predicted, each under its own id, instead of aborting the run."""
    folder = project.parent / "batch"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        shutil.copy(inputs["silent"], folder / sub / "clip.mp4")
    out = project.parent / "batch_out"
    result = predict(project, [folder], out)
    assert result.exit_code == 0, result.output
    csvs = sorted(p.name for p in out.glob("clip*.csv"))
    assert len(csvs) == 2 and all(name.startswith("clip-") for name in csvs), csvs
    report = json.loads((out / "predict_report.json").read_text())
    assert sorted(report["outputs"]) == [name[:-4] for name in csvs]
    again = predict(project, [folder], out)  # ids are stable: the same two files, nothing new
    assert again.exit_code == 0 and sorted(p.name for p in out.glob("clip*.csv")) == csvs


def predict_with_model(project: Path, model: str, video: Path, out: Path):
    """`affcache predict` with a params file whose `predict.model` is `model`."""
    name = f"params_{model}.yaml"
    (project / name).write_text(yaml.safe_dump(dict(PARAMS, predict={"model": model})))
    return predict(project, [video], out, params=name)


def test_unimodal_model_from_params(first_run, project, inputs) -> None:
    out = project.parent / "face_only"
    result = predict_with_model(project, "face", inputs["silent"], out)
    assert result.exit_code == 0, result.output
    header, rows = read_csv(out / "silent.csv")
    assert header == ["frame", "time", "person", "valence", "arousal", "face_found", "face_x0", "face_y0", "face_x1",
                      "face_y1", "mouth_open", "vad", "face_valence", "face_arousal"]
    assert all(r[header.index("mouth_open")] == "" for r in rows)  # the face head reads no reliability store
    assert all(r[header.index("vad")] == "" for r in rows)  # the face head reads no audio
    report = json.loads((out / "predict_report.json").read_text())
    assert set(report["extraction"]) == {"face"}


def test_an_audio_file_is_predicted_by_the_audio_head_on_the_25_hz_grid(first_run, project, tmp_path) -> None:
    """An audio-only file (no video stream) is taken by predict; the audio head predicts it on the
    fixed 25 Hz grid and the picture extractors are never asked to decode it."""
    from pipeline.media import AUDIO_GRID_FPS
    from test_audio_only import write_audio

    wav = write_audio(tmp_path / "voice.wav", seconds=3.0)
    out = project.parent / "audio_only"
    result = predict_with_model(project, "audio", wav, out)
    assert result.exit_code == 0, result.output
    header, rows = read_csv(out / "voice.csv")
    assert len(rows) == 3 * AUDIO_GRID_FPS
    times = [float(r[header.index("time")]) for r in rows]
    assert times[:3] == pytest.approx([0.0, 1 / AUDIO_GRID_FPS, 2 / AUDIO_GRID_FPS], abs=1e-3)
    assert all(r[header.index("valence")] != "" for r in rows[AUDIO_GRID_FPS:-AUDIO_GRID_FPS])
    report = json.loads((out / "predict_report.json").read_text())
    assert set(report["extraction"]) == {"audio"} and not report["failed"]


def test_raav_fusion_from_params(first_run, project, inputs) -> None:
    out = project.parent / "raav"
    result = predict_with_model(project, "fusion_raav", inputs["speaker"], out)
    assert result.exit_code == 0, result.output
    header, rows = read_csv(out / "speaker.csv")
    assert header[-2:] == ["gate_face", "gate_behavior"]  # RAAV's visual reliability weights
    assert len(rows) == 2 * decoded_frames(inputs["speaker"])  # two persons, each with its own prediction


def test_missing_heads_name_the_path_and_the_fix(tmp_path, inputs) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    result = predict(tmp_path, [inputs["silent"]], tmp_path / "out")
    assert result.exit_code != 0
    assert "data/fusion/gated_moe/model.pt" in result.output and "dvc repro" in result.output


def test_model_choice(tmp_path) -> None:
    """Command line, then `predict.model`, then the best evaluated model, then fusion_gated_moe."""
    from pipeline.config import Params, ParamsError
    from affcache.stages import Layout
    from affcache.predicting import choose_model

    layout = Layout(tmp_path)
    assert choose_model(Params({}, tmp_path / "params.yaml"), layout) == "fusion_gated_moe"
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "summary.json").write_text(json.dumps({"best": {"model": "audio", "ccc_mean": 0.3}}))
    assert choose_model(Params({}, tmp_path / "params.yaml"), layout) == "audio"
    chosen = Params({"predict": {"model": "fusion_raav"}}, tmp_path / "params.yaml")
    assert choose_model(chosen, layout) == "fusion_raav"
    assert choose_model(chosen, layout, "face") == "face"
    with pytest.raises(ParamsError, match="predict.model: unknown model 'fusion_x'"):
        choose_model(Params({"predict": {"model": "fusion_x"}}, tmp_path / "params.yaml"), layout)


@pytest.mark.parametrize("fusion", ["gated_moe", "raav"])
def test_inference_matches_the_training_outputs(project, fusion: str) -> None:
    """The rebuilt heads and fusion reproduce what training wrote for the indexed videos."""
    from heads.data import load_head_videos
    from heads.inference import load_predictor
    from pipeline.records import read_index
    from pipeline.store import FeatureStore, read_current

    with cwd(project):
        videos = read_index("data/index.json", PARAMS["dataset"]["root"])
        predictor = load_predictor(f"fusion_{fusion}", {h: f"data/heads/{h}" for h in HEADS},
                                   {f"fusion_{fusion}": f"data/fusion/{fusion}"}, device="cpu")
        rel = read_current("data/features/reliability")
        hv = {m: load_head_videos(videos, read_current(f"data/features/{m}"), reliability_url=rel) for m in HEADS}
        got = predictor.predict(hv)
        fused = FeatureStore.open(f"data/fusion/{fusion}/outputs.zarr")
        heads = {h: FeatureStore.open(f"data/heads/{h}/outputs.zarr") for h in HEADS}
        for v in videos:
            want = fused.read_video(v.video_id)
            p = got[v.video_id]
            np.testing.assert_array_equal(p.valid, want["valid"])
            np.testing.assert_allclose(p.pred, want["pred"], atol=1e-5)
            np.testing.assert_allclose(p.gates, want["gates"], atol=1e-5)
            for h in HEADS:
                pred, ok = p.per_model[h]
                np.testing.assert_array_equal(ok, heads[h].read_video(v.video_id)["valid"])
                np.testing.assert_allclose(pred[ok], heads[h].read_video(v.video_id)["pred"][ok, :2], atol=1e-5)


def test_features_of_another_width_are_refused(project) -> None:
    """A head fed features of another extractor config must stop, naming the params to fix."""
    from heads.data import HeadVideo
    from heads.inference import ModelLoadError, load_head, predict_head

    head = load_head("face", project / "data" / "heads" / "face", device="cpu")
    n = 12
    t = np.arange(n, dtype=np.float32) / 10
    video = HeadVideo("odd", "test", 10.0, n, features={"emb": np.ones((n, 8), np.float32), "t0": t, "t1": t + 0.1,
                                                        "valid": np.ones(n, bool)})
    with pytest.raises(ModelLoadError, match="extract.face"):
        predict_head(head, [video])


def test_every_va_column_is_clipped_to_the_label_range():
    from heads.inference import VideoPrediction

    pred = np.array([[1.3, -0.2], [0.1, -1.22], [0.0, 0.0]], np.float32)
    vp = VideoPrediction("v", 10.0, 3, "fusion_gated_moe", pred, np.array([True, True, False]),
                         per_model={"face": (pred * 1.1, np.ones(3, bool))})
    cols = vp.columns()
    for name in ("valence", "arousal", "face_valence", "face_arousal"):
        finite = cols[name][np.isfinite(cols[name])]
        assert finite.min() >= -1.0 and finite.max() <= 1.0, name
    assert cols["valence"][0] == 1.0 and cols["face_arousal"][1] == -1.0 and np.isnan(cols["valence"][2])


def readme_api_example() -> str:
    """The README's Python API example, verbatim."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_python_api_example_runs(project: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    """The README example in a copy of the trained project, on a `clips/` folder of two videos."""
    work = tmp_path / "project"
    shutil.copytree(project, work, ignore=shutil.ignore_patterns("predictions"))
    (work / "clips").mkdir()
    shutil.copy(inputs["speaker"], work / "clips" / "speaker.mp4")
    shutil.copy(inputs["silent"], work / "clips" / "silent.mp4")
    namespace: dict = {}
    with cwd(work):
        exec(compile(readme_api_example(), "README.md", "exec"), namespace)
    features, ds, tree, df = (namespace[k] for k in ("features", "ds", "tree", "df"))
    assert sorted(features) == ["silent", "speaker"]
    emb = features["silent"]["emb"]
    assert emb.ndim == 2 and len(emb) == decoded_frames(inputs["silent"])
    assert ds.sizes["time"] == len(features[namespace["video_id"]]["t0"]) and "feature" in ds.sizes
    np.testing.assert_array_equal(ds["t0"].values, features[namespace["video_id"]]["t0"])
    assert {"silent", "speaker"} <= set(tree.children)
    assert list(df.columns[:3]) == ["video_id", "frame", "time"]
    for vid, src, persons in (("speaker", inputs["speaker"], 2), ("silent", inputs["silent"], 1)):
        assert (df["video_id"] == vid).sum() == decoded_frames(src) * persons
        assert sorted(df.loc[df["video_id"] == vid, "person"].unique()) == list(range(persons))
    assert df["valence"].between(-1, 1).all()


def test_api_predicts_a_project_elsewhere_without_changing_directory(project: Path, inputs: dict[str, Path],
                                                                     tmp_path: Path, monkeypatch) -> None:
    """`affcache.predict(project=...)` from another working directory: every project path (params,
    models, the default `out`, the encoders' relative weights) is read under `project`, videos under
    the caller's directory, and the process never changes directory (a server's other threads rely
    on it). The features are those of the CLI run: the same stores, reused."""
    import affcache

    caller = tmp_path / "caller"
    caller.mkdir()
    shutil.copy(inputs["silent"], caller / "silent.mp4")
    monkeypatch.chdir(caller)

    def refuse(path):
        raise AssertionError(f"affcache.predict changed directory to {path}")

    monkeypatch.setattr(os, "chdir", refuse)
    out = project.parent / "predictions_api"
    df = affcache.predict("silent.mp4", project=project, out=out)
    assert set(df["video_id"]) == {"silent"} and len(df) == decoded_frames(inputs["silent"])
    assert (out / "silent.csv").is_file() and not (caller / "data").exists() and not (caller / ".affcache").exists()
    report = json.loads((out / "predict_report.json").read_text())
    for m in MODALITIES:  # the relative encoder paths keyed the same stores as in the project folder
        cli = json.loads((project.parent / "predictions" / "predict_report.json").read_text())
        assert Path(report["extraction"][m]["store"]).name == Path(cli["extraction"][m]["store"]).name
    default = affcache.predict(caller / "silent.mp4", project=project)  # `out` defaults to the project's
    assert (project / "data" / "predictions" / "silent.csv").is_file()
    assert default[["valence", "arousal"]].equals(df[["valence", "arousal"]])
