"""Evaluation (summary.json, plot data, table) and the static HTML report on tiny stores."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate import EvalConfig, evaluate, load_labels, metrics_table
from pipeline.report import ReportConfig, build_report


def write_outputs_store(path: Path, preds: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None = None,
                        gates: dict[str, np.ndarray] | None = None, gate_names=None, fps: float = 10.0) -> None:
    from pipeline.store import FeatureStore

    store = FeatureStore.create(str(path), extractor="head:test", fingerprint={"p": str(path)},
                                attrs={"gate_names": gate_names or []})
    for vid, p in preds.items():
        f = len(p)
        t0 = (np.arange(f) / fps).astype(np.float32)
        arrays = {"pred": p.astype(np.float32), "emb": np.zeros((f, 4), np.float32), "t0": t0, "t1": t0 + 1 / fps,
                  "valid": np.ones(f, bool) if valid is None else valid[vid]}
        if gates is not None:
            arrays["gates"] = gates[vid]
        store.write_video(vid, arrays)
    store.consolidate()


@pytest.fixture()
def tiny_models(tmp_path):
    """Three validation videos; 'face' knows valence, 'audio' arousal, 'fusion_gated_moe' both (with gates)."""
    rng = np.random.default_rng(0)
    labels, face, audio, fusion, gates, valid_a = {}, {}, {}, {}, {}, {}
    for k, f in enumerate((120, 90, 60)):
        vid = f"vid{k}"
        t = np.clip(np.cumsum(rng.normal(scale=0.1, size=(f, 2)), 0), -1, 1).astype(np.float32)
        ok = np.ones(f, bool)
        ok[:5] = False
        labels[vid] = (t, ok)
        face[vid] = np.stack([t[:, 0], rng.normal(scale=0.3, size=f)], 1)
        audio[vid] = np.stack([rng.normal(scale=0.3, size=f), t[:, 1]], 1)
        valid_a[vid] = np.ones(f, bool)
        valid_a[vid][30:40] = False
        fusion[vid] = t + rng.normal(scale=0.05, size=(f, 2))
        g = rng.dirichlet([1, 1], size=f).astype(np.float32)
        gates[vid] = g
    models = {}
    for name, preds, kw in (("face", face, {}), ("audio", audio, {"valid": valid_a}),
                            ("fusion_gated_moe", fusion, {"gates": gates, "gate_names": ["face", "audio"]})):
        d = tmp_path / "heads" / name
        d.mkdir(parents=True)
        write_outputs_store(d / "outputs.zarr", preds, **kw)
        (d / "history.json").write_text(json.dumps([{"epoch": i, "train_loss": 1 - i / 10, "val_ccc_mean": i / 10,
                                                      "val_ccc_valence": i / 10, "val_ccc_arousal": i / 10} for i in range(3)]))
        models[name] = d
    return models, labels


def test_evaluate_writes_summary_curves_traces(tiny_models, tmp_path):
    models, labels = tiny_models
    summary = evaluate(models, labels, tmp_path / "metrics" / "summary.json", tmp_path / "plots", EvalConfig(trace_videos=2))
    data = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert data == json.loads(json.dumps(summary))
    assert data["best"]["model"] == "fusion_gated_moe"
    for name in models:
        assert {"ccc_valence", "ccc_arousal", "ccc_mean"} <= set(data[name])
    assert data["face"]["ccc_valence"] > 0.99 and data["audio"]["ccc_arousal"] > 0.95
    assert data["audio"]["coverage"] == 1.0  # missing frames are filled by the export rule
    curves = sorted(p.name for p in (tmp_path / "plots" / "curves").iterdir())
    assert curves == ["audio.csv", "face.csv", "fusion_gated_moe.csv"]
    traces = sorted(p.name for p in (tmp_path / "plots" / "traces").iterdir())
    assert traces == ["vid0.csv", "vid1.csv"]
    rows = list(csv.DictReader((tmp_path / "plots" / "traces" / "vid0.csv").open()))
    assert len(rows) == 120 and rows[0]["true_valence"] == "" and rows[10]["pred_valence_fusion_gated_moe"] != ""
    table = metrics_table(summary)
    assert table.splitlines()[2].startswith("fusion_gated_moe") and table.splitlines()[2].endswith("*")


def test_dvc_series_plots_hold_truth_and_every_model(tiny_models, tmp_path):
    """plots/va_traces/{valence,arousal}.csv (long format for DVC's `series` template): per trace video
    the truth and every model on a seconds axis; plots/va_curves.csv every model's curve in one file."""
    models, labels = tiny_models
    times = {v: np.arange(len(labels[v][0])) / 25.0 for v in labels}
    evaluate(models, labels, tmp_path / "m" / "summary.json", tmp_path / "plots", EvalConfig(trace_videos=2), times)
    rows = list(csv.DictReader((tmp_path / "plots" / "va_traces" / "valence.csv").open()))
    assert {r["panel"] for r in rows} == {"vid0", "vid1"}
    assert {r["series"] for r in rows} == {"truth", *models}
    truth = [r for r in rows if r["panel"] == "vid0" and r["series"] == "truth"]
    assert len(truth) == int(labels["vid0"][1].sum())  # invalid label frames are left out
    assert float(truth[0]["x"]) == pytest.approx(5 / 25.0)  # the first valid frame, in seconds
    assert float(truth[0]["value"]) == pytest.approx(float(labels["vid0"][0][5, 0]), abs=1e-4)
    curves = list(csv.DictReader((tmp_path / "plots" / "va_curves.csv").open()))
    assert {r["series"] for r in curves} == set(models) and len(curves) == 3 * len(models)


def test_coverage_counts_face_and_speech_on_labelled_frames():
    from pipeline.evaluate import coverage

    n = 100
    values, valid = np.zeros((n, 2), np.float32), np.ones(n, bool)
    valid[:10] = False
    t = np.arange(n) / 10.0
    face = np.zeros(n, np.float32)
    face[:60] = 1  # frames 10..59 of the 90 labelled ones
    vad_t0 = np.arange(0, 10, 0.5)
    vad = (vad_t0 >= 5.0).astype(np.float32)  # speech from 5 s on: frames 50..99
    rel = {"v": {"t0": t.astype(np.float32), "t1": (t + 0.1).astype(np.float32), "face": face, "vad": vad,
                 "vad_t0": vad_t0, "vad_t1": vad_t0 + 0.5}}
    got = coverage({"v": (values, valid), "silent": (values, valid)}, rel, {"v": t})
    assert got["labelled_frames"] == 90
    assert got["face_found"] == pytest.approx(50 / 90, abs=1e-4)
    assert got["speech"] == pytest.approx(50 / 90, abs=0.02)  # row centres interpolate at the edge


def test_evaluate_errors_name_the_problem(tiny_models, tmp_path):
    models, labels = tiny_models
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate({"x": tmp_path / "nowhere"}, labels, tmp_path / "s.json")
    with pytest.raises(ValueError, match="no labelled"):
        evaluate(models, {}, tmp_path / "s.json")


def test_load_labels_from_index(tmp_path):
    from pipeline.labels import write_va
    from pipeline.records import Video

    vals = np.array([[0.1, 0.2], [-5, -5], [0.3, 0.4]], np.float32)
    write_va(tmp_path / "a.txt", vals, np.array([True, False, True]))
    vids = [Video("a", "a.mp4", 30.0, 4, 0.13, True, "validation", labels={"va": str(tmp_path / "a.txt")}),
            Video("b", "b.mp4", 30.0, 4, 0.13, True, "train", labels={"va": str(tmp_path / "a.txt")})]
    labels = load_labels(vids, "validation")
    assert list(labels) == ["a"] and labels["a"][1].tolist() == [True, False, True]


def test_report_html_has_table_and_images(tiny_models, tmp_path):
    models, labels = tiny_models
    summary = evaluate(models, labels, tmp_path / "summary.json")
    out = build_report(summary, models, labels, tmp_path / "reports" / "index.html", ReportConfig(videos=2))
    doc = out.read_text()
    assert '<table id="metrics">' in doc and "<b>fusion_gated_moe</b>" in doc
    imgs = re.findall(r'alt="([^"]+)" src="data:image/png;base64,([^"]+)"', doc)
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for _, i in imgs)
    alts = [a for a, _ in imgs]
    # two traces, one gate plot per video of the one gated model, a scatter per model, the curves
    assert alts.count("vid0") == 1 and alts.count("vid1") == 1
    assert [a for a in alts if a.startswith("gates of")] == ["gates of fusion_gated_moe on vid0",
                                                             "gates of fusion_gated_moe on vid1"]
    assert sorted(a for a in alts if a.endswith("predicted vs true")) == [f"{m}: predicted vs true" for m in sorted(models)]
    assert alts.count("training curves") == 1
    assert "<script" not in doc and "http://" not in doc and "https://" not in doc  # self-contained
    assert "<link" not in doc and "@import" not in doc and "url(" not in doc  # no external style or font


