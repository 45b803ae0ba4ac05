"""pipeline.labels: formats, every malformed input, the frame-grid rule, and the real Aff-Wild2 VA files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import labels as L
from pipeline.labels import EXPR_CLASSES, LabelError

REAL_VA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "affwild2-va-labels" / "VA_Estimation_Challenge"
VA_HEAD = "valence,arousal\n"
EXPR_HEAD = ",".join(EXPR_CLASSES) + "\n"


def write(tmp_path: Path, text: str, name: str = "x.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- round trips


def test_va_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, size=(50, 2)).astype(np.float32)
    values[0] = [-1.0, 1.0]
    valid = rng.random(50) > 0.2
    p = tmp_path / "sub" / "v.txt"
    L.write_va(p, values, valid)
    got = L.read_va(p)
    assert got.task == "va" and got.values.dtype == np.float32 and got.values.shape == (50, 2)
    np.testing.assert_array_equal(got.valid, valid)
    np.testing.assert_array_equal(got.values[valid], values[valid])  # exact float32 round trip
    assert np.all(got.values[~valid] == L.VA_INVALID)
    assert p.read_text().splitlines()[0] == "valence,arousal"


def test_expr_round_trip(tmp_path):
    classes = np.array([0, 1, 2, 3, 4, 5, 6, 7, 3, 3])
    valid = np.array([True] * 8 + [False, True])
    p = tmp_path / "e.txt"
    L.write_expr(p, classes, valid)
    got = L.read_labels(p, "expr")
    assert got.values.dtype == np.int64
    assert got.values.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, -1, 3]
    np.testing.assert_array_equal(got.valid, valid)


def test_write_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError):
        L.write_va(tmp_path / "v.txt", np.array([[1.5, 0.0]]))
    with pytest.raises(ValueError):
        L.write_va(tmp_path / "v.txt", np.zeros((3, 2)), np.ones(2, bool))
    with pytest.raises(ValueError):
        L.write_expr(tmp_path / "e.txt", np.array([8]))
    L.write_va(tmp_path / "ok.txt", np.array([[7.0, 7.0]]), np.array([False]))  # invalid rows are not checked


def test_empty_label_file_has_zero_frames(tmp_path):
    got = L.read_va(write(tmp_path, VA_HEAD))
    assert got.values.shape == (0, 2) and len(got) == 0


# --------------------------------------------------------------------------- -5 / -1 handling


def test_va_invalid_when_either_value_is_minus5(tmp_path):
    p = write(tmp_path, VA_HEAD + "-5,-5\n0.1,-5\n-5.0,0.2\n0.3,0.4\n-0.5,-1\n")
    got = L.read_va(p)
    assert got.valid.tolist() == [False, False, False, True, True]
    np.testing.assert_allclose(got.values[3:], [[0.3, 0.4], [-0.5, -1.0]])


def test_va_accepts_scientific_notation_crlf_bom_trailing_blank(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes("\ufeffValence, Arousal\r\n-5.42101086243e-18,0.1605\r\n 0.5 , -0.5\r\n\r\n".encode())
    got = L.read_va(p)
    assert len(got) == 2 and got.valid.all()
    np.testing.assert_allclose(got.values, [[0.0, 0.1605], [0.5, -0.5]], atol=1e-7)


def test_expr_minus1_is_invalid(tmp_path):
    got = L.read_expr(write(tmp_path, EXPR_HEAD + "-1\n0\n7\n"))
    assert got.valid.tolist() == [False, True, True]


# --------------------------------------------------------------------------- malformed input


def check_error(path: Path, reader, line: int | None, *words: str) -> None:
    with pytest.raises(LabelError) as err:
        reader(path)
    msg = str(err.value)
    assert str(path) in msg and "fix:" in msg
    if line is not None:
        assert f"line {line}" in msg and err.value.line == line
    for w in words:
        assert w in msg


def test_va_wrong_header(tmp_path):
    check_error(write(tmp_path, "arousal,valence\n0,0\n"), L.read_va, 1, "wrong header", "valence,arousal")


def test_va_header_missing(tmp_path):
    check_error(write(tmp_path, "0.1,0.2\n0,0\n"), L.read_va, 1, "wrong header")


def test_expr_wrong_header(tmp_path):
    check_error(write(tmp_path, "Neutral,Anger\n0\n"), L.read_expr, 1, "wrong header", "Neutral,Anger,Disgust")


def test_va_file_for_expr_reader(tmp_path):
    check_error(write(tmp_path, VA_HEAD + "0,0\n"), L.read_expr, 1, "wrong header")


def test_completely_empty_file(tmp_path):
    check_error(write(tmp_path, ""), L.read_va, 1, "empty")


def test_missing_label_file(tmp_path):
    check_error(tmp_path / "absent.txt", L.read_va, None, "not found")


def test_va_non_numeric_line(tmp_path):
    check_error(write(tmp_path, VA_HEAD + "0.1,0.2\n0.1,abc\n0,0\n"), L.read_va, 3, "not a number", "0.1,abc")


def test_va_wrong_column_count(tmp_path):
    check_error(write(tmp_path, VA_HEAD + "0.1,0.2\n0.3,0.4\n0.1\n"), L.read_va, 4, "expected 2")
    check_error(write(tmp_path, VA_HEAD + "0.1,0.2,0.3\n"), L.read_va, 2, "got 3")


def test_va_blank_line_inside_data(tmp_path):
    """np.loadtxt would skip it silently and shift every later frame by one."""
    check_error(write(tmp_path, VA_HEAD + "0.1,0.2\n\n0.3,0.4\n"), L.read_va, 3, "blank line")


@pytest.mark.parametrize("row", ["1.5,0", "0,-1.01", "-4,0", "nan,0", "inf,0"])
def test_va_out_of_range(tmp_path, row):
    check_error(write(tmp_path, VA_HEAD + "0,0\n" + row + "\n"), L.read_va, 3, "out of range")


@pytest.mark.parametrize(
    "row, words",
    [
        ("8", "out of range"),
        ("-2", "out of range"),
        ("1.5", "not a number"),
        ("x", "not a number"),
        ("1,2", "expected 1"),
    ],
)
def test_expr_bad_values(tmp_path, row, words):
    check_error(write(tmp_path, EXPR_HEAD + "0\n" + row + "\n"), L.read_expr, 3, words)


def test_read_labels_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="unknown label task"):
        L.read_labels(write(tmp_path, VA_HEAD), "au")


def test_count_label_lines(tmp_path):
    assert L.count_label_lines(write(tmp_path, VA_HEAD + "0,0\n1,1\n\n")) == 2


# --------------------------------------------------------------------------- reconcile


def va(n: int) -> L.FrameLabels:
    return L.FrameLabels("va", np.zeros((n, 2), np.float32), np.ones(n, bool))


def test_reconcile_equal_lengths():
    lab = va(5)
    out, msg = L.reconcile(lab, 5, "vid")
    assert msg is None and out is lab


def test_reconcile_more_labels_than_frames_masks_tail():
    lab = va(10)
    out, msg = L.reconcile(lab, 7, "vid")
    assert len(out) == 10  # the label grid wins
    assert out.valid.tolist() == [True] * 7 + [False] * 3
    assert lab.valid.all()  # input untouched
    assert "vid" in msg and "10" in msg and "7" in msg and "masked invalid" in msg


def test_reconcile_more_frames_than_labels_ignores_extra_frames():
    lab = va(7)
    out, msg = L.reconcile(lab, 10, "vid")
    assert len(out) == 7 and out.valid.all()
    assert "vid" in msg and "3 decoded frame(s)" in msg and "ignored" in msg


def test_reconcile_expr_and_negative():
    lab = L.FrameLabels("expr", np.arange(4), np.ones(4, bool))
    out, msg = L.reconcile(lab, 0, "e")
    assert not out.valid.any() and "expr" in msg
    with pytest.raises(ValueError):
        L.reconcile(lab, -1, "e")


# --------------------------------------------------------------------------- real Aff-Wild2 VA files


@pytest.mark.skipif(not REAL_VA.is_dir(), reason="shared/realdata/affwild2-va-labels not present")
def test_real_affwild2_va_files():
    per_split = {}
    frames = invalid = 0
    for split_dir in sorted(p for p in REAL_VA.iterdir() if p.is_dir()):
        files = sorted(split_dir.glob("*.txt"))
        per_split[split_dir.name] = len(files)
        for f in files:
            lab = L.read_va(f)
            assert lab.values.shape == (len(lab), 2)
            frames += len(lab)
            invalid += int((~lab.valid).sum())
    assert per_split == {"Train_Set": 356, "Validation_Set": 76, "Test_Set": 162}
    assert frames == 2_993_081
    assert invalid == 3_993
