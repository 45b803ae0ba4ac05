"""One label contract: `Video.labels` + `Video.label_formats`, read by `read_video_labels` onto the
video's frame grid, whether the file has one line per frame or one line per segment/utterance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import labels as L
from pipeline.files import sha256_file
from pipeline.records import Video, read_index, write_index


def video(labels: dict, formats: dict | None = None, num_frames: int = 20, fps: float = 10.0, **kw) -> Video:
    return Video("v", "v.mp4", fps, num_frames, num_frames / fps, True, "train", labels=labels,
                 label_formats=formats or {}, **kw)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_frames_follow_the_label_grid_rule(tmp_path: Path) -> None:
    """Per-frame files: the label grid wins (F = lines), lines past the decoded frames masked."""
    path = tmp_path / "v.txt"
    L.write_va(path, np.full((24, 2), 0.5, np.float32))
    lab = L.read_video_labels(video({"va": str(path)}), "va")
    assert len(lab) == 24 and lab.valid[:20].all() and not lab.valid[20:].any()
    np.testing.assert_allclose(lab.values[:20], 0.5)


def test_va_spans_onto_the_frame_grid(tmp_path: Path) -> None:
    """10 fps, 20 frames (frame i spans [i/10, (i+1)/10), midpoint (i+0.5)/10): a frame takes the span
    holding its midpoint; a gap and a -5 span are invalid."""
    path = write(tmp_path / "v.csv", "start,end,valence,arousal\n"
                                     "0.0,0.52,0.1,0.2\n"      # frames 0-4 (frame 5's midpoint 0.55 is out)
                                     "1.5,2.0,-0.3,0.4\n"      # frames 15-19; listed out of order on purpose
                                     "0.52,1.0,-5,-5\n")       # frames 5-9: unannotated
    lab = L.read_video_labels(video({"va": path}, {"va": "spans"}), "va")
    assert len(lab) == 20 and lab.task == "va"
    assert lab.valid.tolist() == [True] * 5 + [False] * 10 + [True] * 5
    np.testing.assert_allclose(lab.values[:5], [[0.1, 0.2]] * 5, rtol=1e-6)
    np.testing.assert_allclose(lab.values[15:], [[-0.3, 0.4]] * 5, rtol=1e-6)
    assert (lab.values[10:15] == -5).all()  # the gap carries the sentinel too


def test_expr_spans_follow_real_frame_times(tmp_path: Path) -> None:
    """The grid is the decoded frames' presentation times (`frame_segments`), not i / fps."""
    path = write(tmp_path / "v.csv", "start,end,expression\n0,1,4\n1,2,-1\n")
    # 5 frames at 10 fps, then 3 at 2.5 fps (a variable frame rate): midpoints .05 .15 .25 .35 .6 1.0 1.4 1.8
    # (at i / fps every midpoint would lie in the first span)
    v = video({"expr": path}, {"expr": "spans"}, num_frames=8, frame_segments=[[0, 5, 0.0, 0.1], [5, 3, 0.8, 0.4]])
    lab = L.read_video_labels(v, "expr")
    assert lab.values.tolist() == [4] * 5 + [-1] * 3 and lab.valid.tolist() == [True] * 5 + [False] * 3


@pytest.mark.parametrize("body, problem", [
    ("0.0,0.5,0.1,0.2\n0.4,1.0,0.1,0.2\n", "line 3: span overlaps the span on line 2"),
    ("0.5,0.5,0.1,0.2\n", "line 2: a span needs 0 <= start < end"),
    ("0.0,0.5,1.5,0.2\n", "line 2: value out of range"),
    ("0.0,0.5,0.1\n", "line 2: expected 4 comma-separated"),
])
def test_span_errors_name_the_file_and_line(tmp_path: Path, body: str, problem: str) -> None:
    path = write(tmp_path / "bad.csv", "start,end,valence,arousal\n" + body)
    with pytest.raises(L.LabelError) as err:
        L.read_video_labels(video({"va": path}, {"va": "spans"}), "va")
    assert str(err.value).startswith(f"{path}, ") and problem in str(err.value)


