"""The GPU check's CPU dry run: the same script, tiny widths, under the GPU machine's imports.

`bash bench/gpu_check.sh --tiny --device cpu --simulate-gpu-machine` builds the encoders, makes the
media set, runs every engine and naive loop and trains the three heads, importing only what the GPU
machine has plus the wheels that travel to it (bench/gpu_env.py). So a code path that needs OpenCV,
silero-vad, DVC or anything else the machine lacks fails here, not on GPU time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench import gpu_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_SITE": str(out / "site"),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--tiny", "--device", "cpu", "--simulate-gpu-machine",
                           "--modules-out", str(out / "modules.json")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"md": (out / "gpu_check.md").read_text(), "modules": json.loads((out / "modules.json").read_text()),
            "log": (out / "gpu_check.log").read_text()}


def test_dry_run_writes_one_table_for_results(dry_run):
    lines = dry_run["md"].splitlines()
    assert lines[0].startswith("GPU check (tiny dry run): CPU")
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| check")]
    assert [r.split(" | ")[0] for r in rows] == ["| face", "| audio", "| behavior", "| train face head",
                                                   "| train audio head", "| train behavior head"]
    for row in rows[:3]:  # both paths measured, a ratio of the two
        cells = row.split(" | ")
        assert float(cells[4].split()[0]) > 0 and float(cells[5].split()[0]) > 0 and cells[6].endswith("x")
    assert "video tokens each" in rows[2] and "GRADA EfficientNet-B1 | 6,844,202" in rows[0]


def test_wheels_cover_every_import_the_gpu_machine_lacks(dry_run):
    """Every third-party module the run loaded belongs to the machine's packages or to the wheels; the
    wheels are needed (PyAV, Zarr) and install with --no-deps (their own needs are covered too)."""
    allowed = gpu_env.allowed()
    modules = dry_run["modules"]
    outside = {m: d for m, d in modules.items() if d and not set(d) & allowed}
    assert not outside, f"imported, but absent on the GPU machine and not in bench/gpu_env.py WHEELS: {outside}"
    assert {"av", "zarr", "numcodecs", "google_crc32c"} <= set(modules) and "cv2" not in modules
    for wheel in gpu_env.WHEELS:
        missing = set(gpu_env._requirements(wheel)) - allowed
        assert not missing, f"{wheel} needs {missing}, which the GPU machine lacks (--no-deps install)"


def test_simulation_hides_what_the_machine_lacks():
    code = ("import importlib.util, importlib.metadata as md, sys; sys.path.insert(0, '.');"
            "from bench import gpu_env; gpu_env.simulate();"
            "print(importlib.util.find_spec('cv2') is None, importlib.util.find_spec('av') is not None);"
            "import numpy\n"
            "try:\n import cv2\nexcept ImportError:\n print('blocked')\n"
            "try:\n md.version('opencv-python-headless')\nexcept md.PackageNotFoundError:\n print('no metadata')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "blocked", "no", "metadata"], out.stderr


def _wheel(folder: Path, dist: str, module: str) -> Path:
    """A minimal pure-Python wheel (what `pip download` brings)."""
    path = folder / f"{dist}-0.1-py3-none-any.whl"
    info = f"{dist}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_install_step_installs_only_what_is_missing(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "numpy", "numpy")  # present here: skipped, the machine's own stays
    _wheel(wheels, "affcache_probe_pkg", "affcache_probe_pkg")
    done = gpu_env.install(wheels, tmp_path / "site")
    assert done == ["affcache_probe_pkg-0.1-py3-none-any.whl"]
    assert (tmp_path / "site" / "affcache_probe_pkg" / "__init__.py").is_file()
    assert not (tmp_path / "site" / "numpy").exists()
