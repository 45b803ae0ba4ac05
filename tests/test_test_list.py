"""Test releases without labels: the index reads ABAW's list of test names and builds unlabeled records."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import DatasetError, build_index
from pipeline.export import export_submission, read_template
from test_datasets import VA, make_video, va_file


@pytest.fixture(scope="module")
def media_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("test_list_src")
    return {"a.mp4": make_video(d / "a.mp4", 10), "t1.mp4": make_video(d / "t1.mp4", 9, rate=Fraction(30000, 1001)),
            "t2.mkv": make_video(d / "t2.mkv", 7)}


@pytest.fixture
def tree(tmp_path, media_files) -> Path:
    """Train labels for `a`; the test set `t1`, `t2_left` (of t2.mkv) is only a list of names."""
    root = tmp_path / "aff"
    (root / "videos").mkdir(parents=True)
    for name, src in media_files.items():
        shutil.copy(src, root / "videos" / name)
    va_file(root / VA / "Train_Set" / "a.txt", 10)
    (root / "test_names.txt").write_text("# ABAW VA test set\nt1\n\nt2_left.txt\n")
    return root


def test_listed_ids_become_unlabeled_test_records(tree):
    videos, warnings = build_index("affwild2", tree, progress=False, test_list="test_names.txt")
    v = {x.video_id: x for x in videos}
    assert sorted(v) == ["a", "t1", "t2_left"] and not warnings
    for vid, frames in (("t1", 9), ("t2_left", 7)):
        assert (v[vid].split, v[vid].labels, v[vid].label_frames, v[vid].num_frames) == ("test", {}, {}, frames)
    assert v["t2_left"].media_path == str(tree / "videos" / "t2.mkv")
    assert v["a"].split == "train" and "va" in v["a"].labels


def test_export_of_the_test_split_needs_no_label_file(tree, tmp_path):
    """The export stage's grid rule (`label_frames` else the container's frame count) gives every
    listed video its rows."""
    videos, _ = build_index("affwild2", tree, progress=False, test_list=str(tree / "test_names.txt"))
    test = [x for x in videos if x.split == "test"]
    frames = {x.video_id: int(x.label_frames.get("va", x.num_frames)) for x in test}
    preds = {x.video_id: (np.full((x.num_frames, 2), 0.25, np.float32), None) for x in test}
    rows = export_submission(preds, tmp_path / "sub.txt", num_frames=frames)
    assert rows == 9 + 7
    assert read_template(tmp_path / "sub.txt")[-1] == ("t2_left", 7)


@pytest.mark.parametrize("text, match", [("a\n", "annotated as train"), ("t1/00001.jpg\n", "not a video id"),
                                         ("# nothing\n", "names no video id")])
def test_bad_test_lists_are_refused(tree, text, match):
    (tree / "test_names.txt").write_text(text)
    with pytest.raises(DatasetError, match=match):
        build_index("affwild2", tree, progress=False, test_list="test_names.txt")


def test_missing_test_list_and_missing_media(tree):
    with pytest.raises(DatasetError, match="test list not found"):
        build_index("affwild2", tree, progress=False, test_list="nope.txt")
    (tree / "test_names.txt").write_text("t1\nghost\n")
    with pytest.raises(DatasetError, match="ghost"):
        build_index("affwild2", tree, progress=False, test_list="test_names.txt")
    videos, warnings = build_index("affwild2", tree, progress=False, test_list="test_names.txt", skip_missing=True)
    assert "ghost" not in {x.video_id for x in videos} and any("ghost" in w for w in warnings)
