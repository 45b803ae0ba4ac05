"""Every stage's fully resolved config from a params file: what `affcache params show` prints.

params.yaml lists only what differs from the library's defaults (the config dataclasses of the
extractors, heads and fusions hold the published values), so reading it alone does not say what a
stage will run with. This module builds each stage's config exactly as the stage does and renders
it as plain data, defaults filled in. It lives with the stages because it imports every registry
(extractors, heads, dataset adapters), which foundation modules must not.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from pipeline.config import Params, ParamsError, build_config, load_params

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
DEMO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"  # the repo's own params.yaml


def profile_path(profile: str | Path) -> Path:
    """A profile name (`paper` -> affcache/profiles/paper.yaml; `demo` -> the repo's params.yaml)
    or a params file path."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    if str(profile) == "demo" and not (PROFILES_DIR / "demo.yaml").exists():
        if not DEMO_PARAMS.exists():
            raise ParamsError(f"demo: the demo profile is the repository's params.yaml, and {DEMO_PARAMS} "
                              "does not exist (an installed package without its repository?)")
        return DEMO_PARAMS
    named = PROFILES_DIR / f"{profile}.yaml"
    if not named.exists():
        known = ", ".join(sorted({"demo", *(x.stem for x in PROFILES_DIR.glob("*.yaml"))}))
        raise ParamsError(f"{profile}: no such profile (known: {known}) and no such params file")
    return named


def plain(obj: Any) -> Any:
    """A config value as YAML-ready plain data (dataclasses -> mappings, tuples -> lists, paths -> str)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return plain(obj.value)
    return obj


def resolve(params: Params) -> dict[str, dict[str, Any]]:
    """{dvc stage name: its resolved config}, in pipeline order (dvc.yaml's stage names)."""
    from extractors.registry import declared_static, modalities
    from heads.postprocess import LateFusionConfig
    from heads.registry import REGISTRY as MODELS
    from pipeline.datasets import DatasetError, adapter_class
    from pipeline.evaluate import EvalConfig
    from pipeline.report import ReportConfig
    from affcache.project_extractors import extractor_config
    from affcache.stages.demo_data import demo_config
    from affcache.stages.schema import adapter_options

    where = str(params.path)
    out: dict[str, dict[str, Any]] = {}
    if params.get("demo") is not None:
        demo_data = {"root": params.get("demo.root"), "preset": params.get("demo.preset", "default"),
                     "config": plain(demo_config(params))}
        for name in params.get("demo.build", ["demo"]) or []:  # dvc.yaml: one stage per listed name
            out[f"demo_data@{name}"] = demo_data
            if params.get("demo_models") is not None:
                out[f"demo_models@{name}"] = plain(dict(params.section("demo_models")))

    adapter = params.section("dataset.adapter")
    try:
        adapter_cls = adapter_class(adapter)
    except DatasetError as e:
        raise ParamsError(f"{where}: dataset.adapter: {e}") from e
    options = build_config(adapter_options(adapter_cls), params.get("dataset.options") or {},
                           where=f"{where}: dataset.options")
    out["index"] = {"adapter": adapter, "root": params.section("dataset.root"),
                    "index": params.get("dataset.index", "data/index.json"), "options": plain(options)}

    for static in declared_static().values():  # fine-tuned encoders (README, "Static fine-tuning")
        out[f"train_static_{static.name}"] = plain(params.build(f"train_static.{static.name}", static.config_class()))

    for modality in modalities():
        section = f"extract.{modality}"
        _, cfg = extractor_config(params, modality)
        out[f"extract_{modality}"] = {
            "extractor": params.section(f"{section}.extractor"), "weights": params.get(f"{section}.weights"),
            "workers": int(params.get(f"{section}.workers", 2)),
            "prefetch": int(params.get(f"{section}.prefetch", 2)),
            "keep_old_stores": bool(params.get(f"{section}.keep_old_stores", False)), "config": plain(cfg)}

    for spec in MODELS.values():
        group, _, name = spec.params_section.partition(".")
        if name not in (params.get(group) or {}):
            continue  # a model the file has no section for is not trained by it
        stage = f"{'train' if spec.kind == 'head' else 'fuse'}_{spec.name}"
        out[stage] = plain(params.build(spec.params_section, spec.config_class()))

    evaluate = dict(params.get("evaluate") or {})
    late = dict(evaluate.pop("late_fusion", None) or {})
    enabled, models = bool(late.pop("enabled", False)), late.pop("models", None)
    out["evaluate"] = {**plain(build_config(EvalConfig, evaluate, where=f"{where}: evaluate")),
                       "late_fusion": {"enabled": enabled, "models": models,
                                       **plain(build_config(LateFusionConfig, late, where=f"{where}: evaluate.late_fusion"))}}
    out["report"] = plain(params.build("report", ReportConfig) if params.get("report") is not None else ReportConfig())
    return out


# What no setting changes, said next to the stages it concerns (`affcache params show` prints these
# as YAML comments above each stage).
AUGMENTATION = ("The published audio training augments waveforms (noise at 8-25 dB SNR p 0.6, gain +-6 dB "
                "p 0.3, band limit p 0.3, reverb p 0.2; SMIL-SPCRAS/CVPRW-26 src_audio_and_fusion/configs/"
                "cfg_va_s2s.yaml, augment_params). A cache of hidden states is computed once from the clean "
                "audio and cannot be augmented per epoch, so every audio model here trains without them.")
STAGE_NOTES = {
    "extract_audio": AUGMENTATION,
    "train_audio": AUGMENTATION,
    "train_expr_audio": AUGMENTATION,
}


def stage_notes(stages: Any) -> dict[str, str]:
    """The notes (`STAGE_NOTES`) of the given stage names."""
    return {s: STAGE_NOTES[s] for s in stages if s in STAGE_NOTES}


def resolve_profile(profile: str | Path) -> dict[str, dict[str, Any]]:
    """`resolve` of a profile name or params file."""
    return resolve(load_params(profile_path(profile)))
