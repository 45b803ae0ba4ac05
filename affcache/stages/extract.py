"""Stages `extract_<modality>`: run one extractor over the index into its feature store.

params `extract.<modality>`: `extractor` (registry name), `workers`/`prefetch` (decode threads and
how many videos they run ahead of the model), `keep_old_stores`, `engine` (`local`, or `ray`: an actor
pool shaped by the `ray` block, `extractors.engine_ray.RayConfig`), `weights` (the local file or folder
holding the encoder's weights: a DVC dep of the stage, see `check_weights`), and `config` (the
extractor's config dataclass, checked strictly before any video is touched).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.config import Params, ParamsError, build_config, load_params
from affcache.project_extractors import build_extractor
from affcache.stages import Layout, StageFailed, read_videos

log = logging.getLogger(__name__)


WEIGHT_FIELDS = ("weights", "model", "ssl_weights")


def hub_cache_name(repo_id: str) -> str:
    """The folder the Hugging Face cache keeps a Hub repository in (`org/name` -> `models--org--name`)."""
    return "models--" + repo_id.replace("/", "--")


def check_weights(params: Params, modality: str, cfg: Any) -> None:
    """`extract.<modality>.weights` must hold the weights the extractor loads.

    Why: it is the DVC dep that re-runs the extraction when a weights file is replaced (dvc.yaml lists
    `${extract.<modality>.weights}`); if the config loaded weights from somewhere else, DVC would call a
    stale store up to date. A config field that names a local file or folder must lie inside it; a
    field that names a Hub id (pinned by that id and its `revision` in params) may be covered by
    pointing `weights` at its Hugging Face cache folder (`<HF_HOME>/hub/models--org--name`). At least
    one of the config's weights sources must be covered.
    """
    sources = {f: str(getattr(cfg, f)) for f in WEIGHT_FIELDS if isinstance(getattr(cfg, f, None), str)}
    backbone = getattr(cfg, "backbone", None)
    if isinstance(backbone, str) and backbone.startswith("hf:"):  # the face extractor's Hub backbones
        sources["backbone"] = backbone[3:]
    if not sources:
        return
    key = f"extract.{modality}.weights"
    declared = params.get(key)
    if not declared:
        raise ParamsError(f"{params.path}: {key} is not set; name the file or folder that holds "
                          f"{', '.join(f'config.{f} ({v})' for f, v in sources.items())} so DVC re-runs "
                          "this extraction when the weights change")
    root = Path(str(declared)).resolve()

    def inside(p: Path) -> bool:
        return p == root or root in p.parents

    covered = []
    for field, value in sources.items():
        local = Path(value)
        if local.exists():
            if not inside(local.resolve()):
                raise ParamsError(f"{params.path}: {modality} config.{field} ({value}) is not inside {key} "
                                  f"({declared}): DVC would not see a change of these weights; point {key} "
                                  "at the file or a folder that holds it")
            covered.append(field)
        elif hub_cache_name(value) in root.parts:
            check_hub_cache(params, key, declared, Path(*root.parts[:root.parts.index(hub_cache_name(value))]))
            covered.append(field)
    if not covered:
        raise ParamsError(f"{params.path}: {key} ({declared}) holds none of the weights the {modality} extractor "
                          f"loads ({', '.join(f'config.{f} = {v}' for f, v in sources.items())}); for a Hub id "
                          "point it at the id's Hugging Face cache folder (.../hub/models--org--name), "
                          "see the README (weights as DVC deps)")


def check_hub_cache(params: Params, key: str, declared: Any, hub: Path) -> None:
    """The Hugging Face cache `key` points into (`hub`, the folder of `models--org--name`) must be the
    one this process loads from, or DVC would watch one copy of the weights while the extractor
    reads (or downloads) another: HF_HOME has to stay set while `dvc repro` runs, not only for
    the download."""
    from huggingface_hub import constants

    used = Path(constants.HF_HUB_CACHE).resolve()
    if hub.resolve() != used:
        home = hub.parent if hub.name == "hub" else hub
        raise ParamsError(f"{params.path}: {key} ({declared}) is in the Hugging Face cache {hub}, but this process "
                          f"loads models from {used}; set HF_HOME={home} (export it in the shell that runs "
                          "dvc repro, e.g. `export HF_HOME=$PWD/models/hf`), or point the weights at that cache")


def run(params_path: Path, modality: str, device: str | None = None, video_ids: list[str] | None = None,
        engine: str | None = None) -> None:
    """Extract every indexed video (or only `video_ids`); `device` overrides the config's device,
    `engine` the params' `extract.<modality>.engine`."""
    from extractors.base import ExtractorError, run_extraction

    params = load_params(params_path)
    layout = Layout.from_params(params)
    reason = untrained_weights(params, modality)
    if reason:
        not_applicable_store(layout, modality, reason)
        return
    extractor = build_extractor(params, modality, {"device": device} if device else None)
    check_weights(params, modality, extractor.cfg)
    videos = select_videos(read_videos(params, layout, crops=True), video_ids, layout.index)
    engine = engine or params.get(f"extract.{modality}.engine", "local")
    try:
        if engine == "ray":
            from extractors.engine_ray import RayConfig, run_extraction_ray

            ray_cfg = build_config(RayConfig, params.get(f"extract.{modality}.ray") or {},
                                   where=f"{params.path}: extract.{modality}.ray")
            report = run_extraction_ray(extractor, videos, str(layout.features), ray_cfg)
        else:
            report = run_extraction(
                extractor,
                videos,
                str(layout.features),
                workers=int(params.get(f"extract.{modality}.workers", 2)),
                prefetch=int(params.get(f"extract.{modality}.prefetch", 2)),
            )
    except ExtractorError as exc:
        raise StageFailed(f"extract {modality}: {exc}") from exc
    from pipeline.store import prune_stores

    if not params.get(f"extract.{modality}.keep_old_stores", False):
        for removed in prune_stores(str(layout.feature_dir(modality)), keep=report.url):
            log.info("removed store of an older configuration: %s (still in the DVC cache)", removed)
    others = f", {len(report.others)} extracted by other processes" if report.others else ""
    others += f", {len(report.no_pictures)} audio-only skipped (no pictures)" if report.no_pictures else ""
    log.info("extract %s: %d extracted, %d cached, %d failed%s -> %s", modality, len(report.done),
             len(report.skipped), len(report.failed), others, report.url)
    if report.failed:
        lines = "\n".join(f"  {f['video_id']} ({f['file']}): {f['error']}" for f in report.failed)
        raise StageFailed(f"extract {modality}: {len(report.failed)} video(s) failed; the others are cached "
                          f"and a re-run retries only these:\n{lines}")


