"""Tests of the Zarr feature store: round trips, crash safety, incremental todo, integrity tools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import pipeline.store as store_mod
from pipeline.records import Video
from pipeline.shard_reader import shard_layout
from pipeline.video_archive import _zarr_encoded
from pipeline.store import (
    FeatureStore,
    StoreError,
    export_h5,
    fingerprint_hash,
    prune_stores,
    read_current,
    read_failures,
    source_fingerprint,
    store_info,
    store_url,
    verify,
    write_current,
    write_failures,
)

REPO = Path(__file__).resolve().parents[1]
FP = {"model": "tiny", "revision": "abc", "schema": 1}


def make_arrays(n: int, dim: int = 16, seed: int = 0, **extra) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float32) / 30
    return {"t0": t, "t1": t + np.float32(1 / 30), "valid": rng.random(n) > 0.2,
            "emb": rng.standard_normal((n, dim)).astype(np.float32), **extra}


def archive_entries(url: str, vid: str) -> dict[str, bytes]:
    with zipfile.ZipFile(Path(url) / f"{vid}.zip") as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def rewrite_archive(url: str, vid: str, drop: tuple[str, ...] = (), put: dict[str, bytes] | None = None) -> None:
    """Rewrite a video's archive as another tool could: entries dropped (by prefix) or replaced."""
    entries = {k: v for k, v in archive_entries(url, vid).items() if not (drop and k.startswith(drop))}
    entries.update(put or {})
    with zipfile.ZipFile(Path(url) / f"{vid}.zip", "w") as zf:
        for k, v in entries.items():
            zf.writestr(k, v)


def encoded(name: str, arr: np.ndarray, dims: tuple[str, ...] = ("time",)) -> dict[str, bytes]:
    """An array's archive entries as zarr-python writes them (bypassing the store's validation)."""
    return _zarr_encoded(name, arr, dims, 2 * 1024 * 1024)


def make_video(tmp_path: Path, vid: str, content: bytes = b"video bytes") -> Video:
    media = tmp_path / "media" / f"{vid}.mp4"
    media.parent.mkdir(parents=True, exist_ok=True)
    media.write_bytes(content)
    return Video(vid, str(media), 30.0, 10, 1 / 3, True, "train")


@pytest.fixture
def fs(tmp_path: Path) -> FeatureStore:
    return FeatureStore.create(str(tmp_path / "face" / "grada.zarr"), extractor="grada", fingerprint=FP)


def test_round_trip_all_dtypes(fs: FeatureStore) -> None:
    text = np.array(["smiles 😀", "", "naïve — ok", "x" * 300])
    arrays = make_arrays(4, frame_index=np.arange(4, dtype=np.int64), small=np.array([1, 2, 3, 250], np.uint8),
                         vad=np.array([0.1, 0.2, np.nan, 1.0], np.float64), text=text,
                         lower=np.ones((4, 2, 3), np.float32), mouth_open=np.array([True, False, True, True]),
                         other_rows=np.arange(7, dtype=np.int32))
    fs.write_video("10-60-1280x720_right", arrays, attrs={"fps": 30.0, "note": "ü"}, source={"kind": "file"})
    fs.write_video("empty", make_arrays(0, text=np.array([], dtype=str)))
    for fast in (True, False):
        got = fs.read_video("10-60-1280x720_right", fast=fast)
        assert got.attrs["fps"] == 30.0 and got.attrs["note"] == "ü" and got.attrs["complete"] is True
        assert got["emb"].dtype == np.float16 and got["lower"].dtype == np.float16
        np.testing.assert_allclose(got["emb"], arrays["emb"].astype(np.float16))
        assert got["t0"].dtype == np.float32 and got["valid"].dtype == bool
        for name in ("frame_index", "small", "mouth_open", "other_rows", "t1", "valid"):
            np.testing.assert_array_equal(got[name], arrays[name])
            assert got[name].dtype == arrays[name].dtype
        np.testing.assert_array_equal(got["vad"], arrays["vad"])  # NaN allowed outside emb
        assert list(got["text"]) == list(text)
        empty = fs.read_video("empty", fast=fast)
        assert empty["emb"].shape == (0, 16) and empty["t0"].shape == (0,) and empty["text"].shape == (0,)
    many = fs.read_many(["empty", "10-60-1280x720_right"], arrays=["t0", "emb"])
    assert list(many) == ["empty", "10-60-1280x720_right"] and set(many["empty"]) == {"t0", "emb"}
    assert fs.video_ids() == ["10-60-1280x720_right", "empty"]
    assert verify(fs.url) == []


