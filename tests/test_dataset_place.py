"""Where the dataset sits and what its crops are, as the index stage sees them (issue: path-independent
results, dataset scale, edited crops), on a small generated Aff-Wild2 tree.

- The same dataset at another path (a teammate's copy: other root, other mtimes, no scan cache) gives
  byte-identical index files, reading no crop file; the stages find it through `dataset.root`.
- An edited crop (same name, same size), or a whole crop set replaced under the same names and sizes,
  changes that video's crop key only, so extraction redoes that video and nothing else.
- Label edits still change the index; labels read through a root holding other labels fail loudly.
- A re-index with nothing changed probes no container again.
The DVC side (`dvc repro` after a move / an edit) is in tests/test_dvc_stories.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps

from extractors.base import register, run_extraction
from pipeline.labels import LabelError, read_indexed_labels
from pipeline.records import Video
from affcache.stages import Layout, index, read_videos
from pipeline.store import source_fingerprint
from test_datasets import make_video, va_file
from toy_extractor import ToyConfig, ToyExtractor

REPO = Path(__file__).resolve().parents[1]
VA = "VA_Estimation_Challenge"
IDS = ("a", "b", "c")
AGE_S = 60  # crops older than the scan cache's racy window, as in a dataset made before indexing


def noise_jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)


def age(root: Path, seconds: float = AGE_S) -> None:
    """Set every file's mtime `seconds` into the past (a copy made a while before it is indexed)."""
    t = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (t, t))


def mirror_same_size(path: Path) -> None:
    """Overwrite a crop with its mirror image, padded after the JPEG end marker to the same size: the
    edit a names-and-sizes fingerprint cannot see."""
    original = path.read_bytes()
    image = ImageOps.mirror(Image.open(io.BytesIO(original)).convert("RGB"))
    for quality in (90, 75, 50, 30, 10):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        if len(data) <= len(original):
            break
    assert len(data) <= len(original) and data != original
    path.write_bytes(data + b"\0" * (len(original) - len(data)))


def copy_dataset(src: Path, dest: Path) -> Path:
    """A teammate's copy: other place, new inodes, new mtimes (then aged: copied a while ago)."""
    shutil.copytree(src, dest, copy_function=shutil.copyfile)
    age(dest)
    return dest


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {vid: make_video(d / f"{vid}.mp4", 6 + k) for k, vid in enumerate(IDS)}


@pytest.fixture
def dataset(tmp_path, clips) -> Path:
    root = tmp_path / "site_a" / "aff"
    (root / "videos").mkdir(parents=True)
    for k, vid in enumerate(IDS):
        shutil.copy(clips[vid], root / "videos" / f"{vid}.mp4")
        for i in range(1, 5):
            noise_jpeg(root / "cropped_aligned" / vid / f"{i:05d}.jpg", seed=10 * k + i)
        va_file(root / VA / ("Train_Set" if vid != "c" else "Validation_Set") / f"{vid}.txt", 6 + k)
    age(root)
    return root


def new_project(path: Path, root: Path) -> Path:
    path.mkdir(parents=True)
    params = {"dataset": {"adapter": "affwild2", "root": str(root), "index": "data/index.json",
                          "options": {"progress": False}}}
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    return path


@dataclass
class Run:
    index: bytes
    crops: bytes
    log: str

    @property
    def keys(self) -> dict[str, str]:
        return {vid: fp["sha1"] for vid, fp in json.loads(self.crops)["videos"].items()}


def run_index(project: Path, caplog, root: Path | None = None) -> Run:
    """The index stage as `affcache index` (or `dvc repro`) runs it, in the project folder."""
    caplog.clear()
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with caplog.at_level(logging.INFO):
            index.run(Path("params.yaml"), root=root)
    finally:
        os.chdir(cwd)
    layout = Layout(root=project)
    return Run(layout.index.read_bytes(), layout.crops.read_bytes(), caplog.text)


def videos_of(project: Path) -> list[Video]:
    params = yaml.safe_load((project / "params.yaml").read_text())
    from pipeline.config import Params

    return read_videos(Params(params, project / "params.yaml"), Layout(root=project), crops=True)


