"""The extraction engine shared by every extractor (face, audio, behavior, reliability).

Why it looks like this:
- **The unit of work is one video.** An extractor is built from a small picklable config, so any
  engine (this local one, or a future Ray actor pool) constructs it inside its own process and runs
  `prepare -> compute -> write_video` per video. `extract_one` is that unit; `run_extraction` is the
  local engine that overlaps the units.
- **Decode overlaps inference.** `prepare()` (I/O, decoding, resizing: mostly C code that releases the
  GIL) runs `prefetch` videos ahead in a thread pool, while the main thread runs `compute()` (the model)
  and writes the result. Extractors whose inputs are too big to hold for a whole video return a
  `BackgroundStream` from `prepare()`, so memory stays bounded by a few batches.
- **One bad video never poisons a run.** Any exception raised for one video is recorded (video id, file,
  message) in `<store_root>/<modality>/<name>.failures.json`, logged, and the other videos continue; the
  caller (a stage) exits non-zero when `RunReport.failed` is not empty. Config/model problems are
  `ExtractorError`s raised by `load()` before any video is touched.
- **Shared identity and memoising.** `weights_fingerprint` names a local checkpoint by content (so
  a store follows its weights, not its path), and `MediaCache` lets `_left`/`_right` ids that share
  one media file share one model pass; both are used by several extractors, hence here.
- **Incremental.** The store is keyed by the extractor fingerprint (`store_url`), and `todo()` skips
  videos whose group is complete and whose source fingerprint is unchanged, so a re-run is a no-op and a
  crashed run resumes where it stopped.
- **Several processes share one store.** Before a video starts, the engine takes its lease
  (`pipeline.claims`: owner, expiry, renewed by a heartbeat while the video runs, released on success
  or failure, taken over once expired). Videos leased by live processes are left to them; when only
  those remain, the engine polls until each is complete (or its lease is released or expires, then
  it extracts the video itself), so every process ends with the whole store complete. After taking
  a lease it checks the store again, so a video finished meanwhile is not extracted twice.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import traceback
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from extractors.registry import REGISTRY, ExtractorError, get_extractor, register  # noqa: F401 - plug-ins import these here
from pipeline.claims import DEFAULT_TTL_S, Claims, LeaseKeeper, claims_url
from pipeline.files import sampled_digest
from pipeline.progress import logs_above_bars, unit_scope
from pipeline.records import Video

log = logging.getLogger(__name__)


class VideoError(Exception):
    """One video's problem (missing crops folder, undecodable file, ...): recorded, others continue."""


@runtime_checkable
class Extractor(Protocol):
    """What every extractor provides; see the module docstring for the life cycle."""

    name: str
    modality: str

    def fingerprint(self) -> dict: ...

    def load(self) -> None: ...

    def prepare(self, video: Video) -> Any: ...

    def compute(self, video: Video, prepared: Any) -> dict[str, np.ndarray]: ...

    def source(self, video: Video) -> str | tuple[str, ...]:
        """The file/folder (or several) whose content the video's arrays depend on: it keys the
        video's cache entry (`pipeline.store.source_fingerprint`)."""
        ...


def looks_like_local_path(model: str) -> bool:
    """Whether `model` names a folder rather than a hub id (`org/name`): an absolute or explicitly
    relative path, more than two segments, or a first segment that exists here."""
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        return True
    return "/" in model and Path(model.split("/")[0]).is_dir()


def hf_load_error(kind: str, model: str, revision: str | None, err: Exception, local_example: str) -> str:
    """The message for a Hugging Face checkpoint that cannot be loaded: what failed, how to run offline."""
    if looks_like_local_path(model) and not Path(model).expanduser().exists():
        return (f"{kind} model {model!r}: folder not found (relative to {Path.cwd()}); write it with "
                f"save_pretrained ({local_example}), or set `model` to a Hugging Face hub id")
    first = str(err).splitlines()[0] if str(err) else ""
    return (
        f"{kind} model {model!r} (revision {revision or 'default'}) could not be loaded: "
        f"{type(err).__name__}: {first}. Offline (HF_HUB_OFFLINE=1) a hub id must already be in the HF "
        "cache (download it once with `huggingface-cli download <id>` where there is internet, or copy "
        f"~/.cache/huggingface), or set `model` to a local folder written by save_pretrained ({local_example})."
    )