def test_root_attrs_and_fingerprint_mismatch(tmp_path: Path, fs: FeatureStore) -> None:
    assert fs.attrs["schema_version"] == store_mod.SCHEMA_VERSION == 3 and fs.attrs["extractor"] == "grada"
    assert fs.attrs["fingerprint"] == FP and fs.attrs["fingerprint_hash"] == fingerprint_hash(FP)
    assert fs.attrs["package_version"] and fs.attrs["created_at"]
    again = FeatureStore.create(fs.url, extractor="grada", fingerprint=dict(reversed(FP.items())))
    assert again.attrs["created_at"] == fs.attrs["created_at"]
    with pytest.raises(StoreError, match="different extractor configuration.*Delete the store or change the store name"):
        FeatureStore.create(fs.url, extractor="grada", fingerprint={**FP, "revision": "new"})
    with pytest.raises(StoreError, match="no feature store here"):
        FeatureStore.open(str(tmp_path / "nope.zarr"))
    with pytest.raises(StoreError, match="reserved"):
        FeatureStore.create(str(tmp_path / "x.zarr"), extractor="e", fingerprint=FP, attrs={"fingerprint": 1})
    extra = FeatureStore.create(str(tmp_path / "y.zarr"), extractor="e", fingerprint=FP, attrs={"dataset": "aff"})
    assert FeatureStore.open(extra.url).attrs["dataset"] == "aff"
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(StoreError, match="not an affcache feature store"):
        FeatureStore.create(str(tmp_path / "foreign.zarr"), extractor="e", fingerprint=FP)
    url = store_url("data/features", "face", "grada", FP)
    assert url == f"data/features/face/grada-{fingerprint_hash(FP)[:8]}.zarr" and len(fingerprint_hash(FP)) == 12


def test_write_validation_errors(fs: FeatureStore) -> None:
    with pytest.raises(StoreError, match="required arrays"):
        fs.write_video("v", {"t0": np.zeros(2), "valid": np.ones(2, bool)})
    with pytest.raises(StoreError, match="disagree in length"):
        fs.write_video("v", {**make_arrays(3), "emb": np.zeros((2, 4))})
    with pytest.raises(StoreError, match="NaN/inf"):
        fs.write_video("v", {**make_arrays(2), "emb": np.array([[np.nan], [1e6]])})
    with pytest.raises(StoreError, match="reserved"):
        fs.write_video("v", make_arrays(2), attrs={"complete": True})
    with pytest.raises(StoreError, match="invalid video id"):
        fs.write_video("a/b", make_arrays(2))
    assert fs.video_ids() == []


