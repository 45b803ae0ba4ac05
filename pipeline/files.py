"""Writing and hashing files: the one atomic writer and the one file hasher.

Every file a stage writes goes through `atomic_write_*`: the content lands in a temporary file in
the same folder and is renamed over the target, so a crash (or DVC hashing the folder meanwhile)
never sees half a file. A URL (`s3://...`, any fsspec protocol) is written with one object PUT,
which object stores make atomic; `read_bytes` and `exists` read either kind. Hashes are for
identity, not security: `sha256_file` for whole files whose
exact content identifies them (weights, templates), `sampled_digest` for large trees where reading
every byte would cost minutes (media, checkpoints) and the first/last MiB plus sizes suffice.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

MIB = 1 << 20


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it when the block succeeds (removed if not).

    For writers that need a file name of their own (HDF5, CSV writers); `atomic_write_*` use it too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_beside(path: Path) -> str:
    """Create an empty, uniquely named temporary file beside `path` and return its name.

    Created with mode 0666 so that the process umask decides the final mode, as for any file a
    tool writes (tempfile.mkstemp would leave 0600, unreadable to a teammate on a shared
    filesystem or a group-shared DVC cache).
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue


def is_url(path: str | os.PathLike) -> bool:
    """A fsspec URL other than a plain local path (`file://` counts as local)."""
    return "://" in str(path) and not str(path).startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    return str(path)[len("file://"):] if str(path).startswith("file://") else str(path)


def url_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL; credentials and endpoint come from the
    environment (AWS_* variables) and fsspec's config (see `affcache.stages.configure_storage`)."""
    import fsspec

    return fsspec.core.url_to_fs(str(url))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder, then rename; one PUT
    for a URL)."""
    if is_url(path):
        fs, inner = url_fs(str(path))
        fs.pipe_file(inner, data)
        return
    with atomic_output(local_path(path)) as tmp:
        tmp.write_bytes(data)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The content of a local file or an object (FileNotFoundError when there is none)."""
    if is_url(path):
        fs, inner = url_fs(str(path))
        return fs.cat_file(inner)
    return Path(local_path(path)).read_bytes()


def exists(path: str | os.PathLike) -> bool:
    if is_url(path):
        fs, inner = url_fs(str(path))
        return fs.exists(inner)
    return Path(local_path(path)).exists()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    """JSON with sorted keys (stable bytes for DVC); numpy scalars are written as floats."""
    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=True, default=float) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = MIB) -> str:
    """SHA-256 of a file's whole content, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sampled_digest(files: Iterable[tuple[str, Path]], edge: int = MIB) -> str:
    """SHA-1 over (name, size, first and last `edge` bytes) of each file, in the order given.

    Cheap on multi-GB inputs and still changes when a file is replaced, truncated or extended;
    mtimes are left out so a file rewritten with the same bytes keeps its digest.
    """
    h = hashlib.sha1()
    for name, f in files:
        size = f.stat().st_size
        h.update(f"{name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(edge))
            if size > edge:  # the last `edge` bytes, or all the rest of a file under 2 * edge
                fh.seek(max(edge, size - edge))
                h.update(fh.read())
    return h.hexdigest()


@contextmanager
def working_dir(path: str | os.PathLike) -> Iterator[None]:
    """Run a block inside a project folder: a project's params and stages name their files relative
    to it, as `dvc repro` runs them (contextlib.chdir needs Python 3.11; this package supports 3.10)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