def test_trace_x_is_each_video_real_frame_times():
    """A variable-frame-rate video: x follows its recorded presentation times, not i / fps."""
    from pipeline.records import Video
    from pipeline.report import trace_x

    # 10 frames at 0.04 s, then 10 at 0.1 s (a stream that drops to 10 fps)
    v = Video("v", "v.mp4", 25.0, 20, 1.4, True, "validation",
              frame_segments=[[0, 10, 0.0, 0.04], [10, 10, 0.4, 0.1]])
    t, label = trace_x(20, v.frame_grid(20)[0])
    assert label == "time (s)"
    assert t[9] == pytest.approx(0.36) and t[10] == pytest.approx(0.4) and t[19] == pytest.approx(1.3)
    assert not np.allclose(t, np.arange(20) / v.fps)
    assert trace_x(5, t)[0].tolist() == pytest.approx(t[:5].tolist())
    frames, label = trace_x(4, None)
    assert label == "frame" and frames.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="3 frame times for 4"):
        trace_x(4, t[:3])


def test_report_time_axis_scatter_curves_and_gate_captions(tiny_models, tmp_path):
    from pipeline.report import scatter_figure

    models, labels = tiny_models
    summary = evaluate(models, labels, tmp_path / "summary.json")
    (models["face"] / "metrics.json").write_text(json.dumps({"best_epoch": 2}))
    times = {v: np.arange(len(labels[v][0])) / 25.0 for v in labels}
    out = build_report(summary, models, labels, tmp_path / "index.html", ReportConfig(videos=1, scatter_points=100),
                       frame_times=times)
    doc = out.read_text()
    # the scatter: CCC over every scored frame, the subsample said in the caption
    total = sum(int(v[1].sum()) for v in labels.values())
    assert f"100 of {total} frames drawn (evenly spaced in video order)" in doc
    assert doc.count("CCC over all 255 frames") == 3 and total == 255
    # the gate plot: a caption that names the gates and what 0/1 mean, right under its image
    cap = re.search(r'alt="gates of fusion_gated_moe on vid0" src="[^"]+"><figcaption>(.*?)</figcaption>', doc)
    assert cap is not None
    assert "<code>face</code>, <code>audio</code>" in cap.group(1) and "sum to 1" in cap.group(1)
    assert "0 where its modality has no frame" in cap.group(1)
    assert "<h2>Training curves</h2>" in doc and "val_abaw_ccc_" in doc
    assert "* history written before" in doc  # the tiny histories have only the selection columns
    # the scatter on its own: every labelled frame drawn when they fit, the same picture twice
    aligned = {v: labels[v][0].copy() for v in labels}
    png, caption = scatter_figure("oracle", aligned, labels, ReportConfig())
    assert f"all {total} frames drawn" in caption
    assert scatter_figure("oracle", aligned, labels, ReportConfig())[0] == png


