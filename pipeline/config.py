"""Typed access to params.yaml, checked by pydantic.

Stages are the only readers of params.yaml. They call `load_params()` once, check the whole file
with `check_params()` (every section and key, before any work starts), and turn the section they
own into the dataclass the library code expects with `build_config()`. Unknown keys, wrong types and
missing sections fail here, naming the file, the dotted key, what was expected and what was found.
Library code never imports this module's file reading; it only sees dataclasses.

The config classes stay plain stdlib dataclasses (the library must not depend on pydantic);
pydantic validates them by wrapping each in a one-field model whose config (`extra="forbid"`,
strict) pydantic applies to the stdlib dataclasses nested inside it. Values are validated as JSON
would be: params.yaml holds only JSON types, so a list fills a tuple, a string fills a `Path`, an
integer fills a float, but `"4"` never becomes an integer and `true` never becomes a number.

This module imports neither extractors nor heads: what the registries hold (extractor and adapter
names with their config classes, model names, the heads' config classes) reaches `check_params`
as a `Schema` built by the caller (see `affcache.stages.schema.params_schema`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
import yaml

T = TypeVar("T")
DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A problem with params.yaml: the message names the file, the key and the fix."""


class Params:
    """The parsed params file plus its path, so every error can name it."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data = data
        self.path = path

    def section(self, dotted: str) -> Any:
        """Return `a.b.c` from the file, or raise ParamsError naming the missing key."""
        node: Any = self.data
        walked: list[str] = []
        for part in dotted.split("."):
            walked.append(part)
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"{self.path}: missing key `{'.'.join(walked)}` (needed: `{dotted}`)")
            node = node[part]
        return node

    def get(self, dotted: str, default: Any = None) -> Any:
        try:
            return self.section(dotted)
        except ParamsError:
            return default

    def build(self, dotted: str, cls: type[T], **overrides: Any) -> T:
        """Build dataclass `cls` from section `dotted` (see `build_config`)."""
        data = dict(self.section(dotted) or {})
        data.update(overrides)
        return build_config(cls, data, where=f"{self.path}: {dotted}")


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read params.yaml; a missing or malformed file is a ParamsError naming it."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found; run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return Params(data, path)


# --------------------------------------------------------------------------- one section


def build_config(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build a (possibly nested) dataclass from a plain mapping, strictly.

    Unknown keys are errors (a typo must not silently fall back to a default); values are
    checked against the field annotations and nested dataclass fields are built recursively.
    Errors from the dataclass's own `__post_init__` checks are reported under `where` too.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {_shown(data)}")
    try:
        payload = json.dumps({"value": dict(data or {})}, default=str)
    except (TypeError, ValueError) as exc:  # pragma: no cover - YAML only yields JSON types
        raise ParamsError(f"{where}: cannot be read as plain values: {exc}") from exc
    try:
        return _wrapper(cls).model_validate_json(payload).value
    except pydantic.ValidationError as exc:
        raise ParamsError(_merge([_describe(cls, e, where) for e in exc.errors(include_url=False)])) from None
    except TypeError as exc:  # a dataclass whose __init__/__post_init__ rejects the values
        raise ParamsError(f"{where}: {exc}") from exc


@functools.cache
def _wrapper(cls: type) -> type[pydantic.BaseModel]:
    """A model holding one `cls`; its config reaches every stdlib dataclass nested in `cls`."""
    config = pydantic.ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return pydantic.create_model(f"{cls.__name__}Params", __config__=config, value=(cls, ...))


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true/false", "bool_parsing": "true/false",
    "string_type": "a string", "path_type": "a path (string)",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
    "dict_type": "a mapping", "dataclass_type": "a mapping", "model_type": "a mapping",
    "none_required": "null",
}


def _describe(cls: type, error: Mapping[str, Any], where: str) -> str:
    """One pydantic error -> `<where>.<dotted key>: expected X, got Y` (or the unknown-key line)."""
    key, owner = _walk(cls, error["loc"][1:])
    at = f"{where}{key}"
    kind, found = error["type"], error.get("input")
    if kind == "unexpected_keyword_argument":
        parent = at.rsplit(".", 1)[0]
        known = sorted(f.name for f in dataclasses.fields(owner) if f.init) if owner else []
        return (f"{parent}: unknown option `{at.rsplit('.', 1)[1]}`; known options of "
                f"{getattr(owner, '__name__', '?')}: {', '.join(known)}")
    if kind in ("missing_argument", "missing"):
        return f"{at}: missing required option"
    if kind == "literal_error":
        return f"{at}: {found!r} is not one of {error.get('ctx', {}).get('expected', '')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        limit = next(iter(error.get("ctx", {}).values()), "?")
        return f"{at}: expected a value {bound} {limit}, got {_shown(found)}"
    if kind == "value_error":  # the dataclass's own check (__post_init__)
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        return f"{at}: {message}"
    if kind in _EXPECTED:
        return f"{at}: expected {_EXPECTED[kind]}, got {_shown(found)}"
    return f"{at}: {error['msg']}, got {_shown(found)}"


def _merge(lines: list[str]) -> str:
    """Join the branches of one union field: `k: expected an integer or a string, got 1.5`."""
    merged: dict[str, str] = {}
    for line in lines:
        head, sep, rest = line.partition(": expected ")
        if sep and head in merged and ": expected " in merged[head]:
            what, _, found = rest.rpartition(", got ")
            before, _, old_found = merged[head].rpartition(", got ")
            merged[head] = f"{before} or {what}, got {found}"
        else:
            merged.setdefault(head if sep else line, line)
    return "\n".join(merged.values())


def _walk(cls: type, loc: Sequence[Any]) -> tuple[str, type | None]:
    """Dotted key of a pydantic location inside `cls`, and the dataclass holding its last part.

    Union branch tags pydantic adds to the location (`int`, `str`, `function-after[...]`, a class
    name) are dropped, so the key is exactly what the user wrote in params.yaml.
    """
    key, node, owner = "", cls, cls
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
            node = _item_type(node)
            continue
        target = _dataclass_in(node)
        if target is not None and part in (hints := typing.get_type_hints(target)):
            key += f".{part}"
            owner, node = target, hints[part]
            continue
        if not part.isidentifier() or part in _BRANCH_TAGS or (target is not None and part == target.__name__):
            continue
        key += f".{part}"  # an unknown key of `target`, or a key inside a plain mapping
        owner = target if target is not None else owner
        node = None
    return key, owner


_BRANCH_TAGS = {"int", "float", "str", "bool", "none", "list", "tuple", "dict", "set", "nullable", "literal"}


def _dataclass_in(node: Any) -> type | None:
    if dataclasses.is_dataclass(node):
        return node  # type: ignore[return-value]
    for arg in typing.get_args(node):
        found = _dataclass_in(arg)
        if found:
            return found
    return None


def _item_type(node: Any) -> Any:
    for arg in typing.get_args(node) or ():
        if typing.get_origin(arg) in (list, tuple, Sequence) or arg in (list, tuple):
            return _item_type(arg)
    args = [a for a in typing.get_args(node) if a is not Ellipsis]
    return args[0] if args else None


def _is_mapping(node: Any) -> bool:
    return node is dict or typing.get_origin(node) in (dict, Mapping)


def _shown(value: Any) -> str:
    """The found value as the user wrote it (a string keeps its quotes, so `"4"` reads as text)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- the whole file

