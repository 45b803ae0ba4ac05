"""ABAW submission export: format, template order and count, padding rule, errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.export import (HEADER, ExportError, export_submission, fill_nearest, predictions_from_store,
                             read_template)


def _rows(path):
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    return [line.split(",") for line in lines[1:]]


def test_fill_nearest_padding_rule():
    pred = np.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]])
    valid = np.array([False, True, False, True])
    out = fill_nearest(pred, valid, 7)
    # start: first available; gap: nearest (tie -> earlier); end: last available
    assert out[:, 0].tolist() == pytest.approx([0.2, 0.2, 0.2, 0.4, 0.4, 0.4, 0.4])
    nan_pred = pred.copy()
    nan_pred[3] = np.nan
    assert fill_nearest(nan_pred, None, 5)[3:, 0].tolist() == pytest.approx([0.3, 0.3])
    with pytest.raises(ValueError):
        fill_nearest(pred, np.zeros(4, bool), 3)


def test_export_without_template_one_row_per_label_frame(tmp_path):
    preds = {"vidB": (np.array([[2.0, -0.5], [0.1, -3.0]]), None), "vidA": (np.zeros((3, 2)), np.ones(3, bool))}
    n = export_submission(preds, tmp_path / "sub.txt", num_frames={"vidB": 3})
    rows = _rows(tmp_path / "sub.txt")
    assert n == 6 and len(rows) == 6
    assert [r[0] for r in rows] == ["vidA/00001.jpg", "vidA/00002.jpg", "vidA/00003.jpg",
                                    "vidB/00001.jpg", "vidB/00002.jpg", "vidB/00003.jpg"]
    assert [float(x) for x in rows[3][1:]] == [1.0, -0.5]  # clipped
    assert [float(x) for x in rows[5][1:]] == [0.1, -1.0]  # padded with the last value, clipped


def test_export_follows_template_order_count_and_padding(tmp_path):
    tpl = tmp_path / "sample.txt"
    lines = [HEADER] + [f"12-24-1920x1080/{i:05d}.jpg,," for i in range(1, 6)] + [f"video3_left/{i:05d}.jpg" for i in range(1, 4)]
    tpl.write_text("\n".join(lines) + "\n")
    preds = {
        "video3_left": (np.array([[0.5, 0.5], [0.6, 0.6], [0.7, 0.7]]), np.array([False, True, True])),
        "12-24-1920x1080": (np.array([[0.1, 0.2], [0.3, 0.4]]), None),  # 2 predictions for 5 rows
        "unused": (np.zeros((2, 2)), None),
    }
    n = export_submission(preds, tmp_path / "sub.txt", template=tpl)
    rows = _rows(tmp_path / "sub.txt")
    assert n == 8 and [r[0] for r in rows] == [line.split(",")[0] for line in lines[1:]]
    assert [float(r[1]) for r in rows[:5]] == [0.1, 0.3, 0.3, 0.3, 0.3]
    assert float(rows[5][1]) == 0.6  # first frame invalid -> the first available value
    assert read_template(tpl)[5] == ("video3_left", 1)


def test_export_template_unknown_id_names_id_and_file(tmp_path):
    tpl = tmp_path / "sample.txt"
    tpl.write_text(HEADER + "\nknown/00001.jpg\nghost-30-640x480/00001.jpg\n")
    with pytest.raises(ExportError) as e:
        export_submission({"known": (np.zeros((1, 2)), None)}, tmp_path / "sub.txt", template=tpl, source="fusion/gated_moe")
    assert "ghost-30-640x480" in str(e.value) and str(tpl) in str(e.value) and "fusion/gated_moe" in str(e.value)
    bad = tmp_path / "bad.txt"
    bad.write_text("path,v,a\nx/00001.jpg\n")
    with pytest.raises(ExportError, match="header"):
        read_template(bad)
    with pytest.raises(ExportError, match="no valid prediction"):
        export_submission({"known": (np.zeros((1, 2)), np.zeros(1, bool))}, tmp_path / "s.txt")


def test_predictions_from_store(tmp_path):
    from pipeline.store import FeatureStore

    store = FeatureStore.create(str(tmp_path / "o.zarr"), extractor="head:x", fingerprint={"x": 1})
    t = np.arange(4, dtype=np.float32) / 10
    store.write_video("v1", {"pred": np.ones((4, 2), np.float32), "t0": t, "t1": t + 0.1, "valid": np.array([1, 1, 0, 1], bool)})
    got = predictions_from_store(tmp_path / "o.zarr")
    assert got["v1"][0].shape == (4, 2) and got["v1"][1].tolist() == [True, True, False, True]


def test_expr_export_follows_template_with_one_class_per_row(tmp_path):
    """EXPR: the ABAW expression header, rows in template order, one integer class (arg-max of the
    filled logits) per frame; frames without a prediction take the nearest one, as for VA."""
    from pipeline.export import EXPR_HEADER

    tpl = tmp_path / "expr_sample.txt"
    lines = [EXPR_HEADER] + [f"vidB/{i:05d}.jpg" for i in (1, 2, 3, 4)] + [f"vidA/{i:05d}.jpg," for i in (1, 2)]
    tpl.write_text("\n".join(lines) + "\n")
    logits_b = np.zeros((3, 8), np.float32)
    logits_b[0, 4], logits_b[1, 6], logits_b[2, 1] = 1.0, 1.0, 1.0
    logits_a = np.zeros((2, 8), np.float32)
    logits_a[:, 7] = 2.0
    preds = {"vidB": (logits_b, np.array([True, False, True])), "vidA": (logits_a, None)}
    n = export_submission(preds, tmp_path / "sub.txt", template=tpl, task="expr")
    out = (tmp_path / "sub.txt").read_text().splitlines()
    assert n == 6 and out[0] == "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
    # frame 2 invalid -> nearest (tie: earlier) = frame 1 (Happiness); frame 4 past the end -> last (Anger)
    assert out[1:] == ["vidB/00001.jpg,4", "vidB/00002.jpg,4", "vidB/00003.jpg,1", "vidB/00004.jpg,1",
                       "vidA/00001.jpg,7", "vidA/00002.jpg,7"]


def test_expr_export_rejects_a_va_template_and_va_rejects_an_expr_one(tmp_path):
    from pipeline.export import EXPR_HEADER

    va_tpl, expr_tpl = tmp_path / "va.txt", tmp_path / "expr.txt"
    va_tpl.write_text(HEADER + "\nv/00001.jpg\n")
    expr_tpl.write_text(EXPR_HEADER + "\nv/00001.jpg\n")
    preds = {"v": (np.zeros((1, 8), np.float32), None)}
    with pytest.raises(ExportError, match=r"va.txt, line 1: header must be 'image_location,Neutral,.*EXPR"):
        export_submission(preds, tmp_path / "s.txt", template=va_tpl, task="expr")
    with pytest.raises(ExportError, match=r"expr.txt, line 1: header must be 'image_location,valence,arousal'"):
        export_submission(preds, tmp_path / "s.txt", template=expr_tpl)
    assert read_template(expr_tpl, "expr") == [("v", 1)]