def test_gate_captions_say_what_the_gates_mean():
    from pipeline.report import gate_caption

    moe = gate_caption("fusion_gated_moe", ["face", "audio", "face<-audio"], False)
    assert "<code>face&lt;-audio</code>" in moe and "attend to modality s" in moe and "own stream" in moe
    assert "Dashed" not in moe
    raav = gate_caption("fusion_raav", ["face", "behavior"], True)
    assert "Dashed" in raav and "1 = audio ignored there" in raav and "attend" not in raav
    one = gate_caption("fusion_dcmmoe", ["face<-audio"], False)
    assert "weight 1 wherever the face stream has a frame and 0 where it has none" in one
    assert "attending to audio" in one


def test_report_has_spread_late_fusion_coverage_and_run_identity(tiny_models, tmp_path):
    from pipeline.evaluate import aligned_predictions
    from pipeline.export import predictions_from_store
    from pipeline.report import per_video_ccc

    models, labels = tiny_models
    summary = evaluate(models, labels, tmp_path / "summary.json")
    late = {"enabled": True, "ccc": {"valence": 0.81, "arousal": 0.82, "mean": 0.815}}
    cov = {"face_found": 0.9, "speech": 0.5, "labelled_frames": 255}
    out = build_report(summary, models, labels, tmp_path / "index.html", ReportConfig(videos=1), late_fusion=late,
                       coverage=cov, run_info={"git revision": "abc123", "params sha256": "0123456789ab"})
    doc = out.read_text()
    face = aligned_predictions(predictions_from_store(str(models["face"] / "outputs.zarr"), list(labels)), labels)
    spread = per_video_ccc({"face": face}, labels)
    assert len(spread["face"]) == 3  # one CCC per validation video
    assert f"{spread['face'].mean():.3f} ± {spread['face'].std():.3f}" in doc
    assert "late fusion" in doc and "0.8150" in doc
    assert "face found 90%" in doc and "inside speech 50%" in doc
    assert "abc123" in doc and "0123456789ab" in doc