def test_complete_is_written_and_garbage_is_rewritten(tmp_path: Path, fs: FeatureStore) -> None:
    video = make_video(tmp_path, "v1")
    fs.write_video("v1", make_arrays(5), source=source_fingerprint(video.media_path))
    entries = archive_entries(fs.url, "v1")
    assert list(entries)[0] == "zarr.json"  # the group first: a video's state is one small read
    meta = json.loads(entries["zarr.json"])
    assert list(meta["attributes"])[-1] == "complete" and meta["attributes"]["complete"] is True
    assert fs.todo([video]) == []
    # An archive without `complete` (another tool's, or one marked damaged), with a stale array.
    group = json.loads(entries["zarr.json"])
    group["attributes"]["complete"] = False
    rewrite_archive(fs.url, "v1", put={"zarr.json": json.dumps(group).encode(),
                                        **encoded("stale", np.arange(3, dtype=np.float32))})
    assert fs.todo([video]) == [video] and not fs.is_complete("v1") and fs.video_ids() == []
    with pytest.raises(StoreError, match="incomplete.*run the extraction stage again"):
        fs.read_video("v1")
    assert any("incomplete group" in p for p in verify(fs.url))
    # A temporary file left by a killed writer is no video, and the next write replaces it.
    (Path(fs.url) / "v2.zip.partial").write_bytes(b"PK\x03\x04 half an archive")
    assert fs.video_ids() == [] and fs._all_group_ids() == ["v1"]
    fs.write_video("v1", make_arrays(5), source=source_fingerprint(video.media_path))
    fs.write_video("v2", make_arrays(2))
    assert fs.todo([video]) == [] and "stale" not in fs.read_video("v1") and verify(fs.url) == []
    assert sorted(p.name for p in Path(fs.url).iterdir()) == ["v1.zip", "v2.zip", "zarr.json"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import pipeline.store as S
    import pipeline.video_archive as A
    url, media_dir = sys.argv[1], sys.argv[2]
    fs = S.FeatureStore.create(url, extractor="grada", fingerprint={fp!r})
    original = A._put
    state = {{"current": None, "written": 0}}

    def put_then_maybe_die(zf, name, pieces):
        original(zf, name, pieces)
        if state["current"] == "v3":
            state["written"] += 1
            if state["written"] == 4:  # half-way through v3: its group and some arrays are on disk
                zf.fp.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    A._put = put_then_maybe_die
    for i in range(5):
        vid = f"v{{i}}"
        state["current"] = vid
        n = 40 + i
        t = np.arange(n, dtype=np.float32)
        arrays = {{"t0": t, "t1": t + 1, "valid": np.ones(n, bool), "emb": np.ones((n, 8)),
                   "frame_index": np.arange(n)}}
        fs.write_video(vid, arrays, source=S.source_fingerprint(os.path.join(media_dir, vid + ".mp4")))
    print("not killed")
""")


def test_kill_9_mid_video_resumes(tmp_path: Path) -> None:
    videos = [make_video(tmp_path, f"v{i}", content=bytes([i]) * 100) for i in range(5)]
    url = str(tmp_path / "kill.zarr")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(fp=FP), url, str(tmp_path / "media")],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    fs = FeatureStore.open(url)
    assert fs.video_ids() == ["v0", "v1", "v2"]
    assert [v.video_id for v in fs.todo(videos)] == ["v3", "v4"]
    assert (Path(url) / "v3.zip.partial").stat().st_size > 0 and not (Path(url) / "v3.zip").exists()
    assert not fs.is_complete("v3")
    n = 43
    t = np.arange(n, dtype=np.float32)
    fs.write_video("v3", {"t0": t, "t1": t + 1, "valid": np.ones(n, bool), "emb": np.ones((n, 8))},
                   source=source_fingerprint(videos[3].media_path))
    assert [v.video_id for v in fs.todo(videos)] == ["v4"]
    assert verify(url) == [] and not (Path(url) / "v3.zip.partial").exists()
    assert fs.read_video("v3")["t0"].shape == (n,)


def test_source_change_puts_video_back_in_todo(tmp_path: Path, fs: FeatureStore) -> None:
    video = make_video(tmp_path, "v1", content=os.urandom(3 * 1024 * 1024))
    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / "00001.jpg").write_bytes(b"jpg")
    fs.write_video("v1", make_arrays(3), source=source_fingerprint(video.media_path))
    fs.write_video("c1", make_arrays(3), source=source_fingerprint(crops))
    crops_video = Video("c1", video.media_path, 30.0, 3, 0.1, True, "train", crops_dir=str(crops))
    assert fs.todo([video]) == [] and fs.todo([crops_video], source=lambda v: v.crops_dir) == []
    st = os.stat(video.media_path)
    os.utime(video.media_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch: same content
    assert fs.todo([video]) == []  # a fresh clone / dvc pull re-times every file; nothing to redo
    with open(video.media_path, "r+b") as f:  # same size and mtime restored, content of the tail changed
        f.seek(-10, os.SEEK_END)
        f.write(b"0123456789")
    os.utime(video.media_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fs.todo([video]) == [video]
    (crops / "00002.jpg").write_bytes(b"jpg2")
    assert fs.todo([crops_video], source=lambda v: v.crops_dir) == [crops_video]
    missing = Video("v1", str(tmp_path / "gone.mp4"), 30.0, 3, 0.1, True, "train")
    assert fs.todo([missing]) == [missing]


def test_one_file_per_video_with_chunked_shards(tmp_path: Path, fs: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "TARGET_CHUNK_BYTES", 256)  # many inner chunks per array
    for i in range(10):
        fs.write_video(f"v{i}", make_arrays(300 + i, dim=16, frame_index=np.arange(300 + i), text=np.array(["a"] * (300 + i))))
    files = [p for p in Path(fs.url).rglob("*") if p.is_file()]
    assert len(files) == 1 + 10  # the root's zarr.json + one archive per video
    for i in range(10):
        entries = archive_entries(fs.url, f"v{i}")
        assert len(entries) == 1 + 6 * 2  # group + per array: metadata and one shard
        meta = json.loads(entries["emb/zarr.json"])
        shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        assert shard_rows // meta["codecs"][0]["configuration"]["chunk_shape"][0] >= 38  # inner chunks
    got = fs.read_video("v3")
    np.testing.assert_array_equal(got["frame_index"], np.arange(303))
    np.testing.assert_array_equal(got["emb"], fs.read_video("v3", fast=False)["emb"])


def test_reopen_sees_every_write(fs: FeatureStore) -> None:
    for i in range(3):
        fs.write_video(f"v{i}", make_arrays(4 + i))
    fs.consolidate()
    reopened = FeatureStore.open(fs.url)
    assert reopened.attrs == fs.attrs and reopened.video_ids() == ["v0", "v1", "v2"]
    reopened.write_video("v3", make_arrays(2))  # writes of another handle are seen (no stale listing)
    assert FeatureStore.open(fs.url).video_ids() == ["v0", "v1", "v2", "v3"]
    assert fs.read_many(["v0", "v3"])["v3"]["t0"].shape == (2,)


def test_same_features_same_bytes(tmp_path: Path) -> None:
    """Archives are deterministic: DVC deduplicates a re-extraction that changed nothing."""
    a = FeatureStore.create(str(tmp_path / "a.zarr"), extractor="e", fingerprint=FP)
    b = FeatureStore.create(str(tmp_path / "b.zarr"), extractor="e", fingerprint=FP)
    arrays = make_arrays(50, text=np.array(["x"] * 50))
    for store in (a, b, a):
        store.write_video("v1", arrays, attrs={"fps": 30.0}, source={"kind": "file", "sha1": "0"})
    assert (Path(a.url) / "v1.zip").read_bytes() == (Path(b.url) / "v1.zip").read_bytes()


def test_concurrent_writes_from_threads(fs: FeatureStore) -> None:
    errors: list[Exception] = []

    def work(i: int) -> None:
        try:
            fs.write_video(f"v{i}", make_arrays(10 + i, seed=i))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(fs.video_ids()) == 8
    assert FeatureStore.open(fs.url).attrs == fs.attrs and verify(fs.url) == []


def test_info_and_verify_on_good_and_damaged_store(fs: FeatureStore) -> None:
    for i in range(4):
        fs.write_video(f"v{i}", make_arrays(10, dim=8))
    info = store_info(fs.url)
    assert info["videos_complete"] == 4 and info["videos_incomplete"] == 0 and info["total_rows"] == 40
    assert info["arrays"]["emb"] == {"dtype": "float16", "row_shape": [8], "videos": 4, "rows": 40}
    assert info["files"] == 1 + 4 and info["bytes"] > 4 * 10 * 8 * 2 and info["attrs"]["extractor"] == "grada"
    assert verify(fs.url) == []
    rewrite_archive(fs.url, "v0", drop=("emb/c/",))  # lost chunk file
    rewrite_archive(fs.url, "v1", put={"t1/c/0": b"garbage"})  # corrupt shard
    rewrite_archive(fs.url, "v2", drop=("t0/",), put=encoded("t0", np.arange(7, dtype=np.float32)))  # length mismatch
    bad_emb = fs.read_video("v3")["emb"].copy()
    bad_emb[0, 0] = np.inf
    bad_t0 = fs.read_video("v3")["t0"].copy()
    bad_t0[0] = 100.0
    rewrite_archive(fs.url, "v3", drop=("emb/", "t0/"), put={**encoded("emb", bad_emb, ("time", "feature")),
                                                            **encoded("t0", bad_t0)})
    with pytest.raises(StoreError, match="v0.*'emb' is unreadable.*affcache store verify --repair"):
        fs.read_video("v0")
    with pytest.raises(StoreError, match="'t1' is unreadable"):
        fs.read_video("v1", fast=False)
    problems = "\n".join(verify(fs.url))
    assert "v0: array 'emb': missing chunk files" in problems
    assert "v1: array 't1': damaged chunk or shard" in problems
    assert "v2: row arrays disagree in length" in problems
    assert "v3: array 'emb' has NaN/inf" in problems and "v3: t0 > t1 in 1 rows" in problems
    rewrite_archive(fs.url, "v3", drop=("valid/",))
    assert "v3: missing required arrays ['valid']" in "\n".join(verify(fs.url))


def test_export_h5_round_trip(tmp_path: Path, fs: FeatureStore) -> None:
    text = np.array(["a 😀", "b", ""])
    fs.write_video("v1", make_arrays(3, text=text), attrs={"fps": 25.0}, source={"size": 1})
    fs.write_video("v0", make_arrays(0))
    zarr.open_group(zarr.storage.ZipStore(Path(fs.url) / "v1.zip", mode="r"), mode="r")  # sanity
    out = tmp_path / "out" / "features.h5"
    export_h5(fs.url, out)
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["v0", "v1"]
        assert json.loads(h5.attrs["fingerprint"]) == FP and h5.attrs["extractor"] == "grada"
        g = h5["v1"]
        assert g.attrs["fps"] == 25.0 and bool(g.attrs["complete"]) and json.loads(g.attrs["source"]) == {"size": 1}
        assert [s.decode() for s in g["text"][...]] == list(text)
        np.testing.assert_array_equal(g["emb"][...], fs.read_video("v1")["emb"])
        assert h5["v0"]["emb"].shape == (0, 16)


def test_memory_fsspec_url(tmp_path: Path) -> None:
    url = "memory://affcache-test/face/grada.zarr"
    fs = FeatureStore.create(url, extractor="grada", fingerprint=FP)
    video = make_video(tmp_path, "v1")
    fs.write_video("v1", make_arrays(6, text=np.array(list("abcdef"))), source=source_fingerprint(video.media_path))
    fs.write_video("v2", make_arrays(0))
    fs.consolidate()
    again = FeatureStore.open(url)
    assert again.video_ids() == ["v1", "v2"] and again.todo([video]) == []
    got = again.read_many(["v1"])["v1"]
    assert got["emb"].shape == (6, 16) and list(got["text"]) == list("abcdef")
    assert verify(url) == [] and store_info(url)["videos_complete"] == 2 and store_info(url)["files"] > 0
    with pytest.raises(StoreError, match="different extractor configuration"):
        FeatureStore.create(url, extractor="grada", fingerprint={"other": 1})


def test_failures_json(tmp_path: Path) -> None:
    path = tmp_path / "face" / "grada.failures.json"
    assert read_failures(path) == []
    failures = [{"video_id": "b", "file": "/x/b.mp4", "error": "no face"}, {"video_id": "a", "file": "/x/a.mp4", "error": "corrupt"}]
    write_failures(path, failures)
    assert [f["video_id"] for f in read_failures(path)] == ["a", "b"]
    with pytest.raises(StoreError, match="video_id, file and error"):
        write_failures(path, [{"video_id": "a"}])
    path.write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        read_failures(path)


def test_prune_and_current(tmp_path: Path) -> None:
    face = tmp_path / "repo" / "data" / "features" / "face"
    for name in ("grada-old.zarr", "grada-new.zarr", "other-1.zarr"):
        FeatureStore.create(str(face / name), extractor=name, fingerprint={"n": name})
    (face / "notes.txt").write_text("kept")
    removed = prune_stores(face, keep=str(face / "grada-new.zarr"))
    assert sorted(Path(p).name for p in removed) == ["grada-old.zarr", "other-1.zarr"]
    assert sorted(p.name for p in face.iterdir()) == ["grada-new.zarr", "notes.txt"]
    with pytest.raises(StoreError, match="run the extraction stage"):
        read_current(face)
    write_current(face, str(face / "grada-new.zarr"))
    assert json.loads((face / "current.json").read_text()) == {"store": "grada-new.zarr"}
    moved = tmp_path / "clone"
    (tmp_path / "repo").rename(moved)  # a moved/cloned checkout still resolves the store
    current = read_current(moved / "data" / "features" / "face")
    assert FeatureStore.open(current).attrs["extractor"] == "grada-new.zarr"
    write_current(face.parent, "s3://bucket/features/face/grada.zarr")
    assert read_current(face.parent) == "s3://bucket/features/face/grada.zarr"


def test_foreign_layout_falls_back_to_zarr(fs: FeatureStore) -> None:
    """Arrays the direct reader does not recognise (compressed, unsharded) still read through zarr."""
    fs.write_video("v1", make_arrays(5))
    entries: dict = {}
    zarr.create_array(zarr.storage.MemoryStore(entries), name="zipped", data=np.arange(5000, dtype=np.int64),
                      chunks=(1000,))  # zstd, 5 chunk files
    rewrite_archive(fs.url, "v1", put={k: v.to_bytes() for k, v in entries.items() if k.startswith("zipped/")})
    got = fs.read_many(["v1"])["v1"]
    np.testing.assert_array_equal(got["zipped"], np.arange(5000))
    assert fs.video_ids() == ["v1"]
    assert verify(fs.url)[0] == "v1: array 'zipped': chunks without checksums (not written by this store)"
    stored = archive_entries(fs.url, "v1")
    assert shard_layout(json.loads(stored["zipped/zarr.json"])) is None
    assert shard_layout(json.loads(stored["emb/zarr.json"])) is not None


def test_direct_writer_writes_what_zarr_writes(fs: FeatureStore) -> None:
    """The direct writer's metadata and shard bytes equal zarr-python's own for the same array."""
    arrays = make_arrays(300, dim=16, frame_index=np.arange(300), small=np.arange(300, dtype=np.uint8) % 7,
                         lower=np.ones((300, 2, 16), np.float32))
    fs.write_video("v1", arrays)
    stored = archive_entries(fs.url, "v1")
    dims = store_mod.dimension_names({n: store_mod._prepare_array("v1", n, a) for n, a in arrays.items()})
    for name, value in arrays.items():
        ours = {k: v for k, v in stored.items() if k.startswith(f"{name}/")}
        theirs = _zarr_encoded(name, store_mod._prepare_array("v1", name, value), dims[name], store_mod.TARGET_CHUNK_BYTES)
        assert ours.keys() == theirs.keys(), name
        assert json.loads(ours[f"{name}/zarr.json"]) == json.loads(theirs[f"{name}/zarr.json"]), name
        shard = next(k for k in ours if "/c/" in k)
        assert ours[shard] == theirs[shard], name


def _one_video_store(url: str, fp: dict) -> FeatureStore:
    fs = FeatureStore.create(url, extractor="grada", fingerprint=fp)
    fs.write_video("v1", {"emb": np.ones((3, 4), np.float16), "t0": np.zeros(3, np.float32),
                          "t1": np.ones(3, np.float32), "valid": np.ones(3, bool)})
    return fs


@pytest.mark.parametrize("garbage", [b"\x00garbage{", b'{"node_type": "array"', b"[1, 2]", b"\xff\xfe"])
def test_damaged_root_metadata_is_named_and_repaired_without_losing_videos(tmp_path, garbage):
    """Garbage in a store's root zarr.json: verify names the store and the recovery (not 'no store
    here'); the next extraction of the same configuration rewrites the root and keeps every video."""
    from pipeline.store import store_url, verify

    fp = {"model": "x"}
    url = store_url(str(tmp_path), "face", "grada", fp)
    _one_video_store(url, fp)
    (Path(url) / "zarr.json").write_bytes(garbage)
    with pytest.raises(StoreError, match="root metadata is damaged") as err:
        verify(url)
    assert url in str(err.value) and "Re-run the extraction stage" in str(err.value)
    again = FeatureStore.create(url, extractor="grada", fingerprint=fp)
    assert again.is_complete("v1") and verify(url) == []


def test_damaged_root_of_a_store_not_named_by_its_fingerprint_is_an_error(tmp_path):
    """Without the fingerprint in its name nothing says which configuration wrote the store: no
    rewrite, a StoreError naming it (never zarr's FileExistsError)."""
    url = str(tmp_path / "custom.zarr")
    _one_video_store(url, {"model": "x"})
    (Path(url) / "zarr.json").write_bytes(b"not json")
    with pytest.raises(StoreError, match="custom.zarr/zarr.json: the store's root metadata is damaged"):
        FeatureStore.create(url, extractor="grada", fingerprint={"model": "x"})
    assert (Path(url) / "v1.zip").is_file()