def test_same_dataset_at_another_path_gives_the_same_index_files(tmp_path, dataset, caplog) -> None:
    project = new_project(tmp_path / "project", dataset)
    first = run_index(project, caplog)
    assert str(dataset) not in first.index.decode()
    again = run_index(project, caplog)
    assert (again.index, again.crops) == (first.index, first.crops)
    assert "0 read" in again.log and "(unchanged)" in again.log

    # a teammate: their own copy elsewhere, a clone with the shared index files and no scan cache
    theirs = copy_dataset(dataset, tmp_path / "site_b" / "affwild2")
    clone = new_project(tmp_path / "clone", theirs)
    (clone / "data").mkdir()
    shutil.copy(project / "data" / "index.json", clone / "data" / "index.json")
    shutil.copy(project / "data" / "index.crops.json", clone / "data" / "index.crops.json")
    moved = run_index(clone, caplog)
    assert (moved.index, moved.crops) == (first.index, first.crops)
    assert "0 read" in moved.log  # a first sight trusts names and sizes: no crop file is read
    videos = videos_of(clone)
    assert all(Path(v.media_path).is_relative_to(theirs) and Path(v.crops_dir).is_relative_to(theirs) for v in videos)
    # the stores' source fingerprints do not see the move either (nor do they walk the crops)
    here = {v.video_id: source_fingerprint(v.crops_source()) for v in videos_of(project)}
    there = {v.video_id: source_fingerprint(v.crops_source()) for v in videos}
    assert here == there
    stable = lambda fp: {k: x for k, x in fp.items() if k != "mtime_ns"}  # mtimes are never compared
    assert ({v.video_id: stable(source_fingerprint(v.media_path)) for v in videos_of(project)}
            == {v.video_id: stable(source_fingerprint(v.media_path)) for v in videos})
    # an untouched crop set keeps the fingerprint stores were keyed by before it was checked this way
    assert all(here[v.video_id] == source_fingerprint(v.crops_dir) for v in videos)


def test_an_edited_crop_reextracts_that_video_only(tmp_path, dataset, caplog) -> None:
    project = new_project(tmp_path / "project", dataset)
    before = run_index(project, caplog)
    log_file = tmp_path / "computed.log"
    extractor = CropToy(ToyConfig(log=str(log_file), rows=8))
    stores = str(tmp_path / "features")
    assert sorted(run_extraction(extractor, videos_of(project), stores, progress=False).done) == list(IDS)

    mirror_same_size(dataset / "cropped_aligned" / "b" / "00003.jpg")  # same name, same size
    after = run_index(project, caplog)
    assert after.index == before.index  # only the crops file changes: stages that read no crops stay
    assert {v for v in IDS if after.keys[v] != before.keys[v]} == {"b"}
    assert "1 read" in after.log and "1 set(s) changed" in after.log
    log_file.write_text("")
    report = run_extraction(extractor, videos_of(project), stores, progress=False)
    assert report.done == ["b"] and sorted(report.skipped) == ["a", "c"]
    assert log_file.read_text().split()[1::2] == ["b"]

    # the same bytes written again (new mtime, known digest): read, found equal, nothing re-keyed
    edited = dataset / "cropped_aligned" / "b" / "00003.jpg"
    edited.write_bytes(edited.read_bytes())
    os.utime(edited, (time.time() - AGE_S, time.time() - AGE_S))
    same = run_index(project, caplog)
    assert same.crops == after.crops and "1 read, 0 set(s) changed" in same.log


def test_a_crop_set_replaced_under_the_same_names_and_sizes_is_noticed(tmp_path, dataset, caplog) -> None:
    project = new_project(tmp_path / "project", dataset)
    before = run_index(project, caplog)
    for crop in sorted((dataset / "cropped_aligned" / "a").iterdir()):  # another aligner's crops
        mirror_same_size(crop)
    after = run_index(project, caplog)
    assert {v for v in IDS if after.keys[v] != before.keys[v]} == {"a"}
    old, new = json.loads(before.crops)["videos"]["a"], json.loads(after.crops)["videos"]["a"]
    assert (new["files"], new["size"], new["layout"]) == (old["files"], old["size"], old["layout"])


def test_a_same_size_rewrite_right_after_indexing_is_noticed(tmp_path, dataset, caplog) -> None:
    """A file indexed within the racy window is not vouched for by its mtime: a same-size rewrite with
    an identical timestamp (a coarse file-system clock) is still found."""
    project = new_project(tmp_path / "project", dataset)
    crop = dataset / "cropped_aligned" / "c" / "00001.jpg"
    noise_jpeg(crop, seed=999)  # written just now
    stamp = crop.stat().st_mtime_ns
    before = run_index(project, caplog)
    mirror_same_size(crop)
    os.utime(crop, ns=(stamp, stamp))
    after = run_index(project, caplog)
    assert {v for v in IDS if after.keys[v] != before.keys[v]} == {"c"}