def test_expr_span_class_must_be_an_index(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "start,end,expression\n0,1,2.5\n")
    with pytest.raises(L.LabelError, match=r"e\.csv, line 2: expression must be a class index"):
        L.read_spans(path, "expr")


def test_contract_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "v.csv", "start,end,valence,arousal\n0,1,0.1,0.2\n")
    with pytest.raises(L.LabelError, match=r"v\.csv: unknown label format 'beats'"):
        L.read_video_labels(video({"va": path}, {"va": "beats"}), "va")
    with pytest.raises(L.LabelError, match=r"v\.csv, line 1: wrong header"):  # declared frames, written as spans
        L.read_video_labels(video({"va": path}), "va")
    stale = video({"va": path}, {"va": "spans"}, label_hashes={"va": "0" * 64})
    with pytest.raises(L.LabelError, match=r"v\.csv: content differs from the index's record"):
        L.read_video_labels(stale, "va")
    with pytest.raises(ValueError, match="v: no expr labels"):
        L.read_video_labels(video({"va": path}), "expr")


def test_sniff_label_file(tmp_path: Path) -> None:
    assert L.sniff_label_file(write(tmp_path / "a.csv", "valence,arousal\n0,0\n")) == ("va", "frames")
    assert L.sniff_label_file(write(tmp_path / "b.csv", ",".join(L.EXPR_CLASSES) + "\n0\n")) == ("expr", "frames")
    assert L.sniff_label_file(write(tmp_path / "c.csv", "Start,End,Valence,Arousal\n")) == ("va", "spans")
    assert L.sniff_label_file(write(tmp_path / "d.csv", "start,end,expression\n")) == ("expr", "spans")
    with pytest.raises(L.LabelError, match=r"e\.csv, line 1: unknown label header `time,v`.*start,end,expression"):
        L.sniff_label_file(write(tmp_path / "e.csv", "time,v\n"))


def test_every_consumer_reads_through_the_contract(tmp_path: Path) -> None:
    """Heads and evaluation get the same spans-on-grid labels (no consumer parses files itself)."""
    from heads.data import load_head_videos
    from pipeline.evaluate import load_expr_labels, load_labels

    va = write(tmp_path / "v.csv", "start,end,valence,arousal\n0,1,0.25,-0.5\n")
    ex = write(tmp_path / "e.csv", "start,end,expression\n1,2,3\n")
    v = video({"va": va, "expr": ex}, {"va": "spans", "expr": "spans"}, label_hashes={"va": sha256_file(va)})
    v = replace(v, split="validation")
    expected = L.read_video_labels(v, "va")
    (hv,) = load_head_videos([v], None, "va")
    assert hv.num_frames == 20 and np.array_equal(hv.labels.values, expected.values)
    values, valid = load_labels([v], "validation")["v"]
    assert valid.tolist() == [True] * 10 + [False] * 10 and np.allclose(values[:10], [0.25, -0.5])
    classes, valid = load_expr_labels([v], "validation")["v"]
    assert classes.tolist() == [-1] * 10 + [3] * 10 and valid.sum() == 10


def test_index_keeps_its_bytes_for_per_frame_video_datasets(tmp_path: Path) -> None:
    """The new record fields are left out at their defaults: an index of per-frame labelled videos
    is byte for byte what it was, and one written before they existed reads the same."""
    plain = video({"va": "v.txt"})
    write_index([plain], tmp_path / "index.json")
    text = (tmp_path / "index.json").read_text()
    assert "label_formats" not in text and "has_video" not in text
    assert read_index(tmp_path / "index.json") == [plain]
    spans = replace(plain, label_formats={"va": "spans"}, has_video=False)
    write_index([spans], tmp_path / "spans.json")
    assert read_index(tmp_path / "spans.json") == [spans]
