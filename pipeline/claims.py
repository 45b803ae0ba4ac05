"""Per-video claims: leases that let several processes share one feature store without doing a
video twice.

Why: N extraction processes on one store (one machine, several sharing a filesystem, or an object
store) must each take different videos. Before a video starts, a process takes its *lease*: a small
JSON document (owner = host + pid + random token, expiry time). A live lease means "someone works
on this"; others skip the video and come back to it later. The holder renews the lease while the
video runs (`LeaseKeeper`, a heartbeat thread) and releases it on success or failure. A holder that
died (kill -9, a preempted node) stops renewing; once its lease expires, anyone may take it over.

Layout: `<claims url>/<video_id>/<generation>.json`, generations `00000000`, `00000001`, ...
Taking a lease = *creating* the next generation's document, atomically and exclusively: of two
processes that both saw generation g expired, exactly one creates g + 1 and the other gets
`FileExistsError`. So the only primitive a backend needs is "create this key if it does not exist":

- local filesystem: the document is written to a temporary file and `os.link`ed to its name (link
  fails if the name exists; readers never see a half-written lease);
- object stores through fsspec: `pipe_file(path, data, mode="create")`. S3 needs a conditional PUT
  (`If-None-Match: *`, supported by S3 since 2024 and by s3fs's `mode="create"`); GCS uses
  `ifGenerationMatch=0`. A filesystem whose fsspec driver cannot do an exclusive create falls back
  to fsspec's check-then-write, which two processes can race: use such a store from one process.

A lease is also stale, before its expiry, when its owner ran on this host and that process no longer
exists (`os.kill(pid, 0)`): a run killed with kill -9 and started again on the same machine takes
its videos back at once instead of waiting out the TTL. This assumes host names are unique among the
processes sharing a store (true for machines, containers and pods by default); with two containers
that share a host name but not a process namespace, a live holder could be taken for dead, which
costs a duplicated extraction of that video, never a wrong one.

Renewal rewrites only the holder's own generation (nobody else writes that key), after checking
that no later generation exists (else the lease was taken over: `ClaimLost`). The wall clock
(`time.time()`, so hosts need roughly synchronised clocks; a TTL of minutes absorbs ordinary skew)
decides only *who* works on a video, never what is written: every process writes the same
deterministic features, and the store's own `complete` flag, not the lease, says a video is done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 600.0
_GEN = re.compile(r"^(\d{8})\.json$")


class ClaimLost(Exception):
    """The lease expired and another process took the video over (or the lease was deleted)."""


@dataclass(frozen=True)
class Lease:
    """One held claim: which video, which generation, who holds it, until when (unix seconds)."""

    video_id: str
    generation: int
    owner: str
    token: str
    expires: float

    def document(self) -> bytes:
        return json.dumps({"video_id": self.video_id, "generation": self.generation, "owner": self.owner,
                           "token": self.token, "expires": self.expires, "host": socket.gethostname(),
                           "pid": os.getpid()}, sort_keys=True).encode()


def default_owner() -> str:
    """host:pid, so a person reading a lease knows which process holds it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claims_url(store_url: str) -> str:
    """Where the claims of a store live: beside it (`<store>.zarr.claims`), so Zarr and xarray
    readers of the store never see them."""
    return f"{str(store_url).rstrip('/')}.claims"


def _dead_here(doc: dict) -> bool:
    """Whether the lease's process ran on this host and is gone (so it will never renew)."""
    pid = doc.get("pid")
    if doc.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return False


# ------------------------------------------------------------------------------------ backends


class _LocalBackend:
    """Exclusive create by `os.link` of a fully written temporary file."""

    def __init__(self, root: str):
        self.root = root

    def create(self, key: str, data: bytes) -> bool:
        path = os.path.join(self.root, key)
        for _ in range(5):  # the folder may be removed by a release in between: recreate and retry
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{secrets.token_hex(4)}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    return False
            except FileNotFoundError:
                continue
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return False

    def replace(self, key: str, data: bytes) -> None:
        path = os.path.join(self.root, key)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def read(self, key: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def names(self, folder: str) -> list[str]:
        try:
            return os.listdir(os.path.join(self.root, folder))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, key))

    def remove_folder(self, folder: str) -> None:
        """Remove an empty folder (another process may have just written into it: then keep it)."""
        try:
            os.rmdir(os.path.join(self.root, folder) if folder else self.root)
        except OSError:
            pass


