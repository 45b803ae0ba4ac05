"""Integrity of the feature store: every kind of damage is found by `verify`, refused by every read
path with the store, video and array named, and repaired by `verify --repair` + the next extraction.
Also: stores of older schemas are refused with the way out (schema 2 is converted in place by
`store upgrade`), and xarray opens a store."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import pipeline.store as store_mod
from extractors.base import run_extraction
from pipeline.store import FeatureStore, StoreError, verify
from pipeline.video_archive import VideoArchive
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


def archive_of(url: str, vid: str) -> Path:
    return Path(url) / f"{vid}.zip"


def entry_span(url: str, vid: str, key: str) -> tuple[int, int]:
    """(offset in the archive file, size) of one entry's bytes."""
    with VideoArchive.open_file(str(archive_of(url, vid))) as archive:
        region = archive._region(key)
        return region.start, region.size


def shard_span(url: str, vid: str, name: str) -> tuple[int, int]:
    with zipfile.ZipFile(archive_of(url, vid)) as zf:
        ndim = len(json.loads(zf.read(f"{name}/zarr.json"))["shape"])
    return entry_span(url, vid, f"{name}/c/" + "/".join(["0"] * ndim))


def chunk_index(url: str, vid: str, name: str) -> np.ndarray:
    """(offset, nbytes) of each inner chunk, from the shard index at the end of the shard."""
    start, size = shard_span(url, vid, name)
    data = archive_of(url, vid).read_bytes()[start: start + size]
    for n in range(1, 10_000):  # the index is n * 16 bytes + a 4-byte checksum; offsets start at 0
        idx = np.frombuffer(data[-(n * 16 + 4):-4], "<u8").reshape(-1, 2)
        if idx[0, 0] == 0 and int(idx[-1].sum()) == len(data) - (n * 16 + 4):
            return idx
    raise AssertionError(f"{vid}/{name}: no shard index found")


def flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))


