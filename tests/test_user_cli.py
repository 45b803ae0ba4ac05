"""README promises at the level the user meets them: the real `affcache` command in a subprocess on a
tiny demo project (demo data, tiny encoders, index) built once per session.

- a corrupt video: `affcache extract` exits non-zero, `failures.json` names it, the others are complete,
  and after the file is restored a re-run extracts only that one;
- SIGKILL mid-extraction, then a re-run: finished videos are kept, the result equals an uninterrupted run;
- `data/index.json` lists the label/frame mismatches the demo generator plants;
- `affcache export --template` through the stage: split filter, best model from metrics/summary.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import SUBPROCESS_TIMEOUT
from test_predict import PARAMS

# Names that may change with the heads/extractors refactors: edit here after the merge.
CORRUPT_MODALITY = "audio"      # fast tiny WavLM; decodes the mp4 itself
KILL_MODALITY = "behavior"      # the slowest tiny extractor: leaves time to kill it mid-run
EXPORT_HEAD = "face"            # the head trained for the export test and named best in summary.json
HEADER = "image_location,valence,arousal"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def affcache(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["affcache", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"affcache {' '.join(args)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory) -> Path:
    """`affcache demo-data`, `demo-models`, `index` on the toy-width params of test_predict."""
    root = tmp_path_factory.mktemp("user_cli") / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for cmd in ("demo-data", "demo-models", "index"):
        affcache(root, cmd)
    return root


def copy_of(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest)
    return dest


def index_videos(project: Path) -> list[dict]:
    return json.loads((project / "data" / "index.json").read_text())["videos"]


def current_store(project: Path, modality: str):
    from pipeline.store import FeatureStore, read_current

    cur = read_current(str(project / "data" / "features" / modality))
    url = cur if Path(cur).is_absolute() else str(project / cur)
    return FeatureStore.open(url)


def single_file_video(project: Path, with_audio: bool = True) -> dict:
    """A record whose media file no other record shares (not a _left/_right pair)."""
    videos = index_videos(project)
    counts = {}
    for v in videos:
        counts[v["media_path"]] = counts.get(v["media_path"], 0) + 1
    return next(v for v in videos if counts[v["media_path"]] == 1 and (v["has_audio"] or not with_audio))


def test_index_lists_label_frame_mismatches(demo_project: Path) -> None:
    warnings = json.loads((demo_project / "data" / "index.json").read_text())["warnings"]
    longer = [w for w in warnings if "label frame(s) have no video frame and are masked" in w]
    shorter = [w for w in warnings if "decoded frame(s) have no label and are ignored" in w]
    assert longer and shorter, warnings  # the generator plants both kinds
    ids = {v["video_id"] for v in index_videos(demo_project)}
    assert all(w.split(":")[0] in ids for w in warnings)


def test_corrupt_video_fails_alone_and_a_rerun_retries_only_it(demo_project: Path, tmp_path: Path) -> None:
    project = copy_of(demo_project, tmp_path / "project")
    victim = single_file_video(project)
    media = project / PARAMS["dataset"]["root"] / victim["media_path"]  # index paths: under the dataset root
    good = media.read_bytes()
    media.write_bytes(good[:3000] + bytes(len(good) - 3000))  # header kept, the rest zeroed

    first = affcache(project, "extract", CORRUPT_MODALITY, check=False)
    assert first.returncode != 0, first.stdout + first.stderr
    assert victim["video_id"] in first.stdout + first.stderr
    failures = [json.loads(p.read_text()) for p in (project / "data" / "features" / CORRUPT_MODALITY).glob("*.failures.json")]
    failed = [f for fs in failures for f in fs]
    assert [f["video_id"] for f in failed] == [victim["video_id"]]
    assert Path(failed[0]["file"]).name == media.name
    store = current_store(project, CORRUPT_MODALITY)
    others = sorted(v["video_id"] for v in index_videos(project) if v["video_id"] != victim["video_id"])
    assert sorted(store.video_ids()) == others

    media.write_bytes(good)
    second = affcache(project, "extract", CORRUPT_MODALITY)
    assert f"1 extracted, {len(others)} cached, 0 failed" in second.stdout + second.stderr
    assert victim["video_id"] in current_store(project, CORRUPT_MODALITY).video_ids()
    for f in (project / "data" / "features" / CORRUPT_MODALITY).glob("*.failures.json"):
        assert json.loads(f.read_text()) == []


def _read_all(store) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for vid in store.video_ids():
        g = store.read_video(vid)
        out[vid] = {k: np.asarray(g[k]) for k in g.keys()}
    return out


def test_sigkill_mid_extraction_then_resume(demo_project: Path, tmp_path: Path) -> None:
    from pipeline.store import FeatureStore

    reference = copy_of(demo_project, tmp_path / "reference")
    affcache(reference, "extract", KILL_MODALITY)
    want = _read_all(current_store(reference, KILL_MODALITY))
    total = len(index_videos(reference))
    assert len(want) == total

    project = copy_of(demo_project, tmp_path / "killed")
    proc = subprocess.Popen(["affcache", "extract", KILL_MODALITY], cwd=project, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done: list[str] = []
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            stores = list((project / "data" / "features" / KILL_MODALITY).glob("*.zarr"))
            if stores and (stores[0] / "zarr.json").exists():
                try:
                    done = FeatureStore.open(str(stores[0])).video_ids()
                except Exception:  # the store is being created
                    done = []
                if done:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    store_dir = next((project / "data" / "features" / KILL_MODALITY).glob("*.zarr"))
    kept = FeatureStore.open(str(store_dir)).video_ids()
    assert 1 <= len(kept) < total, kept
    def written(vid: str) -> tuple[int, int]:  # a rewrite is a new file (same bytes: archives are deterministic)
        st = (store_dir / f"{vid}.zip").stat()
        return st.st_ino, st.st_mtime_ns

    kept_archives = {vid: written(vid) for vid in kept}

    rerun = affcache(project, "extract", KILL_MODALITY)
    assert f"{total - len(kept)} extracted, {len(kept)} cached, 0 failed" in rerun.stdout + rerun.stderr
    for vid, before in kept_archives.items():  # finished videos are not rewritten
        assert written(vid) == before, vid
    got = _read_all(current_store(project, KILL_MODALITY))
    assert sorted(got) == sorted(want)
    for vid in want:
        assert sorted(got[vid]) == sorted(want[vid]), vid
        for k in want[vid]:
            np.testing.assert_array_equal(got[vid][k], want[vid][k], err_msg=f"{vid}/{k}")


def test_export_with_template_from_the_stage(demo_project: Path, tmp_path: Path) -> None:
    from pipeline.store import FeatureStore

    project = copy_of(demo_project, tmp_path / "project")
    affcache(project, "extract", EXPORT_HEAD)
    affcache(project, "extract", "reliability")
    affcache(project, "train", EXPORT_HEAD)
    (project / "metrics").mkdir(exist_ok=True)
    (project / "metrics" / "summary.json").write_text(json.dumps({"best": {"model": EXPORT_HEAD, "ccc_mean": 0.1}}))
    videos = index_videos(project)
    val = [v for v in videos if v["split"] == "validation"]
    train = next(v for v in videos if v["split"] == "train")
    assert len(val) >= 2
    # template: validation ids in reverse order, a few frames each (the template decides order and count)
    rows = [f"{v['video_id']}/{i:05d}.jpg,," for v in reversed(val) for i in range(1, 6)]
    template = tmp_path / "sample.txt"
    template.write_text("\n".join([HEADER, *rows]) + "\n")
    out = tmp_path / "submission.txt"
    result = affcache(project, "export", "--split", "validation", "--template", str(template), "--out", str(out))
    lines = out.read_text().splitlines()
    assert lines[0] == HEADER
    assert [line.split(",")[0] for line in lines[1:]] == [r.split(",")[0] for r in rows]
    outputs = FeatureStore.open(str(project / "data" / "heads" / EXPORT_HEAD / "outputs.zarr"))
    for line in lines[1:]:
        path, v, a = line.split(",")
        vid, frame = path.split("/")
        g = outputs.read_video(vid)
        pred, ok = np.asarray(g["pred"])[:, :2], np.asarray(g["valid"])
        i = int(frame[:5]) - 1
        if ok[i]:  # the best model's own prediction for that frame, clipped
            assert float(v) == pytest.approx(float(np.clip(pred[i, 0], -1, 1)), abs=1e-4), line
            assert float(a) == pytest.approx(float(np.clip(pred[i, 1], -1, 1)), abs=1e-4), line
    assert EXPORT_HEAD in result.stdout + result.stderr

    # the split filter: a train id in a validation template is an error naming the id and the template
    template.write_text("\n".join([HEADER, f"{train['video_id']}/00001.jpg,,"]) + "\n")
    bad = affcache(project, "export", "--split", "validation", "--template", str(template), "--out",
                   str(tmp_path / "bad.txt"), check=False)
    assert bad.returncode != 0 and train["video_id"] in bad.stdout + bad.stderr and str(template) in bad.stdout + bad.stderr


def test_ray_engine_writes_the_local_engine_s_store(demo_project: Path, tmp_path: Path) -> None:
    """`affcache extract face --engine ray` (2 actors on a local Ray) = the local engine, array for array
    (each actor uses as many torch threads as the local process: CPU sums depend on the thread count)."""
    pytest.importorskip("ray", reason="ray is not installed (the test extra installs it)")
    local = copy_of(demo_project, tmp_path / "local")
    affcache(local, "extract", "face")
    distributed = copy_of(demo_project, tmp_path / "ray")
    params = yaml.safe_load((distributed / "params.yaml").read_text())
    threads = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=_env(),
                                 capture_output=True, text=True, check=True, timeout=120).stdout)
    params["extract"]["face"]["ray"] = {"actors": 2, "cpus_per_actor": 1, "threads_per_actor": threads}
    (distributed / "params.yaml").write_text(yaml.safe_dump(params))
    run = affcache(distributed, "extract", "face", "--engine", "ray")
    total = len(index_videos(distributed))
    assert f"extract face: {total} extracted, 0 cached, 0 failed" in run.stdout + run.stderr
    want, got = _read_all(current_store(local, "face")), _read_all(current_store(distributed, "face"))
    assert Path(current_store(local, "face").url).name == Path(current_store(distributed, "face").url).name
    assert sorted(got) == sorted(want)
    for vid in want:
        for k in want[vid]:
            np.testing.assert_array_equal(got[vid][k], want[vid][k], err_msg=f"{vid}/{k}")