Positive = Annotated[int, pydantic.Field(ge=1)]
NonNegative = Annotated[int, pydantic.Field(ge=0)]


@dataclass
class DemoParams:
    """Section `demo` (stage demo_data); `overrides` are checked against `Schema.sections["demo.overrides"]`."""

    root: str = "data/raw/demo"
    preset: Literal["default", "tiny"] = "default"
    overrides: dict[str, Any] = field(default_factory=dict)
    labels_from: str | None = None
    # dvc.yaml's `foreach` of the demo stages: [demo] builds them, [] (a real dataset) drops them
    build: Annotated[list[Literal["demo"]], pydantic.Field(max_length=1)] = field(default_factory=lambda: ["demo"])


@dataclass
class DemoModelsParams:
    """Section `demo_models` (stage demo_models)."""

    out: str = "data/models/demo"
    seed: int = 0
    calibration_crops: str | None = None
    calibration_count: Positive = 64
    face_image_size: Positive = 96


@dataclass
class DatasetParams:
    """Section `dataset` (stage index); `adapter` and `options` are checked against `Schema.adapters`."""

    adapter: str = "affwild2"
    root: str = "data/raw"
    index: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExtractParams:
    """One `extract.<modality>` entry; `config` is checked against the named extractor's config class."""

    extractor: str
    weights: str | None = None  # the DVC dep holding the encoder's weights (stages.extract.check_weights)
    workers: Positive = 2
    prefetch: Positive = 2
    keep_old_stores: bool = False
    engine: Literal["local", "ray"] = "local"
    ray: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class LateFusionParams:
    """The keys of `evaluate.late_fusion` the stage reads itself; the rest is `Schema.sections[...]`."""

    enabled: bool = False
    models: list[str] | None = None