# ------------------------------------------------------------------------------------ torch helpers
def torch_device(pref: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch.device.

    Asking for cuda on a machine without it is a config error, reported before any work starts.
    """
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError as e:
        raise ExtractorError(f"bad device {pref!r}: {e}. Use 'auto', 'cpu' or 'cuda[:N]'.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExtractorError(f"device {pref!r} requested but CUDA is not available; use device 'auto' or 'cpu'")
    return dev


def autocast_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA only: on CPU bf16 matmuls are slow on most chips and change the numbers."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def inference(device: torch.device, bf16: bool) -> Iterator[None]:
    """`torch.inference_mode()` + `autocast_context`: the context every compute() runs its model in."""
    with torch.inference_mode(), autocast_context(device, bf16):
        yield


# ------------------------------------------------------------------------- identity and memoising
def weights_fingerprint(model: str) -> dict | None:
    """Content fingerprint of a local checkpoint (file or folder), None for a hub id (its revision
    identifies it). Hashes names, sizes and the first/last MiB of each file but not mtimes, so a demo
    checkpoint rewritten with the same seed keeps its fingerprint and the cache stays valid."""
    root = Path(model)
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    named = [(str(f.relative_to(root)) if f != root else f.name, f) for f in files]
    return {"sha1": sampled_digest(named), "files": len(files)}


class MediaCache:
    """A small thread-safe LRU of computed store arrays keyed by `Video.media_key`.

    Why: `_left`/`_right` ids share one media file; for features of the whole file (audio, and the
    behavior VLM, which sees the whole frame as in the published pipeline) the second id must not
    pay for a second model pass. Hits return copies, so callers may modify their arrays.
    """

    def __init__(self, size: int):
        self.size = max(0, int(size))
        self._items: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return {k: v.copy() for k, v in hit.items()}

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._items[key] = {k: v.copy() for k, v in arrays.items()}
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


# ------------------------------------------------------------------------------ streaming helpers
_END = object()


class BackgroundStream:
    """Run a generator in a daemon thread and hand its items over through a bounded queue.

    Why: a long video's preprocessed frames do not fit in RAM (18k frames x 240x240x3 = 3 GB), so
    `prepare()` returns one of these instead of a list; the producer keeps `maxsize` batches ahead of
    the model, so decoding overlaps inference with bounded memory. Exceptions raised by the producer
    are re-raised in the consumer; `close()` (also on garbage collection of an abandoned stream) stops
    the producer.
    """

    def __init__(self, make_iter: Callable[[], Iterable[Any]], maxsize: int = 4, name: str = "prepare",
                 torch_threads: int | None = None):
        """torch_threads: intra-op threads for torch ops run by the producer (None = torch's default).
        Pass 1 when the model runs on the CPU: a producer's resize/normalise would otherwise start a
        second OpenMP team as wide as the machine, which pre-empts the model's team mid-operator and
        stalls it (torch's thread count is per thread under OpenMP, so the model keeps its own)."""
        self._q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._stop = threading.Event()
        self._torch_threads = torch_threads
        self._thread = threading.Thread(target=self._run, args=(make_iter,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make_iter: Callable[[], Iterable[Any]]) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        try:
            for item in make_iter():
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            self._put(e)

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self._q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()

    def __del__(self) -> None:  # an abandoned stream must not keep its producer blocked forever
        self._stop.set()


# ------------------------------------------------------------------------------------------ engine
@dataclass
class RunReport:
    """What a run did. `failed` items are `{video_id, file, error}`; a stage exits non-zero if any."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    url: str = ""  # the store written (addition to the contract: the stage logs/prunes with it)
    others: list[str] = field(default_factory=list)  # extracted by another process during this run
    no_pictures: list[str] = field(default_factory=list)  # audio-only videos an extractor of pictures skipped

    @property
    def ok(self) -> bool:
        return not self.failed


def picture_skips(extractor: Extractor, videos: Sequence[Video]) -> tuple[list[Video], list[str]]:
    """(the videos `extractor` runs on, the ids it skips): an extractor that needs pictures
    (`@register(..., video=True)`, the default) skips audio-only media (`Video.has_video` False) with
    one logged note. Not an error: the store records nothing for them, and the heads treat the
    modality as missing for those videos, as for a video without an audio track."""
    if not getattr(extractor, "needs_video", True):
        return list(videos), []
    skipped = [v.video_id for v in videos if not getattr(v, "has_video", True)]
    if skipped:
        shown = ", ".join(skipped[:5]) + (f", ... {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.info("%s/%s needs pictures: skipping %d audio-only video(s) (%s); nothing is stored for them",
                 extractor.modality, extractor.name, len(skipped), shown)
    return [v for v in videos if getattr(v, "has_video", True)], skipped


def failures_path(store_root: str, modality: str, name: str) -> str:
    return f"{str(store_root).rstrip('/')}/{modality}/{name}.failures.json"


def _failure(extractor: Extractor, video: Video, exc: BaseException) -> dict:
    try:
        file = extractor.source(video)
        file = ", ".join(map(str, file)) if isinstance(file, (list, tuple)) else file
    except Exception:  # noqa: BLE001 - the record must never fail
        file = video.media_path
    msg = f"{type(exc).__name__}: {exc}"
    return {"video_id": video.video_id, "file": str(file), "error": msg}


def _prepare_with_source(extractor: Extractor, video: Video) -> tuple[Any, dict]:
    """Worker-thread part: fingerprint the source *before* reading it (a file changed mid-read is
    then seen as changed by the next run), then prepare."""
    from pipeline.store import source_fingerprint

    try:
        src = source_fingerprint(extractor.source(video))
    except Exception:
        prepared = extractor.prepare(video)  # usually raises the extractor's own, more specific error
        if hasattr(prepared, "close"):
            prepared.close()
        raise
    return extractor.prepare(video), src


def extract_one(extractor: Extractor, video: Video, store: Any, claims: Claims | None = None) -> bool:
    """The engine-independent unit: prepare, compute and write one video (no overlap).

    A remote engine (Ray actor) calls this with an extractor built from its config, after `load()`.
    With `claims`, the video's lease is taken first (renewed while it runs, released at the end):
    returns False without work when another process holds it or the video is already complete.
    """
    if claims is None:
        prepared, src = _prepare_with_source(extractor, video)
        _compute_and_write(extractor, video, prepared, src, store)
        return True
    with LeaseKeeper(claims) as keeper:
        if not _claim(claims, keeper, store, extractor, video):
            return False
        try:
            prepared, src = _prepare_with_source(extractor, video)
            return _compute_and_write(extractor, video, prepared, src, store, keeper)
        finally:
            keeper.release(video.video_id)


def _claim(claims: Claims, keeper: LeaseKeeper, store: Any, extractor: Extractor, video: Video) -> bool:
    """Take the video's lease if it is free and the video still needs work (the check after the
    lease: another process may have completed it between our todo and our claim)."""
    lease = claims.acquire(video.video_id)
    if lease is None:
        return False
    keeper.add(lease)
    if not store.todo([video], source=extractor.source):
        keeper.release(video.video_id)
        return False
    return True


def _compute_and_write(extractor: Extractor, video: Video, prepared: Any, src: dict, store: Any,
                       keeper: LeaseKeeper | None = None) -> bool:
    """Compute and write one video; False (nothing written) when its lease was lost meanwhile: the
    process that took it over writes the video instead."""
    try:
        arrays = extractor.compute(video, prepared)
    finally:
        if isinstance(prepared, BackgroundStream):
            prepared.close()
        elif hasattr(prepared, "close") and callable(prepared.close):
            prepared.close()
    if keeper is not None and keeper.lost(video.video_id):
        log.warning("%s: %s was taken over by another process while it ran; not written here",
                    extractor.name, video.video_id)
        return False
    store.write_video(video.video_id, arrays, attrs={"extractor": extractor.name}, source=src)
    return True


def open_store(extractor: Extractor, store_root: str) -> Any:
    """Create/open the store for this extractor's fingerprint and mark it current for its modality."""
    from pipeline.store import FeatureStore, store_url, write_current

    fp = extractor.fingerprint()
    url = store_url(store_root, extractor.modality, extractor.name, fp)
    store = FeatureStore.create(url, extractor=extractor.name, fingerprint=fp)
    write_current(f"{str(store_root).rstrip('/')}/{extractor.modality}", url)
    return store


def run_extraction(
    extractor: Extractor,
    videos: Sequence[Video],
    store_root: str,
    *,
    workers: int = 2,
    prefetch: int = 2,
    progress: bool = True,
    claim_ttl_s: float = DEFAULT_TTL_S,
    poll_s: float | None = None,
) -> RunReport:
    """Extract every video that is not already cached; see the module docstring for the guarantees.

    claim_ttl_s: how long a lease lives without renewal (renewed every third of it), so how long
    other processes wait for a video whose process died. poll_s: how often, when every remaining
    video is leased by other processes, to look again (default: a tenth of the TTL, at most 5 s).
    """
    extractor.load()  # a bad model id / weights file fails here, before any video
    store = open_store(extractor, store_root)
    videos, no_pictures = picture_skips(extractor, videos)
    todo = store.todo(list(videos), source=extractor.source)
    todo_ids = {v.video_id for v in todo}
    report = RunReport(skipped=[v.video_id for v in videos if v.video_id not in todo_ids], url=store.url,
                       no_pictures=no_pictures)
    log.info("%s/%s: %d to extract, %d cached (%s)", extractor.modality, extractor.name, len(todo),
             len(report.skipped), store.url)
    claims = Claims(claims_url(store.url), ttl_s=claim_ttl_s)
    poll = poll_s if poll_s is not None else min(5.0, claim_ttl_s / 10)

    bar = _progress_bar(len(todo), f"{extractor.modality}:{extractor.name}", progress)
    pending: deque[tuple[Video, Future]] = deque()
    remaining: deque[Video] = deque(todo)
    waiting: list[Video] = []  # leased by other live processes: looked at again later
    # prepare threads run their torch ops (resampling, VAD, resizing) single-threaded: each would
    # otherwise start an OpenMP team as wide as the machine, pre-empting the model's team on the CPU
    # (measured: demo audio on 2 cores, engine/naive 0.80x without this); several of them still
    # work in parallel, one video each
    with logs_above_bars(), LeaseKeeper(claims) as keeper, ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="prepare",
            initializer=torch.set_num_threads, initargs=(1,)) as pool:

        def refill() -> None:
            while len(pending) < max(1, prefetch) and remaining:
                v = remaining.popleft()
                try:
                    claimed = _claim(claims, keeper, store, extractor, v)
                except OSError as e:  # a claims folder we cannot write: a video error, like any other
                    _record(report, extractor, v, e)
                    bar.update(1)
                    continue
                if claimed:
                    pending.append((v, pool.submit(_prepare_with_source, extractor, v)))
                elif store.todo([v], source=extractor.source):
                    waiting.append(v)
                else:
                    report.others.append(v.video_id)
                    bar.update(1)

        while True:
            refill()
            if not pending:
                if not waiting:
                    break
                # every video left is leased by a live process: wait for them (no busy loop), then
                # take over what was released or expired, and count what they completed
                time.sleep(poll)
                remaining.extend(settle_waiting(store, extractor, waiting, report, bar))
                continue
            video, fut = pending.popleft()
            refill()  # keep `prefetch` videos decoding while this one computes
            try:
                prepared, src = fut.result()
                with unit_scope(video.video_id, progress):  # the extractor's bar within the video
                    written = _compute_and_write(extractor, video, prepared, src, store, keeper)
                if written:
                    report.done.append(video.video_id)
                else:
                    report.others.append(video.video_id)
            except Exception as e:  # noqa: BLE001 - one video must not stop the run
                _record(report, extractor, video, e)
            finally:
                keeper.release(video.video_id)
            bar.update(1)
    bar.close()
    finish_run(store, store_root, extractor, claims, report)
    if report.failed:
        log.error("%s: %d of %d videos failed; see %s", extractor.name, len(report.failed), len(todo),
                  failures_path(store_root, extractor.modality, extractor.name))
    return report


def settle_waiting(store: Any, extractor: Extractor, waiting: list[Video], report: RunReport, bar: Any) -> list[Video]:
    """After a wait: count the videos other processes completed meanwhile, return the rest (to be
    claimed again: released or expired leases are taken over), and empty `waiting`."""
    still = store.todo(waiting, source=extractor.source)
    still_ids = {v.video_id for v in still}
    for v in waiting:
        if v.video_id not in still_ids:
            report.others.append(v.video_id)
            bar.update(1)
    waiting.clear()
    return still


def finish_run(store: Any, store_root: str, extractor: Extractor, claims: Claims, report: RunReport) -> None:
    """The end of every engine's run: the claims folder tidied, failures recorded, metadata consolidated."""
    from pipeline.store import write_failures

    claims.close()
    write_failures(failures_path(store_root, extractor.modality, extractor.name), report.failed)
    store.consolidate()
    if report.others:
        log.info("%s: %d video(s) extracted by other processes on this store", extractor.name, len(report.others))


def _record(report: RunReport, extractor: Extractor, video: Video, exc: BaseException) -> None:
    rec = _failure(extractor, video, exc)
    report.failed.append(rec)
    log.error("%s: %s failed (%s): %s", extractor.name, video.video_id, rec["file"], rec["error"])
    log.debug("%s", traceback.format_exc())


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """The across-videos bar; each video's extractor adds its own bar within it (`inner_bar`)."""
    from pipeline.progress import progress_bar

    return progress_bar(enabled=enabled, total=total, desc=desc, unit="video")
