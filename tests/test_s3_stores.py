"""Feature stores on S3-compatible object storage, against a real S3 API server on loopback (moto):
a store written, read and verified through `s3://` URLs; and the tiny demo extracted, trained on
and predicted with, every feature store in the bucket and nothing under data/features."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_predict import PARAMS, cwd

pytest.importorskip("s3fs", reason="s3fs is not installed (the test extra installs it)")


@pytest.fixture()
def endpoint_from_params_only(s3_server, monkeypatch):
    """The endpoint reaches the code only through `storage.endpoint_url` (no AWS_ENDPOINT_URL)."""
    import fsspec.config

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(fsspec.config, "conf", {})
    return s3_server


def test_a_store_on_s3_writes_reads_and_verifies(endpoint_from_params_only) -> None:
    from affcache.stages import configure_storage
    from pipeline.store import FeatureStore, read_current, verify, write_current

    configure_storage(endpoint_from_params_only["endpoint"])
    root = f"s3://{endpoint_from_params_only['bucket']}/{uuid.uuid4().hex}/features"
    url = f"{root}/face/grada-test.zarr"
    store = FeatureStore.create(url, extractor="grada", fingerprint={"model": "test"})
    n = 50
    arrays = {"emb": np.random.default_rng(0).standard_normal((n, 8)).astype(np.float16),
              "t0": np.arange(n, dtype=np.float32), "t1": np.arange(1, n + 1, dtype=np.float32),
              "valid": np.ones(n, bool)}
    store.write_video("v1", arrays)
    write_current(f"{root}/face", url)
    assert read_current(f"{root}/face") == url
    again = FeatureStore.open(read_current(f"{root}/face"))
    got = again.read_video("v1")
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
    assert verify(url) == []


def test_an_extraction_into_s3_is_one_object_per_video_and_repairs(endpoint_from_params_only, tmp_path: Path) -> None:
    """The real engine into an S3 store: one object per video (plus the store's root), leases gone
    after the run, a damaged object found by verify and moved aside by --repair, and the next run
    rewrites that video only."""
    import fsspec

    from extractors.base import run_extraction
    from affcache.stages import configure_storage
    from pipeline.store import FeatureStore, verify
    from toy_extractor import ToyConfig, ToyExtractor, toy_videos

    s3 = endpoint_from_params_only
    configure_storage(s3["endpoint"])
    videos = toy_videos(tmp_path, 3)
    report = run_extraction(ToyExtractor(ToyConfig()), videos, f"s3://{s3['bucket']}/{uuid.uuid4().hex}/features",
                            progress=False)
    assert report.done == ["vid00", "vid01", "vid02"]
    bucket = fsspec.filesystem("s3", endpoint_url=s3["endpoint"])
    inner = report.url[len("s3://"):]
    assert sorted(k.rsplit("/", 1)[-1] for k in bucket.find(inner)) == ["vid00.zip", "vid01.zip", "vid02.zip", "zarr.json"]
    assert bucket.find(f"{inner}.claims") == []
    damaged = bytearray(bucket.cat_file(f"{inner}/vid01.zip"))
    damaged[len(damaged) // 2] ^= 0xFF
    bucket.pipe_file(f"{inner}/vid01.zip", bytes(damaged))
    problems = verify(report.url)
    assert problems and all(p.startswith("vid01: ") for p in problems), problems
    assert FeatureStore.open(report.url).todo(videos) == []  # its head is intact: only verify sees it
    verify(report.url, repair=True)
    assert [v.video_id for v in FeatureStore.open(report.url).todo(videos)] == ["vid01"]
    again = run_extraction(ToyExtractor(ToyConfig()), videos, report.url.rsplit("/", 2)[0], progress=False)
    assert again.done == ["vid01"] and verify(report.url) == []
    assert not bucket.exists(f"{inner}/vid01.zip.damaged")


def test_extract_train_and_predict_with_stores_in_s3(endpoint_from_params_only, tmp_path: Path, torch_threads) -> None:
    import fsspec

    from affcache.stages import demo_data, demo_models, extract, index, predict, train
    from pipeline.store import FeatureStore, read_current, verify

    torch_threads(1)
    s3 = endpoint_from_params_only
    prefix = f"{s3['bucket']}/{uuid.uuid4().hex}"
    params = copy.deepcopy(PARAMS)
    params["storage"] = {"features": f"s3://{prefix}/features", "endpoint_url": s3["endpoint"]}
    params["predict"] = {"model": "face", "features": f"s3://{prefix}/predict"}
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    p = Path("params.yaml")
    with cwd(project):
        demo_data.run(p)
        demo_models.run(p)
        index.run(p)
        extract.run(p, "face")
        train.run(p, "face")
        clip = next(Path("data/raw/demo").rglob("*.mp4"))
        report = predict.run(p, [clip.resolve()], Path("predictions"))
    assert not (project / "data" / "features").exists()  # every store went to the bucket
    url = read_current(f"s3://{prefix}/features/face")
    assert url.startswith(f"s3://{prefix}/features/face/") and verify(url) == []
    objects = fsspec.filesystem("s3", endpoint_url=s3["endpoint"]).find(url[len("s3://"):])
    assert len(objects) == 1 + len(FeatureStore.open(url).video_ids())  # the root + one object per video
    from pipeline.records import read_index

    assert sorted(FeatureStore.open(url).video_ids()) == sorted(v.video_id for v in read_index(project / "data" / "index.json", project / "data" / "raw" / "demo"))
    assert (project / "data" / "heads" / "face" / "model.pt").exists()
    assert report.extraction["face"]["store"].startswith(f"s3://{prefix}/predict/face/")
    assert (project / next(iter(report.outputs.values()))["csv"]).stat().st_size > 0
    fs = fsspec.filesystem("s3", endpoint_url=s3["endpoint"])
    assert fs.exists(f"{prefix}/predict/face/current.json")


def test_an_unreachable_endpoint_fails_before_any_video(tmp_path: Path) -> None:
    import socket

    from affcache.stages import StageFailed, extract

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    params = copy.deepcopy(PARAMS)
    params["storage"] = {"features": "s3://affcache/x/features", "endpoint_url": f"http://127.0.0.1:{port}"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with cwd(tmp_path), pytest.raises(StageFailed, match=f"127.0.0.1:{port}: cannot reach the object store"):
        extract.run(Path("params.yaml"), "reliability")  # no index either: the endpoint is checked first