@dataclass
class PredictParams:
    """Section `predict` (optional; `affcache predict`). `features`: the new videos' feature cache
    (a folder or an `s3://` URL; default `<out>/features`)."""

    model: str | None = None
    device: str = "auto"
    keep_old_stores: bool = False
    features: str | None = None
    max_faces: NonNegative = 4  # persons followed per video (`--max-faces`; 0 = every tracked face)


@dataclass
class StorageParams:
    """Section `storage` (optional): where the feature stores live, and the S3-compatible endpoint.

    features: root of the stores (default data/features, which dvc.yaml tracks); an `s3://bucket/prefix`
        URL puts them in object storage for runs of the `affcache` commands outside `dvc repro`.
    endpoint_url: the S3 API endpoint (MinIO, Ceph, ...); empty: AWS, or the AWS_ENDPOINT_URL variable.
    """

    features: str = ""
    endpoint_url: str = ""


@dataclass(frozen=True)
class Schema:
    """What params.yaml may hold beyond its fixed skeleton, supplied by the layer that owns it.

    sections: dotted section -> config dataclass: `train.<head>`, `fuse.<strategy>`, `extract.ray` (the
        `ray` block of every `extract.<modality>`), `evaluate`
        (its keys other than `late_fusion`), `evaluate.late_fusion` (other than `enabled`/`models`),
        `report`, `demo.overrides`. Once any `train.*` (or `fuse.*`) class is given, an entry of that
        section without one is an unknown key; sections not given are left to their stage.
    extractors: registry name -> config dataclass (`extract.<modality>.extractor` / `.config`).
    adapters: dataset adapter name -> options dataclass (`dataset.adapter` / `.options`).
    modalities: the allowed `extract.<modality>` names (empty: any).
    splits: choices of `evaluate.split`. models: choices of `evaluate.late_fusion.models` and
        `predict.model`.
    """

    sections: Mapping[str, type] = field(default_factory=dict)
    extractors: Mapping[str, type] = field(default_factory=dict)
    adapters: Mapping[str, type] = field(default_factory=dict)
    modalities: Sequence[str] = ()
    splits: Sequence[str] = ()
    models: Sequence[str] = ()


TOP_LEVEL = ("demo", "demo_models", "dataset", "extract", "train_static", "train", "fuse", "evaluate", "report",
             "predict", "storage")


