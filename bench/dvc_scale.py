"""DVC's cost of an Aff-Wild2-sized dataset: `dvc repro` / `dvc status` with many crop files.

An Aff-Wild2-shaped tree is generated (`--per-video` crop files of 4 KB per video, a tiny clip and a
VA label file each). For each `--files` count, a fresh git + DVC project holds the `index` stage and
two stand-ins for what depends on it (`uses_index` on data/index.json, `uses_crops` on the crop
fingerprints), and runs:

  first repro -> dvc status -> no-op repro -> one crop overwritten at the same size, repro
  -> (after only) the scan cache deleted, repro: a teammate's or a moved dataset's first run

"before" is the index stage as at `--before-rev` (the dataset root a DVC dep, that revision's code);
"after" is this code (`always_changed`, the stage checks the crops itself). Timings are wall seconds
and CPU seconds (user + sys of dvc and the stage); peak RSS is the largest process's. The crop
files of smaller counts are hard links into one pool, so generation is paid once.

    python bench/dvc_scale.py --files 300000 1000000 --before 300000
    python bench/dvc_scale.py --files --before --demo-extra 300000   # the demo moved out, 300k extra crops

Results and the machine: bench/RESULTS.md ("DVC and the dataset").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VA = "VA_Estimation_Challenge"
BEFORE_REV = "4450bed"  # the last revision whose index stage had the dataset root as a DVC dep


def log(msg: str) -> None:
    print(msg, flush=True)


def make_clip(path: Path, frames: int = 10) -> None:
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def build_pool(pool: Path, videos: int, per_video: int) -> None:
    """`videos` ids with `per_video` distinct 4 KB crop files each (resumable: finished videos stay)."""
    clip = pool / "clip.mp4"
    if not clip.exists():
        make_clip(clip)
    t = time.perf_counter()
    for v in range(videos):
        vid = f"v{v:04d}"
        done = pool / "done" / vid
        if done.exists():
            continue
        crops = pool / "cropped_aligned" / vid
        crops.mkdir(parents=True, exist_ok=True)
        block = bytearray(os.urandom(4096))
        for i in range(1, per_video + 1):
            block[:8] = i.to_bytes(8, "little")
            (crops / f"{i:05d}.jpg").write_bytes(block)
        (pool / "videos").mkdir(exist_ok=True)
        shutil.copyfile(clip, pool / "videos" / f"{vid}.mp4")
        label = pool / VA / "Train_Set" / f"{vid}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("valence,arousal\n" + "0.1,0.2\n" * 10)
        done.parent.mkdir(exist_ok=True)
        done.touch()
        if v % 20 == 19:
            log(f"  pool: {v + 1}/{videos} videos ({time.perf_counter() - t:.0f} s)")


def link_dataset(pool: Path, root: Path, videos: int) -> None:
    """A dataset of the pool's first `videos` ids, every file a hard link (same inode, own entry)."""
    if root.exists():
        shutil.rmtree(root)
    for v in range(videos):
        vid = f"v{v:04d}"
        for rel in (f"videos/{vid}.mp4", f"{VA}/Train_Set/{vid}.txt"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(pool / rel, root / rel)
        dest = root / "cropped_aligned" / vid
        dest.mkdir(parents=True)
        with os.scandir(pool / "cropped_aligned" / vid) as entries:
            for e in entries:
                os.link(e.path, dest / e.name)


def code_tree(rev: str, dest: Path) -> Path:
    """The project's code at `rev` (git archive), for the "before" runs."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "pipeline", "extractors", "heads", "affcache"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def project(path: Path, root: Path, variant: str) -> None:
    import yaml

    path.mkdir(parents=True)
    params = {"dataset": {"adapter": "affwild2", "root": str(root), "index": "data/index.json",
                          "options": {"progress": False}}}
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    index_cmd = f"{sys.executable} -m affcache.cli index"
    copy = f"{sys.executable} -c \"import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])\""
    if variant == "before":
        stages = {"index": {"cmd": index_cmd, "deps": [str(root)], "params": ["dataset"],
                            "outs": ["data/index.json"]}}
    else:  # the stage of this repository's dvc.yaml, code deps left out (they are the same few files)
        real = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["index"]
        stages = {"index": {"cmd": index_cmd, "always_changed": real["always_changed"], "params": real["params"],
                            "outs": real["outs"]}}
        stages["uses_crops"] = {"cmd": f"{copy} data/index.crops.json data/crops_copy.json",
                                "deps": ["data/index.crops.json"], "outs": ["data/crops_copy.json"]}
    stages["uses_index"] = {"cmd": f"{copy} data/index.json data/index_copy.json", "deps": ["data/index.json"],
                            "outs": ["data/index_copy.json"]}
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (path / ".gitignore").write_text(".affcache/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=path, check=True, capture_output=True, env=git_env())


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GIT_AUTHOR_NAME": "bench", "GIT_COMMITTER_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@invalid",
                "GIT_COMMITTER_EMAIL": "bench@invalid", "DVC_NO_ANALYTICS": "1"})
    return env


def timed(cwd: Path, args: list[str], code: Path) -> dict:
    """Run a command under GNU time: wall and CPU seconds, peak RSS, the stages DVC ran, the log."""
    env = git_env()
    others = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    env["PYTHONPATH"] = os.pathsep.join([str(code), *others])
    stats = cwd / ".time"
    proc = subprocess.run(["/usr/bin/time", "-o", str(stats), "-f", "%e %U %S %M", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{out[-4000:]}")
    wall, user, sys_, rss = stats.read_text().split()[-4:]
    ran = sorted({line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")})
    return {"wall_s": float(wall), "cpu_s": round(float(user) + float(sys_), 2), "rss_mb": int(rss) // 1024,
            "ran": ran, "log": [line for line in out.splitlines() if "crops:" in line or "index:" in line]}


def edit_one_crop(root: Path) -> None:
    """Overwrite one crop file with other bytes of the same size (breaking its hard link first)."""
    crop = root / "cropped_aligned" / "v0000" / "00002.jpg"
    data = crop.read_bytes()
    crop.unlink()
    crop.write_bytes(bytes(b ^ 0xFF for b in data))


def run_case(work: Path, pool: Path, files: int, per_video: int, variant: str, code: Path) -> dict:
    videos = math.ceil(files / per_video)
    root = work / f"data_{files}_{variant}"
    link_dataset(pool, root, videos)
    proj = work / f"proj_{files}_{variant}"
    if proj.exists():
        shutil.rmtree(proj)
    project(proj, root, variant)
    out = {"files": videos * per_video, "videos": videos, "variant": variant}
    log(f"[{variant} {out['files']} files] first repro ...")
    out["first_repro"] = timed(proj, ["dvc", "repro"], code)
    out["status"] = timed(proj, ["dvc", "status"], code)
    out["noop_repro"] = timed(proj, ["dvc", "repro"], code)
    edit_one_crop(root)
    out["repro_after_crop_edit"] = timed(proj, ["dvc", "repro"], code)
    if variant == "after":
        shutil.rmtree(proj / ".affcache" / "index")
        out["first_sight_repro"] = timed(proj, ["dvc", "repro"], code)
    for key in ("first_repro", "status", "noop_repro", "repro_after_crop_edit", "first_sight_repro"):
        if key in out:
            r = out[key]
            log(f"  {key}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s cpu, {r['rss_mb']} MB, ran {r['ran']}")
    shutil.rmtree(root)
    return out


def demo_case(work: Path, pool: Path, extra: int, per_video: int) -> dict:
    """The issue's own setting: the tiny demo (tests/params.tiny.yaml) built with `dvc repro`, its dataset
    copied outside the repository (`dataset.root` pointing there) with `extra` crop files added in folders
    of ids that are not annotated; then `dvc status` and no-op `dvc repro` of the whole graph."""
    import yaml

    proj = work / "demo_project"
    if proj.exists():
        shutil.rmtree(proj)
    proj.mkdir(parents=True)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in listed:
        if (REPO / rel).is_file() and not rel.startswith(("data/", "metrics/", "plots/")) and rel != "dvc.lock":
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, proj / rel)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    for section, values in yaml.safe_load((REPO / "tests" / "params.tiny.yaml").read_text()).items():
        merge(params.setdefault(section, {}), values)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "demo"]):
        subprocess.run(cmd, cwd=proj, check=True, capture_output=True, env=git_env())
    log("[demo] full dvc repro (minutes) ...")
    out: dict = {"variant": "after", "demo_extra_files": extra, "build": timed(proj, ["dvc", "repro"], REPO)}
    outside = work / "demo_dataset"
    if outside.exists():
        shutil.rmtree(outside)
    shutil.copytree(proj / "data" / "raw" / "demo", outside, copy_function=shutil.copyfile)
    params["dataset"]["root"] = str(outside)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out["moved_repro"] = timed(proj, ["dvc", "repro"], REPO)
    added = 0
    for v in range(math.ceil(extra / per_video)):
        dest = outside / "cropped_aligned" / f"extra_{v:04d}"
        dest.mkdir(parents=True)
        with os.scandir(pool / "cropped_aligned" / f"v{v:04d}") as entries:
            for e in entries:
                if added < extra:
                    os.link(e.path, dest / e.name)
                    added += 1
    out["status"] = timed(proj, ["dvc", "status"], REPO)
    out["noop_repro"] = timed(proj, ["dvc", "repro"], REPO)
    out["noop_repro_2"] = timed(proj, ["dvc", "repro"], REPO)
    for key in ("build", "moved_repro", "status", "noop_repro", "noop_repro_2"):
        r = out[key]
        log(f"  {key}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s cpu, {r['rss_mb']} MB, ran {r['ran']}")
    return out


def merge(base: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, nargs="*", default=[300_000, 1_000_000])
    ap.add_argument("--before", type=int, nargs="*", default=[300_000], help="counts also run on --before-rev")
    ap.add_argument("--before-rev", default=BEFORE_REV)
    ap.add_argument("--per-video", type=int, default=5000, help="Aff-Wild2: ~4,700 crops per video")
    ap.add_argument("--work", type=Path, default=None, help="keep the pool here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--demo-extra", type=int, default=0,
                    help="also: the tiny demo moved outside the repo with this many extra crop files")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dvc_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    pool = work / "pool"
    build_pool(pool, math.ceil(max([*args.files, args.demo_extra]) / args.per_video), args.per_video)
    before_code = None
    results = []
    for files in sorted(args.files):
        if files in args.before:
            if before_code is None:
                target = work / f"code_{args.before_rev}"
                shutil.rmtree(target, ignore_errors=True)
                before_code = code_tree(args.before_rev, target)
            results.append(run_case(work, pool, files, args.per_video, "before", before_code))
        results.append(run_case(work, pool, files, args.per_video, "after", REPO))
    if args.demo_extra:
        results.append(demo_case(work, pool, args.demo_extra, args.per_video))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
