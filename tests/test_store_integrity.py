"""Integrity of the feature store: every kind of damage is found by `verify`, refused by every read
path with the store, video and array named, and repaired by `verify --repair` + the next extraction.
Also: stores of the schema without checksums are refused, and xarray opens a store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import pipeline.store as store_mod
from extractors.base import run_extraction
from pipeline.store import FeatureStore, StoreError, verify
from toy_extractor import ToyConfig, ToyExtractor, toy_videos


@pytest.fixture
def toy_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Three videos written by the real engine, with small inner chunks (emb: 38 chunks, t0: 2)."""
    monkeypatch.setattr(store_mod, "TARGET_CHUNK_BYTES", 1024)
    videos = toy_videos(tmp_path, 3)
    root = str(tmp_path / "features")
    report = run_extraction(ToyExtractor(ToyConfig()), videos, root, progress=False)
    assert report.done == ["vid00", "vid01", "vid02"] and verify(report.url) == []
    return videos, root, report.url


def shard_of(url: str, vid: str, name: str) -> Path:
    meta = json.loads((Path(url) / vid / name / "zarr.json").read_text())
    return Path(url, vid, name, "c", *(["0"] * len(meta["shape"])))


def chunk_index(shard: Path) -> np.ndarray:
    """(offset, nbytes) of each inner chunk, from the shard index at the end of the file."""
    data = shard.read_bytes()
    for n in range(1, 10_000):  # the index is n * 16 bytes + a 4-byte checksum; offsets start at 0
        idx = np.frombuffer(data[-(n * 16 + 4):-4], "<u8").reshape(-1, 2)
        if idx[0, 0] == 0 and int(idx[-1].sum()) == len(data) - (n * 16 + 4):
            return idx
    raise AssertionError(f"{shard}: no shard index found")


def flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))


def repair_and_rerun(videos, root: str, url: str, bad: str) -> None:
    """The documented recovery: verify --repair, then the next extraction rewrites only `bad`."""
    verify(url, repair=True)
    assert [v.video_id for v in FeatureStore.open(url).todo(videos)] == [bad]
    report = run_extraction(ToyExtractor(ToyConfig()), videos, root, progress=False)
    assert report.done == [bad] and sorted(report.skipped) == sorted({"vid00", "vid01", "vid02"} - {bad})
    assert verify(url) == []
    expected = ToyExtractor(ToyConfig()).compute(videos[1], Path(videos[1].media_path).read_bytes())
    got = FeatureStore.open(url).read_video(bad)
    np.testing.assert_array_equal(got["emb"], expected["emb"].astype(np.float16))
    np.testing.assert_array_equal(got["valid"], expected["valid"])