def check_params(params: Params, schema: Schema) -> None:
    """Check every section and key of the params file before any work starts.

    Raises one ParamsError listing every problem found (file, dotted key, expected, found), so a
    user fixes the whole file in one go instead of one stage failure at a time.
    """
    problems: list[str] = []
    where = f"{params.path}:"
    data = params.data

    def check(cls: type, value: Any, dotted: str) -> Any:
        try:
            return build_config(cls, value if value is not None else {}, where=f"{where} {dotted}")
        except ParamsError as exc:
            problems.append(str(exc))
            return None

    def choice(value: Any, known: Sequence[str], dotted: str, what: str) -> None:
        if known and value not in known:
            problems.append(f"{where} {dotted}: unknown {what} {value!r}; known: {', '.join(known)}")

    def mapping(value: Any, dotted: str) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            problems.append(f"{where} {dotted}: expected a mapping, got {_shown(value)}")
            return None
        return value

    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        problems.append(f"{where} unknown section(s) {', '.join(unknown)}; known sections: {', '.join(TOP_LEVEL)}")

    if "demo" in data and (demo := check(DemoParams, data["demo"], "demo")) is not None:
        if (cls := schema.sections.get("demo.overrides")) is not None:
            check(cls, demo.overrides, "demo.overrides")
    if "demo_models" in data:
        check(DemoModelsParams, data["demo_models"], "demo_models")
    if "dataset" in data and (ds := check(DatasetParams, data["dataset"], "dataset")) is not None:
        choice(ds.adapter, sorted(schema.adapters), "dataset.adapter", "dataset adapter")
        if ds.adapter in schema.adapters:
            check(schema.adapters[ds.adapter], ds.options, "dataset.options")

    for modality, entry in (mapping(data.get("extract"), "extract") or {}).items():
        dotted = f"extract.{modality}"
        choice(modality, list(schema.modalities), "extract", "modality")
        ex = check(ExtractParams, entry, dotted)
        if ex is None:
            continue
        choice(ex.extractor, sorted(schema.extractors), f"{dotted}.extractor", "extractor")
        if ex.extractor in schema.extractors:
            check(schema.extractors[ex.extractor], ex.config, f"{dotted}.config")
        if (cls := schema.sections.get("extract.ray")) is not None:
            check(cls, ex.ray, f"{dotted}.ray")

    for top in ("train_static", "train", "fuse"):
        given = {k.split(".", 1)[1]: v for k, v in schema.sections.items() if k.startswith(f"{top}.")}
        for name, entry in (mapping(data.get(top), top) or {}).items():
            if name in given:
                check(given[name], entry, f"{top}.{name}")
            elif given:
                problems.append(f"{where} {top}: unknown entry `{name}`; known: {', '.join(sorted(given))}")

    if "evaluate" in data and (section := mapping(data["evaluate"], "evaluate")) is not None:
        section = dict(section)
        late = mapping(section.pop("late_fusion", None), "evaluate.late_fusion")
        if (cls := schema.sections.get("evaluate")) is not None:
            check(cls, section, "evaluate")
        if "split" in section:
            choice(section["split"], list(schema.splits), "evaluate.split", "split")
        if late is not None:
            own = {k: late[k] for k in ("enabled", "models") if k in late}
            fused = check(LateFusionParams, own, "evaluate.late_fusion")
            for i, model in enumerate((fused.models or []) if fused else []):
                choice(model, list(schema.models), f"evaluate.late_fusion.models[{i}]", "model")
            if (cls := schema.sections.get("evaluate.late_fusion")) is not None:
                check(cls, {k: v for k, v in late.items() if k not in own}, "evaluate.late_fusion")
    if "report" in data and (cls := schema.sections.get("report")) is not None:
        check(cls, data["report"], "report")
    if "storage" in data:
        check(StorageParams, data["storage"], "storage")
    if "predict" in data and (pred := check(PredictParams, data["predict"], "predict")) is not None:
        if pred.model is not None:
            choice(pred.model, list(schema.models), "predict.model", "model")

    if problems:
        raise ParamsError("\n".join(problems))