def test_a_teammate_keeps_the_key_of_a_set_edited_elsewhere(tmp_path, dataset, caplog) -> None:
    project = new_project(tmp_path / "project", dataset)
    run_index(project, caplog)
    mirror_same_size(dataset / "cropped_aligned" / "a" / "00002.jpg")
    edited = run_index(project, caplog)
    assert edited.keys["a"] != json.loads(edited.crops)["videos"]["a"]["layout"]
    theirs = copy_dataset(dataset, tmp_path / "elsewhere" / "aff")
    clone = new_project(tmp_path / "clone", theirs)
    (clone / "data").mkdir()
    shutil.copy(project / "data" / "index.crops.json", clone / "data" / "index.crops.json")
    assert run_index(clone, caplog).keys == edited.keys


def test_label_edits_reindex_and_labels_under_another_root_fail_loudly(tmp_path, dataset, caplog) -> None:
    from pipeline import labels as L

    project = new_project(tmp_path / "project", dataset)
    before = run_index(project, caplog)
    video = next(v for v in videos_of(project) if v.video_id == "a")
    assert len(read_indexed_labels(video, "va")) == 6
    other = copy_dataset(dataset, tmp_path / "other" / "aff")
    L.write_va(other / VA / "Train_Set" / "a.txt", np.full((6, 2), 0.25), np.ones(6, bool))  # other labels
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace(str(dataset), str(other)))
    stale = next(v for v in videos_of(project) if v.video_id == "a")  # the old index, read under the other root
    with pytest.raises(LabelError, match="differs from the index"):
        read_indexed_labels(stale, "va")
    after = run_index(project, caplog)  # re-indexing records the labels found there
    assert after.index != before.index and after.crops == before.crops
    fresh = next(v for v in videos_of(project) if v.video_id == "a")
    assert np.allclose(read_indexed_labels(fresh, "va").values, 0.25)


def test_a_reindex_probes_no_unchanged_container(tmp_path, dataset, caplog, monkeypatch) -> None:
    from pipeline import media

    project = new_project(tmp_path / "project", dataset)
    first = run_index(project, caplog)
    probed: list[str] = []
    real_probe = media.probe
    monkeypatch.setattr(media, "probe", lambda p: probed.append(Path(p).name) or real_probe(p))
    assert run_index(project, caplog).index == first.index and probed == []
    clip = dataset / "videos" / "b.mp4"
    clip.write_bytes(clip.read_bytes())  # same bytes, new mtime: probed again, same record
    os.utime(clip, (time.time() - AGE_S, time.time() - AGE_S))
    assert run_index(project, caplog).index == first.index and probed == ["b.mp4"]


def test_report_params_cover_every_param_but_the_dataset_root() -> None:
    """`report` prints a hash of the params without `dataset.root`; its DVC params must be those."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    listed = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]["params"])
    wanted = {k for k in params if k != "dataset"} | {f"dataset.{k}" for k in params["dataset"] if k != "root"}
    assert listed == wanted


@register("toy-crops", modality="toy")
class CropToy(ToyExtractor):
    """The toy extractor on a video's crops (what the face and reliability extractors read)."""

    name = "toy-crops"

    def source(self, video: Video):
        return video.crops_source()

    def prepare(self, video: Video) -> bytes:
        return b"".join(p.read_bytes() for p in sorted(Path(video.crops_dir).iterdir()))


def test_an_unreadable_crop_is_an_error_naming_it(tmp_path, dataset) -> None:
    from pipeline.datasets import DatasetError, build_index

    (dataset / "cropped_aligned" / "b" / "00009.jpg").symlink_to(tmp_path / "gone.jpg")  # dangling
    with pytest.raises(DatasetError, match=r"cropped_aligned/b/00009\.jpg: cannot list or stat"):
        build_index("affwild2", dataset, progress=False)


def test_the_params_check_is_skipped_only_while_params_and_code_are_unchanged(tmp_path, monkeypatch) -> None:
    """`index` runs at every `dvc repro`: its whole-file params check (which imports every registry)
    is remembered, but an edited params file is checked again."""
    from pipeline.config import ParamsError
    from affcache.stages import schema

    params, memo = tmp_path / "params.yaml", tmp_path / ".affcache" / "params_checked"
    params.write_text((REPO / "params.yaml").read_text())
    schema.check_params_file(params, memo)
    assert memo.is_file()
    monkeypatch.setattr(schema, "params_schema", lambda: pytest.fail("checked again with nothing changed"))
    schema.check_params_file(params, memo)
    monkeypatch.undo()
    params.write_text(params.read_text().replace("report:\n", "report:\n  no_such_key: 1\n", 1))
    with pytest.raises(ParamsError, match="no_such_key"):
        schema.check_params_file(params, memo)
