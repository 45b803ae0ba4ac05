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
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', doc)
    assert len(imgs) == 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert "<script" not in doc and "http://" not in doc and "https://" not in doc  # self-contained


def _chromium() -> str | None:
    found = [p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()]
    return found[0] if found else shutil.which("chromium")


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (/usr/bin/chromium) on this machine")
def test_report_renders_in_headless_chromium(tiny_models, tmp_path):
    import matplotlib.image as mpimg

    models, labels = tiny_models
    summary = evaluate(models, labels, tmp_path / "summary.json")
    out = build_report(summary, models, labels, tmp_path / "index.html", ReportConfig(videos=1))
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,900", out.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    img = mpimg.imread(shot)
    assert img.shape[0] >= 800 and img.shape[1] >= 900
    assert float(img[..., :3].std()) > 0.02  # not a blank page


def test_prediction_sets_feed_late_fusion(tiny_models, tmp_path):
    from heads.postprocess import LateFusionConfig, late_fusion
    from pipeline.evaluate import prediction_sets

    models, labels = tiny_models
    sets = prediction_sets({k: models[k] for k in ("face", "audio")})
    assert np.isnan(sets["audio"]["vid0"][30:40]).all()
    result, fused = late_fusion(sets, labels, LateFusionConfig(n_dirichlet=10))
    assert result.weights[0, 0] > 0.9 and result.weights[1, 1] > 0.9  # valence <- face, arousal <- audio
    assert fused["vid0"].shape == (120, 2)
