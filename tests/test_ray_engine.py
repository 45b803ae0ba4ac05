"""The Ray engine on a real local Ray: same store as the local engine, a killed actor's video redone
by another actor, failures recorded as locally, clear errors before any video, and two drivers on
one store splitting the work. Uses the toy extractor (features from the media bytes, a log line per
computation) so that each test counts real extractions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SUBPROCESS_TIMEOUT

ray = pytest.importorskip("ray", reason="ray is not installed (the test extra installs it)")

from extractors.base import ExtractorError, run_extraction  # noqa: E402
from extractors.engine_ray import RayConfig, run_extraction_ray  # noqa: E402
from pipeline.store import FeatureStore, verify  # noqa: E402
from toy_extractor import ToyConfig, ToyExtractor, toy_videos  # noqa: E402

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PYTHONPATH = os.pathsep.join([str(REPO), str(TESTS)])


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs); its workers import the repository and tests/."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}})
    yield ray
    ray.shutdown()


def computed(log: Path) -> list[str]:
    """Video ids in the order they were computed (one line per compute() call, any process)."""
    return [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []


def read_all(url: str) -> dict[str, dict[str, np.ndarray]]:
    store = FeatureStore.open(url)
    return {v: dict(store.read_video(v)) for v in sorted(store.video_ids())}


def test_ray_not_installed_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExtractorError, match=r"pip install -e '\.\[ray\]'"):
        run_extraction_ray(ToyExtractor(ToyConfig()), toy_videos(tmp_path, 1), str(tmp_path / "f"), RayConfig(),
                           progress=False)
    assert not (tmp_path / "f").exists()  # nothing written


def test_an_unreachable_address_fails_before_any_video(tmp_path: Path) -> None:
    if ray.is_initialized():
        ray.shutdown()  # the check runs before joining a cluster: this process must not hold one yet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    with pytest.raises(ExtractorError, match=f"127.0.0.1:{port}.*cannot reach the Ray cluster"):
        run_extraction_ray(ToyExtractor(ToyConfig()), toy_videos(tmp_path, 1), str(tmp_path / "f"),
                           RayConfig(address=f"127.0.0.1:{port}", connect_timeout_s=2), progress=False)
    assert not (tmp_path / "f").exists()


DRIVER = """
import sys
from pathlib import Path
from extractors.engine_ray import RayConfig, run_extraction_ray
from toy_extractor import ToyConfig, ToyExtractor, toy_videos
root = Path(sys.argv[1])
videos = toy_videos(root, 6, write=False)
report = run_extraction_ray(ToyExtractor(ToyConfig(log=str(root / "log"), seconds=1.0)), videos,
                            str(root / "features"), RayConfig(actors=1), progress=False)
print("DONE", len(report.done), "OTHERS", len(report.others), "FAILED", len(report.failed))
"""


def test_two_drivers_on_one_store_split_the_work(tmp_path: Path) -> None:
    videos = toy_videos(tmp_path, 6)
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=SUBPROCESS_TIMEOUT) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert sorted(computed(tmp_path / "log")) == sorted(v.video_id for v in videos)  # each video once
    done = [int(out.split("DONE ")[1].split()[0]) for out, _ in outs]
    assert sum(done) == len(videos)
    url = str(next((tmp_path / "features" / "toy").glob("*.zarr")))
    assert verify(url) == [] and sorted(FeatureStore.open(url).video_ids()) == [v.video_id for v in videos]


def test_ray_store_equals_the_local_store(local_ray, tmp_path: Path) -> None:
    videos = toy_videos(tmp_path, 6)
    log = tmp_path / "ray.log"
    ray_report = run_extraction_ray(ToyExtractor(ToyConfig(log=str(log))), videos, str(tmp_path / "ray"),
                                    RayConfig(actors=2), progress=False)
    local_report = run_extraction(ToyExtractor(ToyConfig()), videos, str(tmp_path / "local"), progress=False)
    assert sorted(ray_report.done) == sorted(v.video_id for v in videos) and not ray_report.failed
    assert sorted(computed(log)) == sorted(v.video_id for v in videos)  # each exactly once
    assert verify(ray_report.url) == []
    got, want = read_all(ray_report.url), read_all(local_report.url)
    assert got.keys() == want.keys()
    for vid in want:
        for name in want[vid]:
            np.testing.assert_array_equal(got[vid][name], want[vid][name], err_msg=f"{vid}/{name}")
    again = run_extraction_ray(ToyExtractor(ToyConfig(log=str(log))), videos, str(tmp_path / "ray"),
                               RayConfig(actors=2), progress=False)
    assert again.done == [] and len(again.skipped) == len(videos)  # a re-run skips complete videos


def test_a_killed_actor_s_video_is_done_by_another(local_ray, tmp_path: Path) -> None:
    videos = toy_videos(tmp_path, 4)
    log = tmp_path / "log"
    cfg = ToyConfig(log=str(log), die_once=str(tmp_path / "died"), die_on="vid02")
    report = run_extraction_ray(ToyExtractor(cfg), videos, str(tmp_path / "features"), RayConfig(actors=2),
                                progress=False)
    assert (tmp_path / "died").exists()  # the actor really was killed (SIGKILL, mid-video)
    assert sorted(report.done) == [v.video_id for v in videos] and not report.failed
    assert computed(log).count("vid02") == 2  # once in the killed actor, once in its replacement
    assert verify(report.url) == []
    want = read_all(run_extraction(ToyExtractor(ToyConfig()), videos, str(tmp_path / "local"),
                                   progress=False).url)
    np.testing.assert_array_equal(read_all(report.url)["vid02"]["emb"], want["vid02"]["emb"])


def test_an_extractor_error_is_recorded_as_in_the_local_engine(local_ray, tmp_path: Path) -> None:
    videos = toy_videos(tmp_path, 3)
    report = run_extraction_ray(ToyExtractor(ToyConfig(fail_on="vid01")), videos, str(tmp_path / "f"),
                                RayConfig(actors=1), progress=False)
    assert sorted(report.done) == ["vid00", "vid02"]
    assert [f["video_id"] for f in report.failed] == ["vid01"]
    assert "vid01" in report.failed[0]["error"] and report.failed[0]["file"].endswith("vid01.bin")
    failures = json.loads((tmp_path / "f" / "toy" / "toy-test.failures.json").read_text())
    assert [f["video_id"] for f in failures] == ["vid01"]
    retry = run_extraction_ray(ToyExtractor(ToyConfig()), videos, str(tmp_path / "f"), RayConfig(), progress=False)
    assert retry.done == ["vid01"]  # a re-run retries only the failed video


def test_a_pool_larger_than_the_cluster_is_refused_before_any_video(local_ray, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pytest.raises(ExtractorError, match=r"3 actor\(s\) x 1 CPU need 3 CPU, the cluster has 2"):
        run_extraction_ray(ToyExtractor(ToyConfig(log=str(log))), toy_videos(tmp_path, 4), str(tmp_path / "f"),
                           RayConfig(actors=3), progress=False)
    assert computed(log) == []