def untrained_weights(params: Params, modality: str) -> str | None:
    """Why `modality`'s weights were never trained: its weights folder (`extract.<modality>.weights`,
    e.g. a `train_static_<name>` stage's output) holds a "not applicable" marker; None otherwise."""
    from affcache.stages.applicable import not_applicable

    declared = params.get(f"extract.{modality}.weights")
    return not_applicable(Path(str(declared))) if declared and Path(str(declared)).is_dir() else None


def not_applicable_store(layout: Layout, modality: str, reason: str) -> None:
    """The extraction of a modality whose encoder was not trained (see `untrained_weights`): the
    models that read it are not applicable for the same reason (affcache.stages.applicable), so its
    features folder holds the marker instead of a store."""
    from affcache.stages.applicable import write_marker

    folder = layout.feature_dir(modality)
    if isinstance(folder, Path):
        write_marker(folder, modality, reason)
    log.warning("extract %s: not applicable, nothing extracted: %s", modality, reason)


def select_videos(videos: list, video_ids: list[str] | None, index_path: Path) -> list:
    """All videos, or the requested ids in index order; an unknown id is an error naming the index."""
    if not video_ids:
        return videos
    known = {v.video_id for v in videos}
    unknown = [v for v in video_ids if v not in known]
    if unknown:
        sample = ", ".join(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
        raise ParamsError(f"--videos: {', '.join(unknown)} not in {index_path} (its ids: {sample})")
    wanted = set(video_ids)
    return [v for v in videos if v.video_id in wanted]
