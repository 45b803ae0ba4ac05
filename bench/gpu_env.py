"""The GPU machine's Python environment: what it has, the wheels that travel to it, and how they install.

The accelerator machine reaches no package registry. It has Python 3.12 with PyTorch (CUDA) and
`MACHINE_HAS` (with what those need); `bench/gpu_check.py`'s code paths also import `WHEELS`, which
travel inside the working tree: `bench/gpu_wheels.sh` downloads them (cp312 manylinux x86_64,
`--no-deps`, pinned to the versions installed where it runs) into the git-ignored `bench/wheels/`,
and `bench/gpu_check.sh` installs those the machine lacks into a private folder (`install`).

`simulate()` makes a Python elsewhere import like that machine: a module of any other installed
distribution (OpenCV, silero-vad, DVC, pydantic, xarray, ...) fails to import. The CPU dry run
(tests/test_gpu_check.py) runs under it, so a code path that needs more than the machine has fails
there first.

    python bench/gpu_env.py pins                      # WHEELS pinned to this environment's versions
    python bench/gpu_env.py install WHEEL_DIR TARGET  # pip install --no-deps what this Python lacks
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

MACHINE_HAS = ("torch", "transformers", "tokenizers", "safetensors", "torchvision", "numpy", "scipy", "pandas",
               "pillow", "pyyaml", "click", "tqdm", "h5py", "fsspec")
WHEELS = ("av", "zarr", "numcodecs", "donfig", "google-crc32c")
PROJECT = {"affcache", "pipeline", "extractors", "heads", "bench", "tests"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str) -> list[str]:
    """Names a distribution needs, markers evaluated for this Python, extras left out."""
    from packaging.requirements import Requirement

    out = []
    for text in md.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(norm(req.name))
    return out


def closure(names: tuple[str, ...] | list[str]) -> set[str]:
    """The distributions `names` pull in, as installed here (an absent one ends its branch)."""
    seen: set[str] = set()
    todo = [norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(_requirements(name))
        except md.PackageNotFoundError:
            continue
    return seen


def allowed() -> set[str]:
    return closure(MACHINE_HAS) | {norm(w) for w in WHEELS}


class _PathFinderWithout(importlib.abc.MetaPathFinder):
    """The standard path finder, blind to top-level modules that only distributions outside `ok`
    provide: `import cv2` fails, `importlib.util.find_spec("cv2")` is None and `importlib.metadata`
    does not list opencv-python-headless, as where it is absent."""

    def __init__(self, inner: type, ok: set[str]):
        self.inner, self.ok = inner, ok
        self.owners = {mod: {norm(d) for d in dists} for mod, dists in md.packages_distributions().items()}
        self.refused: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - the finder protocol
        top = fullname.partition(".")[0]
        owners = self.owners.get(top)
        if path is None and owners and top not in PROJECT and not owners & self.ok:
            self.refused.add(top)
            return None
        return self.inner.find_spec(fullname, path, target)

    def find_distributions(self, *args, **kwargs):  # noqa: ANN002, ANN003 - importlib.metadata's hook
        """Installed-package metadata, less the distributions the machine lacks (the project is not installed there either)."""
        for dist in self.inner.find_distributions(*args, **kwargs):
            name = norm(dist.metadata["Name"] or "")
            if name in self.ok:
                yield dist

    def invalidate_caches(self) -> None:
        self.inner.invalidate_caches()


def simulate() -> _PathFinderWithout:
    """From now on, import only what the GPU machine has plus WHEELS (and the standard library)."""
    from importlib.machinery import PathFinder

    finder = _PathFinderWithout(PathFinder, allowed())
    sys.meta_path[:] = [finder if f is PathFinder else f for f in sys.meta_path]
    return finder


def imported_distributions() -> dict[str, set[str]]:
    """Loaded top-level modules outside the standard library and the project, with their distributions."""
    owners = md.packages_distributions()
    out = {}
    for name in {m.partition(".")[0] for m in list(sys.modules)}:
        if name in sys.stdlib_module_names or name in PROJECT or name.startswith("__"):
            continue
        out[name] = {norm(d) for d in owners.get(name, [])}
    return out


def pins() -> list[str]:
    return [f"{w}=={md.version(w)}" for w in WHEELS]


def _wheel_dist(path: Path) -> str:
    return norm(path.name.split("-")[0])


def install(wheel_dir: Path, target: Path) -> list[str]:
    """`pip install --no-deps --no-index --target` of the wheels whose distribution this Python lacks."""
    wheels = sorted(Path(wheel_dir).glob("*.whl"))
    todo = []
    for w in wheels:
        try:
            md.version(_wheel_dist(w))
        except md.PackageNotFoundError:
            todo.append(w)
    if not todo:
        return []
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                        "--target", str(target), *map(str, todo)], check=True)
    else:  # a wheel is a zip of importable files plus its dist-info: enough for imports and metadata
        import zipfile

        for w in todo:
            with zipfile.ZipFile(w) as z:
                z.extractall(target)
    return [w.name for w in todo]


def main() -> None:
    cmd = sys.argv[1:2]
    if cmd == ["pins"]:
        print(" ".join(pins()))
    elif cmd == ["install"] and len(sys.argv) == 4:
        done = install(Path(sys.argv[2]), Path(sys.argv[3]))
        print(f"installed {done or 'nothing (all present)'}")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