@pytest.mark.parametrize("name", ["emb", "t0", "valid"])
def test_flipped_byte_in_a_chunk_is_caught_by_every_read_path_and_repaired(toy_store, name: str) -> None:
    videos, root, url = toy_store
    shard = shard_of(url, "vid01", name)
    index = chunk_index(shard)
    offset, nbytes = index[min(1, len(index) - 1)]  # the second inner chunk where there is one
    flip(shard, int(offset + nbytes // 2))
    problems = verify(url)
    assert any(p.startswith(f"vid01: array {name!r}: damaged chunk or shard") and "checksum" in p for p in problems), problems
    assert not any(p.startswith(("vid00", "vid02")) for p in problems)
    assert any("verify --repair" in p for p in problems)
    fs = FeatureStore.open(url)
    for fast in (True, False):
        with pytest.raises(StoreError) as err:
            fs.read_video("vid01", fast=fast)
        assert url in str(err.value) and "'vid01'" in str(err.value) and f"{name!r}" in str(err.value)
        assert "verify --repair" in str(err.value)
        fs.read_video("vid00", fast=fast)  # the other videos stay readable
    with pytest.raises(StoreError, match=f"video 'vid01' array {name!r}"):
        fs.read_many(["vid00", "vid01", "vid02"])
    repair_and_rerun(videos, root, url, "vid01")


def _flip_index(url: str) -> None:
    shard = shard_of(url, "vid01", "emb")
    flip(shard, shard.stat().st_size - 10)


def _truncate(url: str) -> None:
    shard = shard_of(url, "vid01", "emb")
    os.truncate(shard, shard.stat().st_size // 2)


def _extend(url: str) -> None:
    with open(shard_of(url, "vid01", "emb"), "ab") as f:
        f.write(b"\0" * 100)


def _remove(url: str) -> None:
    shard_of(url, "vid01", "emb").unlink()


def _garbage_array_meta(url: str) -> None:
    (Path(url) / "vid01" / "emb" / "zarr.json").write_bytes(b'{"node_type": "arr')


def _foreign_array_meta(url: str) -> None:
    (Path(url) / "vid01" / "emb" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))


def _garbage_group_meta(url: str) -> None:
    (Path(url) / "vid01" / "zarr.json").write_bytes(b"\x00\x01 not json")


def _missing_group_meta(url: str) -> None:
    (Path(url) / "vid01" / "zarr.json").unlink()


def _missing_array(url: str) -> None:
    import shutil

    shutil.rmtree(Path(url) / "vid01" / "valid")


DAMAGE: dict[str, tuple[Callable[[str], None], str]] = {
    "flipped byte in a shard index": (_flip_index, "vid01: array 'emb': damaged chunk or shard"),
    "truncated shard": (_truncate, "vid01: array 'emb': damaged chunk or shard"),
    "bytes appended to a shard": (_extend, "vid01: array 'emb': damaged chunk or shard"),
    "missing shard": (_remove, "vid01: array 'emb': missing chunk files"),
    "garbage array metadata": (_garbage_array_meta, "vid01: array 'emb': metadata (vid01/emb/zarr.json) missing or damaged"),
    "array metadata of another node": (_foreign_array_meta, "vid01: array 'emb': metadata (vid01/emb/zarr.json) missing or damaged"),
    "garbage group metadata": (_garbage_group_meta, "vid01: group metadata (vid01/zarr.json) damaged"),
    "missing group metadata": (_missing_group_meta, "vid01: group metadata (vid01/zarr.json) missing"),
    "missing required array": (_missing_array, "vid01: missing required arrays ['valid']"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_kind_of_damage_is_found_refused_and_repaired(toy_store, kind: str) -> None:
    videos, root, url = toy_store
    damage, expected = DAMAGE[kind]
    damage(url)
    problems = verify(url)
    assert any(p.startswith(expected) for p in problems), problems
    assert not any(p.startswith(("vid00", "vid02")) for p in problems)
    fs = FeatureStore.open(url)
    for fast in (True, False):
        with pytest.raises(StoreError, match=r"video 'vid01'") as err:
            fs.read_video("vid01", fast=fast)
        assert url in str(err.value)
    with pytest.raises(StoreError, match="vid01"):
        fs.read_many(["vid00", "vid01"])
    repair_and_rerun(videos, root, url, "vid01")


def test_store_without_checksums_is_refused_with_the_way_out(toy_store) -> None:
    _videos, root, url = toy_store
    meta_path = Path(url) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["schema_version"] = 1
    meta_path.write_text(json.dumps(meta))
    for call in (lambda: FeatureStore.open(url), lambda: verify(url),
                 lambda: run_extraction(ToyExtractor(ToyConfig()), _videos, root, progress=False)):
        with pytest.raises(StoreError, match=r"schema_version 1.*before chunk checksums.*Re-extract: delete the store") as err:
            call()
        assert url in str(err.value)


def test_xarray_opens_a_video_group_and_the_whole_store(toy_store) -> None:
    xr = pytest.importorskip("xarray")
    _videos, _root, url = toy_store
    fs = FeatureStore.open(url)
    n = 40  # reliability-like arrays: a second time grid (vad, vad_t0, vad_t1), strings, a 3-D array
    t = np.arange(n, dtype=np.float32) / 10
    fs.write_video("mixed", {"t0": t, "t1": t + 0.1, "valid": np.ones(n, bool), "emb": np.ones((n, 8)),
                             "emb_mean": np.ones((n, 4)), "lower": np.ones((n, 2, 8)), "text": np.array(["a"] * n),
                             "vad": np.zeros(7, np.float32), "vad_t0": np.zeros(7, np.float32),
                             "vad_t1": np.ones(7, np.float32), "extra": np.arange(3)})
    fs.consolidate()
    ds = xr.open_zarr(url, group="vid00", zarr_format=3)
    assert ds["emb"].dims == ("time", "feature") and ds.sizes["time"] == 300 and ds.sizes["feature"] == 64
    assert ds["t0"].dims == ("time",) and ds["frame_index"].dims == ("time",)
    np.testing.assert_array_equal(ds["emb"].values, fs.read_video("vid00")["emb"])
    mixed = xr.open_zarr(url, group="mixed", zarr_format=3)
    assert mixed["emb_mean"].dims == ("time", "emb_mean_feature") and mixed["lower"].dims == ("time", "lower_dim1", "feature")
    assert mixed["vad"].dims == mixed["vad_t0"].dims == ("vad_time",) and mixed["extra"].dims == ("extra_row",)
    assert list(mixed["text"].values) == ["a"] * n
    tree = xr.open_datatree(url, engine="zarr", zarr_format=3)
    assert sorted(tree.children) == ["mixed", "vid00", "vid01", "vid02"]
    np.testing.assert_array_equal(tree["vid01"]["valid"].values, fs.read_video("vid01")["valid"])
    assert tree.attrs["schema_version"] == store_mod.SCHEMA_VERSION


def test_cli_verify_lists_damage_and_repair_marks_it(toy_store) -> None:
    from click.testing import CliRunner

    from affcache.cli import main

    videos, _root, url = toy_store
    shard = shard_of(url, "vid02", "t1")
    flip(shard, 3)
    result = CliRunner().invoke(main, ["store", "verify", url])
    assert result.exit_code != 0 and "vid02: array 't1': damaged chunk or shard" in result.output
    assert FeatureStore.open(url).todo(videos) == []  # verify alone changes nothing
    result = CliRunner().invoke(main, ["store", "verify", "--repair", url])
    assert result.exit_code != 0 and "marked for re-extraction" in result.output
    assert [v.video_id for v in FeatureStore.open(url).todo(videos)] == ["vid02"]


def test_direct_reader_without_preadv_reads_the_same(toy_store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Platforms without os.preadv take the pread loop; same bytes, same checksum checks."""
    _videos, _root, url = toy_store
    fs = FeatureStore.open(url)
    want = fs.read_video("vid01", fast=False)
    monkeypatch.delattr(os, "preadv", raising=False)
    got = fs.read_video("vid01", fast=True)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    flip(shard_of(url, "vid01", "emb"), 5)
    with pytest.raises(StoreError, match="checksum mismatch in inner chunk 0"):
        fs.read_video("vid01", fast=True)