def _chromium() -> str | None:
    found = [p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()]
    return found[0] if found else shutil.which("chromium")


SCREEN_SIZES = ((1280, 900), (480, 900))  # a desktop window and a phone-wide one


def screenshot(html_path: Path, shot: Path, size: tuple[int, int], profile: Path) -> None:
    """One headless-Chromium screenshot of a page (offline: no network, no first-run work)."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={profile}", f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}",
           html_path.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=90)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (/usr/bin/chromium) on this machine")
@pytest.mark.parametrize("size", SCREEN_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_report_renders_in_headless_chromium(tiny_models, tmp_path, size):
    """The page renders at a desktop and at a phone width: a screenshot of the requested size that is
    not blank. (AFFCACHE_SCREENSHOTS=<dir> keeps the screenshots there, to look at them.)"""
    import os

    import matplotlib.image as mpimg

    models, labels = tiny_models
    summary = evaluate(models, labels, tmp_path / "summary.json")
    times = {v: np.arange(len(labels[v][0])) / 25.0 for v in labels}
    out = build_report(summary, models, labels, tmp_path / "index.html", ReportConfig(videos=1), frame_times=times)
    shot = tmp_path / f"shot_{size[0]}x{size[1]}.png"
    screenshot(out, shot, size, tmp_path / "profile")
    assert shot.stat().st_size > 20_000  # a rendered page of text and plots, not an empty PNG
    img = mpimg.imread(shot)
    assert img.shape[:2] == (size[1], size[0])
    assert float(img[..., :3].std()) > 0.02  # not a blank page
    keep = os.environ.get("AFFCACHE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def test_prediction_sets_feed_late_fusion(tiny_models, tmp_path):
    from heads.postprocess import LateFusionConfig, late_fusion
    from pipeline.evaluate import prediction_sets

    models, labels = tiny_models
    sets = prediction_sets({k: models[k] for k in ("face", "audio")})
    assert np.isnan(sets["audio"]["vid0"][30:40]).all()
    filled = prediction_sets({"audio": models["audio"]}, fill=True)["audio"]["vid0"]
    assert np.isfinite(filled).all()  # what the audio submission holds: the nearest prediction
    np.testing.assert_array_equal(filled[30:35], np.repeat(filled[29:30], 5, 0))
    result, fused = late_fusion(sets, labels, LateFusionConfig(search="flexible", n_dirichlet=10))
    assert result.weights[0, 0] > 0.9 and result.weights[1, 1] > 0.9  # valence <- face, arousal <- audio
    assert fused["vid0"].shape == (120, 2)


def test_late_fusion_weights_fitted_on_validation_are_applied_to_test_and_exported(tiny_models, tmp_path):
    """The published late fusion: fit on validation, apply to test, clip, submit (`export --model late_fusion`)."""
    from types import SimpleNamespace

    from heads.postprocess import LateFusionConfig, apply_weights, late_fusion, write_late_fusion
    from pipeline.evaluate import prediction_sets
    from pipeline.export import export_submission, predictions_from_store

    models, labels = tiny_models
    # an unlabelled test video, predicted by both sets (one value outside [-1, 1] to see the clip)
    face_test = np.full((40, 2), 0.5, np.float32)
    face_test[3] = 3.0
    audio_test = np.full((40, 2), -0.5, np.float32)
    for name, pred in (("face", face_test), ("audio", audio_test)):
        write_outputs_store(tmp_path / "extra" / name / "outputs.zarr", {"test0": pred})
    sets = prediction_sets({k: models[k] for k in ("face", "audio")})
    for name in ("face", "audio"):
        sets[name].update(prediction_sets({name: tmp_path / "extra" / name})[name])
    result, fused = late_fusion(sets, labels, LateFusionConfig(n_dirichlet=10))
    assert set(fused) == {"vid0", "vid1", "vid2", "test0"}
    expected = np.clip(apply_weights([face_test, audio_test], result.weights), -1, 1)
    records = [SimpleNamespace(video_id=v, split="validation" if v in labels else "test", fps=10.0,
                               frame_grid=lambda n: (np.arange(n) / 10.0, np.arange(1, n + 1) / 10.0)) for v in fused]
    url = write_late_fusion(tmp_path / "late_fusion", fused, records, result.to_json()["weights"])
    stored = predictions_from_store(url, ["test0"])["test0"]
    np.testing.assert_allclose(stored[0], expected, atol=1e-6)
    assert stored[0].max() <= 1.0 and stored[1].all()
    out = tmp_path / "submission.txt"
    assert export_submission({"test0": stored}, out) == 40
    first = out.read_text().splitlines()[1].split(",")
    assert first[0] == "test0/00001.jpg" and abs(float(first[1]) - expected[0, 0]) < 1e-3


# --------------------------------------------------------------------------------------- EXPR


@pytest.fixture()
def expr_models(tmp_path):
    """Two validation videos of EXPR classes; 'expr_face' right on 80 % of frames, 'expr_audio' always
    answering Happiness; train labels whose majority class is Sadness."""
    rng = np.random.default_rng(1)
    labels, good, happy = {}, {}, {}
    for k, f in enumerate((100, 60)):
        vid = f"vid{k}"
        y = rng.integers(0, 8, f)
        ok = np.ones(f, bool)
        ok[:4] = False
        labels[vid] = (np.where(ok, y, -1), ok)
        lg = rng.normal(scale=0.1, size=(f, 8))
        right = rng.random(f) < 0.8
        lg[np.arange(f), np.where(right, y, (y + 1) % 8)] += 3.0
        good[vid] = lg
        h = np.zeros((f, 8))
        h[:, 4] = 1.0
        happy[vid] = h
    models = {}
    for name, preds in (("expr_face", good), ("expr_audio", happy)):
        d = tmp_path / "heads" / name
        d.mkdir(parents=True)
        write_outputs_store(d / "outputs.zarr", preds)
        models[name] = d
    train = {"t": (np.array([5, 5, 5, 0, 7, 7, 1]), np.ones(7, bool))}
    return models, labels, train


def test_expr_scores_8_class_f1_and_first_abaw_7_class_score():
    from pipeline.evaluate import expr_scores
    from pipeline.metrics import macro_f1

    true = np.array([0, 1, 2, 7, 7, -1, 3, 4])
    lg = np.zeros((8, 8))
    pred = np.array([0, 1, 1, 7, 2, 0, 3, 4])
    lg[np.arange(8), pred] = 2.0
    lg[4, 5] = 1.0  # its second choice among the 7 basic classes
    lg[6] = np.nan  # no prediction: counts as wrong, never skipped
    s = expr_scores(lg, true)
    p8 = np.where(np.isfinite(lg).all(1), pred, -1)
    assert s["f1"] == pytest.approx(macro_f1(p8, true)) and s["accuracy"] == pytest.approx(4 / 7)
    # 7 classes: the two Other frames and the -1 frame drop out; frame 4's 7-class arg-max is class 5
    keep = np.array([0, 1, 2, 6, 7])
    assert s["accuracy_7"] == pytest.approx(3 / 5)
    assert s["f1_7"] == pytest.approx(macro_f1(p8[keep], true[keep], 7))
    assert s["abaw1_score"] == pytest.approx(0.67 * s["f1_7"] + 0.33 * s["accuracy_7"])
    assert s["num_frames"] == 7 and s["coverage"] == pytest.approx(6 / 7, abs=1e-4)


def test_evaluate_expr_summary_baseline_confusion_and_report(expr_models, tmp_path):
    from pipeline.evaluate import evaluate_expr, expr_table, read_confusion

    models, labels, train = expr_models
    summary = evaluate_expr(models, labels, train, tmp_path / "metrics" / "expr_summary.json", tmp_path / "confusion")
    data = json.loads((tmp_path / "metrics" / "expr_summary.json").read_text())
    assert data == json.loads(json.dumps(summary)) and data["best"]["model"] == "expr_face"
    base = data["majority_baseline"]
    assert base["class"] == "Sadness"
    n = sum(int(v[1].sum()) for v in labels.values())
    sad = sum(int((v[0][v[1]] == 5).sum()) for v in labels.values())
    assert base["accuracy"] == pytest.approx(sad / n, abs=1e-6)
    assert data["expr_face"]["accuracy"] > 0.7 and data["expr_face"]["f1"] > 5 * base["f1"]
    m = read_confusion(tmp_path / "confusion" / "expr_audio.csv")
    assert m.sum() == n and m[:, 4].sum() == n  # always Happiness
    rows = list(csv.DictReader((tmp_path / "confusion" / "expr_face.csv").open()))
    assert len(rows) == n and set(rows[0]) == {"actual", "predicted"}
    assert expr_table(summary).splitlines()[-1].startswith("majority_baseline")
    # the report's Expression section: table with the baseline, and the confusion matrices
    va_models, va_labels = {}, {}
    out = build_report({"best": {}}, va_models, va_labels, tmp_path / "index.html", ReportConfig(videos=0),
                       expr_summary=summary, confusion={k: read_confusion(tmp_path / "confusion" / f"{k}.csv")
                                                        for k in models})
    doc = out.read_text()
    assert '<table id="expr">' in doc and "majority class (Sadness)" in doc and "<b>expr_face</b>" in doc
    assert 'alt="confusion matrices"' in doc


def test_load_expr_labels_applies_the_label_grid_rule_and_names_bad_files(tmp_path):
    """EXPR labels follow the VA rules: frames past the decoded video are masked; a bad file is a
    LabelError naming the file and the line."""
    from pipeline.evaluate import load_expr_labels
    from pipeline.labels import LabelError, write_expr
    from pipeline.records import Video

    write_expr(tmp_path / "a.txt", np.array([0, 3, 7, 1, 2]), np.array([True, True, True, False, True]))
    vids = [Video("a", "a.mp4", 30.0, 4, 0.13, True, "validation", labels={"expr": str(tmp_path / "a.txt")}),
            Video("b", "b.mp4", 30.0, 4, 0.13, True, "train", labels={"expr": str(tmp_path / "a.txt")})]
    got = load_expr_labels(vids, "validation")
    assert list(got) == ["a"] and got["a"][0].tolist() == [0, 3, 7, -1, 2]
    assert got["a"][1].tolist() == [True, True, True, False, False]  # 5 lines, 4 decoded frames
    (tmp_path / "bad.txt").write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n0\n8\n")
    (tmp_path / "hdr.txt").write_text("valence,arousal\n0\n")
    for name, words in (("bad.txt", "line 3: class index out of range -1..7"), ("hdr.txt", "line 1: wrong header")):
        bad = [Video("c", "c.mp4", 30.0, 2, 0.1, True, "validation", labels={"expr": str(tmp_path / name)})]
        with pytest.raises(LabelError, match=f"{name}, {words}"):
            load_expr_labels(bad, "validation")