def rewrite(url: str, vid: str, drop: tuple[str, ...] = (), put: dict[str, bytes] | None = None) -> None:
    """Rewrite a video's archive as another tool could: entries dropped (by prefix) or replaced."""
    with zipfile.ZipFile(archive_of(url, vid)) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist() if not (drop and i.filename.startswith(drop))}
    entries.update(put or {})
    with zipfile.ZipFile(archive_of(url, vid), "w") as zf:
        for k, v in entries.items():
            zf.writestr(k, v)


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
    start, _size = shard_span(url, "vid01", name)
    index = chunk_index(url, "vid01", name)
    offset, nbytes = index[min(1, len(index) - 1)]  # the second inner chunk where there is one
    flip(archive_of(url, "vid01"), start + int(offset + nbytes // 2))
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
    start, size = shard_span(url, "vid01", "emb")
    flip(archive_of(url, "vid01"), start + size - 10)


def _flip_array_meta(url: str) -> None:
    start, size = entry_span(url, "vid01", "emb/zarr.json")
    flip(archive_of(url, "vid01"), start + size // 2)


def _flip_group_meta(url: str) -> None:
    start, size = entry_span(url, "vid01", "zarr.json")
    flip(archive_of(url, "vid01"), start + size // 2)


def _truncate(url: str) -> None:
    path = archive_of(url, "vid01")
    os.truncate(path, path.stat().st_size // 2)


def _extend(url: str) -> None:
    with open(archive_of(url, "vid01"), "ab") as f:
        f.write(b"\0" * 100)


def _not_a_zip(url: str) -> None:
    archive_of(url, "vid01").write_bytes(b"\0" * 5000)


def _remove(url: str) -> None:
    rewrite(url, "vid01", drop=("emb/c/",))


def _garbage_array_meta(url: str) -> None:
    rewrite(url, "vid01", put={"emb/zarr.json": b'{"node_type": "arr'})


def _foreign_array_meta(url: str) -> None:
    rewrite(url, "vid01", put={"emb/zarr.json": json.dumps({"zarr_format": 3, "node_type": "group"}).encode()})


def _garbage_group_meta(url: str) -> None:
    rewrite(url, "vid01", put={"zarr.json": b"\x00\x01 not json"})


def _missing_group_meta(url: str) -> None:
    rewrite(url, "vid01", drop=("zarr.json",))


def _missing_array(url: str) -> None:
    rewrite(url, "vid01", drop=("valid/",))


DAMAGE: dict[str, tuple[Callable[[str], None], str]] = {
    "flipped byte in a shard index": (_flip_index, "vid01: array 'emb': damaged chunk or shard"),
    "flipped byte in array metadata": (_flip_array_meta, "vid01: array 'emb': metadata (emb/zarr.json) missing or damaged"),
    "flipped byte in group metadata": (_flip_group_meta, "vid01: group metadata (vid01.zip: zarr.json) damaged"),
    "truncated archive": (_truncate, "vid01: video archive (vid01.zip) damaged"),
    "bytes appended to an archive": (_extend, "vid01: 100 bytes after the end of the archive"),
    "archive overwritten with zeros": (_not_a_zip, "vid01: video archive (vid01.zip) damaged"),
    "missing shard": (_remove, "vid01: array 'emb': missing chunk files"),
    "garbage array metadata": (_garbage_array_meta, "vid01: array 'emb': metadata (emb/zarr.json) missing or damaged"),
    "array metadata of another node": (_foreign_array_meta, "vid01: array 'emb': metadata (emb/zarr.json) missing or damaged"),
    "garbage group metadata": (_garbage_group_meta, "vid01: group metadata (vid01.zip: zarr.json) damaged"),
    "missing group metadata": (_missing_group_meta, "vid01: group metadata (vid01.zip: zarr.json) missing"),
    "missing required array": (_missing_array, "vid01: missing required arrays ['valid']"),
}


HARMLESS_TO_READS = {"bytes appended to an archive"}


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
        if kind in HARMLESS_TO_READS:  # every byte that was written is there, checksums intact
            assert fs.read_video("vid01", fast=fast)["emb"].shape == (300, 64)
            continue
        with pytest.raises(StoreError, match=r"video 'vid01'") as err:
            fs.read_video("vid01", fast=fast)
        assert url in str(err.value)
    if kind not in HARMLESS_TO_READS:
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


def _folder_per_video_store(url: str, ref: FeatureStore) -> dict:
    """The videos of `ref` written in the folder-per-video layout (schema 2) as the previous release
    wrote it, with vid02 damaged (a flipped byte) and vid03 interrupted (no `complete`)."""
    import zarr
    from zarr.codecs import Crc32cCodec

    expected = {v: ref.read_video(v) for v in ref.video_ids()}
    zarr.open_group(url, mode="w-", attributes={**ref.attrs, "schema_version": 2}, zarr_format=3)
    for vid, arrays in expected.items():
        group = zarr.open_group(url, path=vid, mode="w", attributes={**arrays.attrs, "complete": False}, zarr_format=3)
        for name, arr in arrays.items():
            a = group.create_array(name, shape=arr.shape, dtype=str if arr.dtype.kind == "U" else arr.dtype,
                                   chunks=arr.shape or (1,), shards=arr.shape or (1,), compressors=[Crc32cCodec()],
                                   config={"write_empty_chunks": True})
            a[...] = arr
        group.update_attributes({"complete": vid != "vid03"})
    old_chunk = Path(url, "vid02", "emb", "c", "0", "0")
    flip(old_chunk, old_chunk.stat().st_size // 2)
    return expected


def test_a_folder_per_video_store_is_upgraded_in_place(tmp_path: Path) -> None:
    """A schema-2 store is refused by readers with the command that converts it; `affcache store
    upgrade` converts it without re-extraction, drops what was incomplete or damaged, and the next
    extraction run does only those."""
    from click.testing import CliRunner

    from affcache.cli import main

    videos = toy_videos(tmp_path, 4)
    ref = FeatureStore.open(run_extraction(ToyExtractor(ToyConfig()), videos, str(tmp_path / "ref"), progress=False).url)
    url = str(tmp_path / "old.zarr")
    expected = _folder_per_video_store(url, ref)
    with pytest.raises(StoreError, match=f"schema_version 2 .*`affcache store upgrade {url}`"):
        FeatureStore.open(url)
    result = CliRunner().invoke(main, ["store", "upgrade", url])
    assert result.exit_code == 0, result.output
    assert "converted 2 video(s)" in result.output and "vid02, vid03" in result.output
    store = FeatureStore.open(url)
    assert store.attrs["schema_version"] == store_mod.SCHEMA_VERSION and store.video_ids() == ["vid00", "vid01"]
    assert sorted(p.name for p in Path(url).iterdir()) == ["vid00.zip", "vid01.zip", "zarr.json"]
    for vid in ("vid00", "vid01"):
        got = store.read_video(vid)
        assert got.attrs == expected[vid].attrs and sorted(got) == sorted(expected[vid])
        for name in got:
            np.testing.assert_array_equal(got[name], expected[vid][name])
    assert verify(url) == []
    assert [v.video_id for v in store.todo(videos)] == ["vid02", "vid03"]
    assert CliRunner().invoke(main, ["store", "upgrade", url]).exit_code == 0  # already done: nothing to do


def test_an_extraction_run_converts_a_folder_per_video_store_and_resumes(tmp_path: Path) -> None:
    """After an update, the extraction stage on a store of its own configuration in the old layout
    converts it and extracts only the videos that were not complete and intact."""
    videos = toy_videos(tmp_path, 4)
    ref = FeatureStore.open(run_extraction(ToyExtractor(ToyConfig()), videos, str(tmp_path / "ref"), progress=False).url)
    root = tmp_path / "features"
    url = store_mod.store_url(str(root), "toy", "toy-test", ToyExtractor(ToyConfig()).fingerprint())
    assert Path(url).name == Path(ref.url).name
    expected = _folder_per_video_store(url, ref)
    report = run_extraction(ToyExtractor(ToyConfig()), videos, str(root), progress=False)
    assert report.url == url and report.done == ["vid02", "vid03"] and sorted(report.skipped) == ["vid00", "vid01"]
    assert verify(url) == [] and FeatureStore.open(url).video_ids() == ["vid00", "vid01", "vid02", "vid03"]
    np.testing.assert_array_equal(FeatureStore.open(url).read_video("vid00")["emb"], expected["vid00"]["emb"])


def test_xarray_opens_a_video_and_the_whole_store(toy_store) -> None:
    xr = pytest.importorskip("xarray")
    import zarr

    from pipeline.store import open_xarray

    _videos, _root, url = toy_store
    fs = FeatureStore.open(url)
    n = 40  # reliability-like arrays: a second time grid (vad, vad_t0, vad_t1), strings, a 3-D array
    t = np.arange(n, dtype=np.float32) / 10
    fs.write_video("mixed", {"t0": t, "t1": t + 0.1, "valid": np.ones(n, bool), "emb": np.ones((n, 8)),
                             "emb_mean": np.ones((n, 4)), "lower": np.ones((n, 2, 8)), "text": np.array(["a"] * n),
                             "vad": np.zeros(7, np.float32), "vad_t0": np.zeros(7, np.float32),
                             "vad_t1": np.ones(7, np.float32), "extra": np.arange(3)})
    ds = open_xarray(url, "vid00")
    assert ds["emb"].dims == ("time", "feature") and ds.sizes["time"] == 300 and ds.sizes["feature"] == 64
    assert ds["t0"].dims == ("time",) and ds["frame_index"].dims == ("time",)
    np.testing.assert_array_equal(ds["emb"].values, fs.read_video("vid00")["emb"])
    # without affcache: the archive is a Zarr v3 hierarchy in a Zip
    plain = xr.open_zarr(zarr.storage.ZipStore(archive_of(url, "mixed"), mode="r"), consolidated=False, zarr_format=3)
    assert plain["emb_mean"].dims == ("time", "emb_mean_feature") and plain["lower"].dims == ("time", "lower_dim1", "feature")
    assert plain["vad"].dims == plain["vad_t0"].dims == ("vad_time",) and plain["extra"].dims == ("extra_row",)
    assert list(plain["text"].values) == ["a"] * n
    tree = open_xarray(url)
    assert sorted(tree.children) == ["mixed", "vid00", "vid01", "vid02"]
    np.testing.assert_array_equal(tree["vid01"]["valid"].values, fs.read_video("vid01")["valid"])
    assert tree.attrs["schema_version"] == store_mod.SCHEMA_VERSION
    import affcache  # the user's entry point gives the same

    assert list(affcache.open_features(url, video="vid00", arrays=["emb"], xarray=True).data_vars) == ["emb"]
    assert sorted(affcache.open_features(url, xarray=True).children) == sorted(tree.children)


def test_cli_verify_lists_damage_and_repair_marks_it(toy_store) -> None:
    from click.testing import CliRunner

    from affcache.cli import main

    videos, _root, url = toy_store
    start, _size = shard_span(url, "vid02", "t1")
    flip(archive_of(url, "vid02"), start + 3)
    result = CliRunner().invoke(main, ["store", "verify", url])
    assert result.exit_code != 0 and "vid02: array 't1': damaged chunk or shard" in result.output
    assert FeatureStore.open(url).todo(videos) == []  # verify alone changes nothing
    result = CliRunner().invoke(main, ["store", "verify", "--repair", url])
    assert result.exit_code != 0 and "marked for re-extraction" in result.output
    assert "moved aside to vid02.zip.damaged" in result.output
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
    start, _size = shard_span(url, "vid01", "emb")
    flip(archive_of(url, "vid01"), start + 5)
    with pytest.raises(StoreError, match="checksum mismatch in inner chunk 0"):
        fs.read_video("vid01", fast=True)
