"""Per-video claims (`pipeline.claims`) and their use by the extraction engine: one lease per video,
exclusive takeover of expired leases, renewal, release on success and failure, waiting for videos
that other processes hold, and two real processes on one store extracting each video once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from extractors.base import extract_one, open_store, run_extraction
from pipeline.claims import ClaimLost, Claims, Lease, LeaseKeeper, claims_url
from pipeline.store import FeatureStore, verify
from toy_extractor import ToyConfig, ToyExtractor, toy_videos

REPO = Path(__file__).resolve().parents[1]


def expire(claims: Claims, lease: Lease) -> None:
    """Make a held lease look like its process died long ago (no sleeping, no clock games)."""
    path = Path(claims.url) / lease.video_id / f"{lease.generation:08d}.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "expires": time.time() - 3600}))


def test_one_lease_per_video_and_release(tmp_path: Path) -> None:
    a, b = Claims(str(tmp_path / "c"), owner="host-a:1"), Claims(str(tmp_path / "c"), owner="host-b:2")
    lease = a.acquire("v1")
    assert lease is not None and lease.generation == 0 and lease.owner == "host-a:1"
    assert b.acquire("v1") is None and a.acquire("v1") is None  # held, also against its own process
    assert b.holder("v1")["owner"] == "host-a:1" and b.holder("v1")["token"] == lease.token
    assert b.acquire("v2") is not None  # other videos are free
    a.release(lease)
    assert b.holder("v1") is None and not (tmp_path / "c" / "v1").exists()
    assert b.acquire("v1") is not None


def test_expired_lease_is_taken_over_exactly_once(tmp_path: Path) -> None:
    url = str(tmp_path / "c")
    dead = Claims(url, owner="dead:1")
    old = dead.acquire("v1")
    expire(dead, old)
    contenders = [Claims(url, owner=f"host:{i}") for i in range(8)]
    won: list[Lease] = []
    barrier = threading.Barrier(len(contenders))

    def take(c: Claims) -> None:
        barrier.wait()
        got = c.acquire("v1")
        if got is not None:
            won.append(got)

    threads = [threading.Thread(target=take, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and won[0].generation == 1
    assert Claims(url).holder("v1")["token"] == won[0].token
    with pytest.raises(ClaimLost, match="taken over"):
        dead.renew(old)
    dead.release(old)  # a taken-over lease is not the old holder's to delete
    assert Claims(url).holder("v1")["token"] == won[0].token
    assert sorted(os.listdir(Path(url) / "v1")) == ["00000001.json"]  # the stale generation is gone


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    """kill -9, then a re-run on the same machine: no waiting for the TTL."""
    url = str(tmp_path / "c")
    script = ("import os, sys; from pipeline.claims import Claims; "
              "assert Claims(sys.argv[1], ttl_s=3600).acquire('v1') is not None; os._exit(0)")
    subprocess.run([sys.executable, "-c", script, url], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                   check=True, timeout=120)
    doc = json.loads((Path(url) / "v1" / "00000000.json").read_text())
    assert doc["expires"] > time.time() + 600 and doc["pid"] != os.getpid()  # not expired, but dead
    assert Claims(url).holder("v1") is None
    lease = Claims(url).acquire("v1")
    assert lease is not None and lease.generation == 1


def test_renewal_extends_the_lease_and_the_heartbeat_renews(tmp_path: Path) -> None:
    claims = Claims(str(tmp_path / "c"), ttl_s=60)
    lease = claims.acquire("v1")
    renewed = claims.renew(lease)
    assert renewed.expires >= lease.expires and renewed.token == lease.token
    assert claims.holder("v1")["expires"] == renewed.expires
    expire(claims, lease)  # about to expire, but its process is alive: the keeper renews it
    with LeaseKeeper(claims, interval_s=0.05) as keeper:
        keeper.add(renewed)
        deadline = time.monotonic() + 60
        while claims.holder("v1") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert claims.holder("v1") is not None and not keeper.lost("v1")
        keeper.release("v1")
    assert claims.holder("v1") is None
    with LeaseKeeper(claims) as keeper:  # leaving the keeper (an exception, Ctrl-C) gives leases back
        keeper.add(claims.acquire("v2"))
        assert claims.holder("v2") is not None
    assert claims.holder("v2") is None


def test_a_lease_lost_while_running_is_not_written(tmp_path: Path) -> None:
    videos = toy_videos(tmp_path, 1)
    extractor = ToyExtractor(ToyConfig())
    store = open_store(extractor, str(tmp_path / "f"))
    mine, theirs = Claims(claims_url(store.url), owner="slow:1"), Claims(claims_url(store.url), owner="new:2")
    keeper = LeaseKeeper(mine)
    lease = mine.acquire("vid00")
    keeper.add(lease)
    expire(mine, lease)
    assert theirs.acquire("vid00") is not None
    keeper.renew_all()
    assert keeper.lost("vid00")
    from extractors.base import _compute_and_write

    prepared = Path(videos[0].media_path).read_bytes()
    assert _compute_and_write(extractor, videos[0], prepared, {}, store, keeper) is False
    assert store.video_ids() == []


def test_leases_are_released_on_success_and_on_failure(tmp_path: Path) -> None:
    videos = toy_videos(tmp_path, 3)
    Path(videos[1].media_path).unlink()  # prepare fails for this one
    report = run_extraction(ToyExtractor(ToyConfig()), videos, str(tmp_path / "f"), progress=False)
    assert report.done == ["vid00", "vid02"] and [f["video_id"] for f in report.failed] == ["vid01"]
    assert not Path(claims_url(report.url)).exists()  # every lease given back, the folder removed
    claims = Claims(claims_url(report.url))
    extractor = ToyExtractor(ToyConfig())
    store = FeatureStore.open(report.url)
    with pytest.raises(FileNotFoundError):
        extract_one(extractor, videos[1], store, claims)
    assert claims.holder("vid01") is None
    assert extract_one(extractor, videos[0], store, claims) is False  # complete: nothing to do
    Path(videos[1].media_path).write_bytes((1).to_bytes(8, "little") + b"toy media")
    assert extract_one(extractor, videos[1], store, claims) is True and claims.holder("vid01") is None
    assert verify(report.url) == []


@pytest.mark.parametrize("other_finishes", [True, False])
def test_a_run_waits_for_videos_other_processes_hold(tmp_path: Path, other_finishes: bool) -> None:
    """Only leased videos left: poll (no busy loop) until the holder completes the video (counted as
    `others`) or gives it up (then extract it here); either way the store ends complete."""
    videos = toy_videos(tmp_path, 2)
    extractor = ToyExtractor(ToyConfig())
    root = str(tmp_path / "f")
    store = open_store(extractor, root)
    other = Claims(claims_url(store.url), owner="other:1")
    lease = other.acquire("vid01")
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        r=run_extraction(extractor, videos, root, progress=False, poll_s=0.05)))
    thread.start()
    deadline = time.monotonic() + 120
    while not store.is_complete("vid00") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert thread.is_alive()  # vid01 is held by a live lease: the run waits for it
    if other_finishes:
        arrays = extractor.compute(videos[1], Path(videos[1].media_path).read_bytes())
        from pipeline.store import source_fingerprint

        store.write_video("vid01", arrays, source=source_fingerprint(videos[1].media_path))
    other.release(lease)
    thread.join(120)
    report = result["r"]
    assert report.done == (["vid00"] if other_finishes else ["vid00", "vid01"])
    assert report.others == (["vid01"] if other_finishes else [])
    assert verify(report.url) == [] and store.video_ids() == ["vid00", "vid01"]


def test_claims_on_an_fsspec_store(tmp_path: Path) -> None:
    url = "memory://affcache-claims-test/face/x.zarr.claims"
    a, b = Claims(url, owner="a:1"), Claims(url, owner="b:2")
    lease = a.acquire("v1")
    assert lease is not None and b.acquire("v1") is None and b.holder("v1")["owner"] == "a:1"
    assert a.renew(lease).expires >= lease.expires
    a.release(lease)
    assert b.holder("v1") is None and b.acquire("v1") is not None


DRIVER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    from extractors.base import run_extraction
    from toy_extractor import ToyConfig, ToyExtractor, toy_videos
    from pathlib import Path
    work = Path({work!r})
    videos = toy_videos(work, {n}, write=False)
    print("ready", flush=True)
    while not (work / "go").exists():
        time.sleep(0.01)
    report = run_extraction(ToyExtractor(ToyConfig(log={log!r}, seconds=0.3)), videos, str(work / "features"),
                            progress=False, poll_s=0.1)
    print(json.dumps({{"done": report.done, "others": report.others, "skipped": report.skipped,
                      "failed": report.failed, "url": report.url}}), flush=True)
""")


def test_two_processes_on_one_store_extract_each_video_once(tmp_path: Path) -> None:
    n = 8
    log = tmp_path / "computed.log"
    toy_videos(tmp_path, n)  # written once, before the processes start
    script = DRIVER.format(tests=str(REPO / "tests"), work=str(tmp_path), n=n, log=str(log))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    (tmp_path / "go").touch()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    computed = log.read_text().split()
    ids = computed[1::2]
    assert sorted(ids) == [f"vid{k:02d}" for k in range(n)]  # every video extracted exactly once
    assert sum(len(r["done"]) for r in reports) == n
    for r in reports:  # each process accounts for every video: its own, the other's, none failed
        assert sorted(r["done"] + r["others"] + r["skipped"]) == sorted(ids) and not r["failed"]
    assert verify(reports[0]["url"]) == []
    assert FeatureStore.open(reports[0]["url"]).video_ids() == sorted(ids)
    print("extractions per process:", [len(r["done"]) for r in reports])
