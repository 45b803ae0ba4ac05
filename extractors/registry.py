"""The extractors' registry: which extractors exist, the modality each writes, and building one by name.

An extractor declares itself where it is written, with `@register(name, modality=..., default=...,
weights=...)` on its class; `declared_extractors` reads those declarations from the source
(`pipeline.plugins`), so the CLI's modalities, the API's defaults, the params schema and the DVC
extraction stages follow from them without importing torch or any model. A declared module is
imported on first use (`extractor_class`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


class ExtractorError(Exception):
    """A configuration or model problem (bad model id, weights file, parameter).

    Raised by `load()` or the constructor, before any video is touched, so a typo costs seconds.
    """


@dataclass(frozen=True)
class ExtractorSpec:
    """One extractor as its module declares it (`@register(name, modality=..., ...)`)."""

    name: str
    modality: str
    module: str
    default: bool = False   # the extractor its modality uses unless params or the API name another
    weights: bool = False   # loads weights from a file, folder or Hub id (`extract.<modality>.weights`)
    crops: bool = False     # reads the dataset's provided face crops (their fingerprints: data/index.crops.json)
    video: bool = True      # needs pictures: skipped for audio-only media (`Video.has_video` False)


# Classes registered by importing their module: the declared ones once used, and any a program or a
# test defines itself (they need no declaration in this package).
REGISTRY: dict[str, type] = {}


def register(name: str, *, modality: str, default: bool = False, weights: bool = False,
             crops: bool = False, video: bool = True) -> Callable[[type], type]:
    """Class decorator and declaration of an extractor: its registry name, the modality (feature
    store) it writes, whether it is that modality's default, whether it loads weights, whether it reads
    the dataset's face crops (its stage then depends on the crops' fingerprints), whether it needs
    pictures (`video=False`: it reads only the audio, so it also runs on audio-only media; the others
    skip those videos, `extractors.base.picture_skips`). The arguments are literals so that
    `declared_extractors` reads them without importing the module."""

    def deco(cls: type) -> type:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ExtractorError(f"extractor name {name!r} registered twice ({REGISTRY[name]!r} and {cls!r})")
        cls.name, cls.modality, cls.needs_video = name, modality, video
        REGISTRY[name] = cls
        return cls

    return deco


def declared_extractors() -> dict[str, ExtractorSpec]:
    """Every extractor declared in this package, by name (read from the source: no import)."""
    from pipeline.plugins import declarations

    return {d.name: ExtractorSpec(d.name, d.kwargs["modality"], d.module, bool(d.kwargs.get("default")),
                                  bool(d.kwargs.get("weights")), bool(d.kwargs.get("crops")),
                                  bool(d.kwargs.get("video", True)))
            for d in declarations("extractors", "register")}


def modalities() -> list[str]:
    """The modalities the declared extractors write (one feature store and one DVC stage each)."""
    return sorted({s.modality for s in declared_extractors().values()})


def default_extractors() -> dict[str, str]:
    """Modality -> the name of its default extractor (exactly one per modality)."""
    specs = declared_extractors().values()
    out: dict[str, str] = {}
    for m in modalities():
        names = [s.name for s in specs if s.modality == m and s.default]
        if len(names) != 1:
            raise ExtractorError(f"modality {m!r} needs exactly one extractor declared default=True, has {names}")
        out[m] = names[0]
    return out


def extractor_class(name: str) -> type:
    """The class registered as `name`, importing its declared module on first use."""
    if name not in REGISTRY:
        declared = declared_extractors()
        if name in declared:
            import importlib

            importlib.import_module(declared[name].module)
        if name not in REGISTRY:
            known = ", ".join(sorted(set(declared) | set(REGISTRY))) or "(none)"
            raise ExtractorError(f"unknown extractor {name!r}; known: {known}. Check the `extractor` param.")
    return REGISTRY[name]


def config_class(extractor_cls: type) -> type:
    """The config dataclass an extractor takes, read from its constructor's annotation."""
    import inspect
    import typing

    params = list(inspect.signature(extractor_cls.__init__).parameters.values())[1:]
    if not params:
        raise TypeError(f"{extractor_cls.__name__} takes no config")
    hint = typing.get_type_hints(extractor_cls.__init__)[params[0].name]
    # `cfg: FaceConfig | None = None` -> FaceConfig
    candidates = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return candidates[0]


def extractor_config(name: str, values: dict[str, Any], where: str, modality: str | None = None) -> tuple[type, Any]:
    """(the class registered as `name`, its config built from `values`), checked strictly: an unknown
    key or a wrong type is a `ConfigError` naming `where`; with `modality`, it must write that modality."""
    from pipeline.config import build_config

    cls = extractor_class(name)
    if modality is not None and cls.modality != modality:
        raise ExtractorError(f"{name!r} extracts {cls.modality!r}, not {modality!r}")
    return cls, build_config(config_class(cls), dict(values), where=where)


def build_extractor(name: str, values: dict[str, Any], where: str, modality: str | None = None) -> Any:
    """The extractor `name` built from config `values` (see `extractor_config`)."""
    cls, cfg = extractor_config(name, values, where, modality)
    return cls(cfg)


def get_extractor(name: str, cfg: Any) -> Any:
    """Build the extractor registered as `name` from its config dataclass."""
    return extractor_class(name)(cfg)


# ------------------------------------------------------------------------------- static fine-tuning
@dataclass(frozen=True)
class StaticSpec:
    """One static (frame-level) encoder fine-tuning, as its module declares it
    (`@register_static(name, modality=..., config=...)`): stage `train_static_<name>` reads the face
    crops and labels, params `train_static.<name>` (the `config` dataclass), and writes the weights
    folder `data/static/<name>` that the `modality`'s extractor loads (README, "Static fine-tuning")."""

    name: str
    modality: str
    module: str
    cls: str
    config: str

    def config_class(self) -> type:
        import importlib

        return getattr(importlib.import_module(self.module), self.config)

    def trainer(self) -> type:
        import importlib

        return getattr(importlib.import_module(self.module), self.cls)


STATIC_REGISTRY: dict[str, type] = {}


def register_static(name: str, *, modality: str, config: type) -> Callable[[type], type]:
    """Class decorator and declaration of a static encoder fine-tuning: its name (stage
    `train_static_<name>`, params `train_static.<name>`), the modality whose extractor loads the
    weights it writes, and its config dataclass. Literal arguments (a class by name), read from the
    source by `declared_static` like `register`'s."""

    def deco(cls: type) -> type:
        if not hasattr(config, "__dataclass_fields__"):
            raise TypeError(f"register_static({name!r}): config {config!r} is not a dataclass")
        cls.name, cls.modality = name, modality
        STATIC_REGISTRY[name] = cls
        return cls

    return deco


def declared_static() -> dict[str, StaticSpec]:
    """Every static fine-tuning declared in this package, by name (read from the source: no import)."""
    from pipeline.plugins import declarations

    return {d.name: StaticSpec(d.name, d.kwargs["modality"], d.module, d.cls, d.kwargs["config"])
            for d in declarations("extractors", "register_static")}
