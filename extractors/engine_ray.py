"""The Ray engine: the same per-video unit as the local engine, run by a pool of Ray actors.

What stays as in the local engine (`extractors.base.run_extraction`): the store (one per extractor
fingerprint, created by the driver), the per-video claims (`pipeline.claims`), `todo()` skipping
complete videos, the failure records and `<store>.failures.json`. What changes: each video is
decoded, encoded and written by one actor, which loads the model once and keeps it for every video
it is given.

Why Ray Core actors and not Ray Data `map_batches`: the unit of work is a whole video, written by
the worker straight into the shared store, so nothing but a small `Video` record and a status ever
crosses the object store. With Ray Data the decoded frames would be the blocks (a 720p video
decodes to ~50x its file size), which is what makes users see spilling; and Ray Data's retries are
per block, while a video must be retried whole.

Why the driver holds the leases, not the actors: a killed actor cannot release its lease, and
another driver must not take the video over while this driver is retrying it on a fresh actor. The
driver's heartbeat (`LeaseKeeper`) keeps the lease alive through the retry; other drivers (on other
machines, or a local-engine run on the same store) skip the video while it is leased.

A worker needs only the extractor class, its config (a picklable dataclass), the video record and
the store URL: the extractor class is pickled by reference, so its module must be importable on
every node (it is, for the built-in extractors, once affcache is installed there).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from extractors.base import (
    Extractor,
    ExtractorError,
    RunReport,
    _claim,
    _progress_bar,
    _record,
    extract_one,
    finish_run,
    open_store,
    picture_skips,
    settle_waiting,
)
from pipeline.claims import DEFAULT_TTL_S, Claims, LeaseKeeper, claims_url
from pipeline.records import Video

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray>=2.40')"


@dataclass
class RayConfig:
    """`extract.<modality>.ray`: where the cluster is and how the actor pool is shaped.

    address: empty starts a local Ray on this machine; `host:port` joins a running cluster (its GCS
        port, as `ray start --head` prints); `ray://host:port` uses Ray Client. `auto` joins the
        cluster this machine belongs to.
    actors: how many actors (each holds one model) run videos at once.
    cpus_per_actor / gpus_per_actor: Ray resources per actor; on a GPU node `gpus_per_actor: 1` gives
        each actor its own GPU (Ray sets CUDA_VISIBLE_DEVICES, so `device: auto` picks it). The pool
        must fit the cluster (checked before any video: actors that cannot be placed would wait forever).
    threads_per_actor: torch threads in each actor (0: `cpus_per_actor`, at least one). CPU kernels sum
        in an order that depends on the thread count, so a store is bit-identical to the local
        engine's when this equals the local process's thread count (the machine's cores), and equal
        to the last float16 bit otherwise.
    retries: how often a video is given to a fresh actor after its actor died (killed, out of memory,
        node lost) before it is recorded as failed. A Python exception is a failure at once, as in the
        local engine: it would fail again.
    connect_timeout_s: how long to try reaching `address` before the run stops, before any video.
    """

    address: str = ""
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads_per_actor: int = 0
    retries: int = 2
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"ray.actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("ray.cpus_per_actor and ray.gpus_per_actor must be >= 0")
        if self.threads_per_actor < 0:
            raise ValueError(f"ray.threads_per_actor must be >= 0, got {self.threads_per_actor}")
        if self.retries < 0:
            raise ValueError(f"ray.retries must be >= 0, got {self.retries}")


# ------------------------------------------------------------------------------------ connecting


def import_ray() -> Any:
    """`ray`, or an ExtractorError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ExtractorError(f"the ray engine needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit address, None for the ones Ray resolves itself (`auto`, '')."""
    if address in ("", "auto", "local"):
        return None
    bare = address.split("://", 1)[-1]
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        raise ExtractorError(f"ray.address {address!r}: expected host:port or ray://host:port "
                             "(empty starts a local Ray)")
    return host, int(port)


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast on an address nobody listens on: `ray.init` itself retries for minutes."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        raise ExtractorError(f"ray.address {address!r}: cannot reach the Ray cluster ({exc}); start it with "
                             "`ray start --head` on that machine, or leave ray.address empty for a local Ray") from exc


def connect(cfg: RayConfig) -> Any:
    """Join (or start) the cluster once per process; returns the `ray` module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    check_reachable(cfg.address, cfg.connect_timeout_s)
    kwargs: dict[str, Any] = {"log_to_driver": True, "include_dashboard": False}
    if cfg.address:
        kwargs["address"] = cfg.address
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types here; all mean "no cluster"
        raise ExtractorError(f"ray.address {cfg.address or '(local)'}: Ray did not start or connect ({exc})") from exc
    return ray


# ------------------------------------------------------------------------------------ the actor


class VideoWorker:
    """One actor: builds the extractor from its class and config, loads the model once, opens the
    store by URL, then extracts whatever video it is handed."""

    def __init__(self, extractor_cls: type, cfg: Any, store_url: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        from pipeline.store import FeatureStore

        self.extractor: Extractor = extractor_cls(cfg)
        self.extractor.load()
        self.store = FeatureStore.open(store_url)

    def ready(self) -> int:
        """The actor's process id, once its model is loaded (a load error surfaces here)."""
        return os.getpid()

    def extract(self, video: Video) -> str:
        extract_one(self.extractor, video, self.store)
        return video.video_id


def _worker_class(ray: Any, cfg: RayConfig) -> Any:
    return ray.remote(num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor, max_restarts=0,
                      max_task_retries=0)(VideoWorker)


# ------------------------------------------------------------------------------------ the driver


def run_extraction_ray(extractor: Extractor, videos: Sequence[Video], store_root: str, cfg: RayConfig, *,
                       progress: bool = True, claim_ttl_s: float = DEFAULT_TTL_S,
                       poll_s: float | None = None) -> RunReport:
    """Extract every video that is not cached with a pool of `cfg.actors` Ray actors.

    Returns the same RunReport as the local engine. A video whose actor died is retried on a fresh
    actor up to `cfg.retries` times; an extractor exception is recorded as the video's failure.
    """
    ray = connect(cfg)
    store = open_store(extractor, store_root)
    videos, no_pictures = picture_skips(extractor, videos)
    todo = store.todo(list(videos), source=extractor.source)
    todo_ids = {v.video_id for v in todo}
    report = RunReport(skipped=[v.video_id for v in videos if v.video_id not in todo_ids], url=store.url,
                       no_pictures=no_pictures)
    log.info("%s/%s (ray, %d actor(s)): %d to extract, %d cached (%s)", extractor.modality, extractor.name,
             cfg.actors, len(todo), len(report.skipped), store.url)
    claims = Claims(claims_url(store.url), ttl_s=claim_ttl_s)
    poll = poll_s if poll_s is not None else min(5.0, claim_ttl_s / 10)
    worker_cls = _worker_class(ray, cfg)
    threads = cfg.threads_per_actor or max(1, int(cfg.cpus_per_actor))
    if todo:
        check_fits(ray, cfg, min(cfg.actors, len(todo)))

    def new_actor() -> Any:
        return worker_cls.remote(type(extractor), extractor.cfg, store.url, threads)

    bar = _progress_bar(len(todo), f"{extractor.modality}:{extractor.name} (ray)", progress)
    remaining: deque[Video] = deque(todo)
    waiting: list[Video] = []
    attempts: dict[str, int] = {}
    with LeaseKeeper(claims) as keeper:
        actors = _start_actors(ray, new_actor, min(cfg.actors, max(1, len(todo))), extractor) if todo else []
        idle = list(actors)
        running: dict[Any, tuple[Video, Any]] = {}  # task ref -> (video, actor)

        def dispatch() -> None:
            while idle and remaining:
                video = remaining.popleft()
                if not _claim(claims, keeper, store, extractor, video):
                    if store.todo([video], source=extractor.source):
                        waiting.append(video)
                    else:
                        report.others.append(video.video_id)
                        bar.update(1)
                    continue
                actor = idle.pop()
                running[actor.extract.remote(video)] = (video, actor)

        while True:
            dispatch()
            if not running:
                if not waiting:
                    break
                time.sleep(poll)  # every video left is leased by another process: look again later
                remaining.extend(settle_waiting(store, extractor, waiting, report, bar))
                continue
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            video, actor = running.pop(ref)
            try:
                ray.get(ref)
                report.done.append(video.video_id)
            except ray.exceptions.RayActorError as exc:
                attempts[video.video_id] = attempts.get(video.video_id, 0) + 1
                actor = new_actor()  # the dead actor's replacement loads its own model
                if attempts[video.video_id] <= cfg.retries:
                    log.warning("%s: the actor running %s died (%s); retrying on a fresh actor (%d of %d)",
                                extractor.name, video.video_id, _first_line(exc), attempts[video.video_id],
                                cfg.retries)
                    running[actor.extract.remote(video)] = (video, actor)
                    continue
                _record(report, extractor, video, RuntimeError(f"the actor died {attempts[video.video_id]} "
                                                               f"time(s) on this video: {_first_line(exc)}"))
            except ray.exceptions.RayTaskError as exc:
                _record(report, extractor, video, exc.cause if exc.cause is not None else exc)
            keeper.release(video.video_id)
            idle.append(actor)
            bar.update(1)
        for actor in actors + idle:
            ray.kill(actor, no_restart=True)
    bar.close()
    finish_run(store, store_root, extractor, claims, report)
    return report


def check_fits(ray: Any, cfg: RayConfig, actors: int) -> None:
    """The pool must fit what the cluster has now: Ray would otherwise keep the extra actors pending
    (and this run waiting) until resources appear."""
    have = ray.cluster_resources()
    for resource, per_actor in (("CPU", cfg.cpus_per_actor), ("GPU", cfg.gpus_per_actor)):
        need = per_actor * actors
        if need > have.get(resource, 0.0) + 1e-9:
            raise ExtractorError(f"ray: {actors} actor(s) x {per_actor:g} {resource} need {need:g} {resource}, the "
                                 f"cluster has {have.get(resource, 0.0):g}; lower extract.<modality>.ray.actors or "
                                 f"{resource.lower()}s_per_actor, or add nodes")


def _start_actors(ray: Any, new_actor, count: int, extractor: Extractor) -> list[Any]:
    """Start the pool and wait until every actor has loaded its model: a bad model id or weights
    file fails here, before any video (as `load()` does in the local engine)."""
    actors = [new_actor() for _ in range(count)]
    try:
        ray.get([a.ready.remote() for a in actors])
    except ray.exceptions.RayActorError as exc:
        cause = getattr(exc, "cause", None) or exc
        for a in actors:
            ray.kill(a, no_restart=True)
        raise ExtractorError(f"{extractor.name}: a Ray actor could not load the model: {_first_line(cause)}") from exc
    return actors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