class _FsspecBackend:
    """Exclusive create by `pipe_file(mode="create")` (a conditional PUT on S3/GCS)."""

    def __init__(self, url: str, storage_options: dict | None):
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def create(self, key: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(f"{self.root}/{key}", data, mode="create")
            return True
        except FileExistsError:
            return False

    def replace(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.root}/{key}", data)

    def read(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(f"{self.root}/{key}")
        except FileNotFoundError:
            return None

    def names(self, folder: str) -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/{folder}", detail=False)]
        except FileNotFoundError:
            return []

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(f"{self.root}/{key}")
        except FileNotFoundError:
            pass

    def remove_folder(self, folder: str) -> None:  # object stores have no folders to remove
        pass


# -------------------------------------------------------------------------------------- claims


class Claims:
    """The claims of one store. Thread-safe: every call is independent file/object I/O."""

    def __init__(self, url: str, ttl_s: float = DEFAULT_TTL_S, storage_options: dict | None = None,
                 owner: str | None = None):
        if ttl_s <= 0:
            raise ValueError(f"claim ttl_s must be > 0, got {ttl_s}")
        self.url = str(url)
        self.ttl_s = float(ttl_s)
        self.owner = owner or default_owner()
        remote = "://" in self.url and not self.url.startswith("file://")
        self._backend = (_FsspecBackend(self.url, storage_options) if remote
                         else _LocalBackend(self.url[len("file://"):] if self.url.startswith("file://") else self.url))

    def _generations(self, video_id: str) -> list[int]:
        return sorted(int(m.group(1)) for n in self._backend.names(video_id) if (m := _GEN.match(n)))

    def _read(self, video_id: str, generation: int) -> dict | None:
        raw = self._backend.read(f"{video_id}/{generation:08d}.json")
        try:
            doc = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def holder(self, video_id: str, now: float | None = None) -> dict | None:
        """The live lease on a video (its document), or None when it is free or the lease expired."""
        gens = self._generations(video_id)
        if not gens:
            return None
        doc = self._read(video_id, gens[-1])
        now = time.time() if now is None else now
        if doc is None or not isinstance(doc.get("expires"), (int, float)) or doc["expires"] <= now:
            return None  # expired, or unreadable (garbage never blocks a video forever)
        if _dead_here(doc):
            return None  # its process died on this host: it will never renew
        return doc

    def acquire(self, video_id: str) -> Lease | None:
        """Take the video's lease, or None when another process holds a live one (or just took it)."""
        gens = self._generations(video_id)
        if gens and self.holder(video_id) is not None:
            return None
        generation = gens[-1] + 1 if gens else 0
        lease = Lease(video_id, generation, self.owner, secrets.token_hex(8), time.time() + self.ttl_s)
        if not self._backend.create(f"{video_id}/{generation:08d}.json", lease.document()):
            return None  # another process created this generation first
        if gens:
            log.info("claims: took over the stale lease on %s (generation %d)", video_id, gens[-1])
        for old in gens:  # expired generations: nobody renews them any more
            self._backend.delete(f"{video_id}/{old:08d}.json")
        return lease

    def renew(self, lease: Lease) -> Lease:
        """Extend a held lease by ttl_s; ClaimLost if it was taken over or removed meanwhile."""
        gens = self._generations(lease.video_id)
        doc = self._read(lease.video_id, lease.generation)
        if not gens or gens[-1] != lease.generation or doc is None or doc.get("token") != lease.token:
            raise ClaimLost(f"{self.url}: lease on {lease.video_id!r} (generation {lease.generation}) "
                            "was taken over by another process")
        renewed = replace(lease, expires=time.time() + self.ttl_s)
        self._backend.replace(f"{lease.video_id}/{lease.generation:08d}.json", renewed.document())
        return renewed

    def release(self, lease: Lease) -> None:
        """Give a lease back (after success or failure); a lease taken over meanwhile is left alone."""
        doc = self._read(lease.video_id, lease.generation)
        if doc is not None and doc.get("token") == lease.token:
            self._backend.delete(f"{lease.video_id}/{lease.generation:08d}.json")
            self._backend.remove_folder(lease.video_id)

    def close(self) -> None:
        """Remove the claims folder when no claim is left in it (end of a run)."""
        self._backend.remove_folder("")


class LeaseKeeper:
    """A heartbeat thread that renews every lease it holds each ttl_s / 3 seconds.

    Why a thread: a long video (18k frames) runs for longer than any sensible TTL, and the model's
    thread must not have to remember to renew. A lease that could not be renewed (taken over after
    this process stalled past its expiry) is reported by `lost()`, so the caller does not write
    a video someone else now owns.
    """

    def __init__(self, claims: Claims, interval_s: float | None = None):
        self.claims = claims
        self.interval_s = interval_s if interval_s is not None else claims.ttl_s / 3
        self._held: dict[str, Lease] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        """Stop the heartbeat and give back every lease still held (a run stopped by an exception
        or Ctrl-C must not make other processes wait for its leases to expire)."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        for lease in held:
            try:
                self.claims.release(lease)
            except OSError as e:
                log.warning("claims: releasing %s failed (%s); it expires by itself", lease.video_id, e)

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._held[lease.video_id] = lease

    def lost(self, video_id: str) -> bool:
        with self._lock:
            return video_id in self._lost

    def release(self, video_id: str) -> None:
        """Stop renewing and give the lease back."""
        with self._lock:
            lease = self._held.pop(video_id, None)
            self._lost.discard(video_id)
        if lease is not None:
            self.claims.release(lease)

    def renew_all(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for lease in held:
            try:
                renewed = self.claims.renew(lease)
            except ClaimLost as e:
                log.warning("%s", e)
                with self._lock:
                    if self._held.get(lease.video_id) is lease:
                        del self._held[lease.video_id]
                        self._lost.add(lease.video_id)
                continue
            except OSError as e:  # a flaky filesystem: try again at the next beat, the TTL has slack
                log.warning("claims: renewing %s failed (%s); retrying", lease.video_id, e)
                continue
            with self._lock:
                if self._held.get(lease.video_id) is lease:
                    self._held[lease.video_id] = renewed

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.renew_all()
