"""Typed access to params.yaml.

Stages are the only readers of params.yaml. They call `load_params()` once and turn the section
they own into the dataclass the library code expects with `build_config()`. Unknown keys, wrong
types and missing sections fail here, naming the file and the dotted key, before any work starts.
Library code never imports this module's file reading; it only sees dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

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


def build_config(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build a (possibly nested) dataclass from a plain mapping, strictly.

    Unknown keys are errors (a typo must not silently fall back to a default); values are
    checked against the field annotations for the simple types params files hold, and
    nested dataclass fields are built recursively.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known options of {cls.__name__}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints.get(name, Any), value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{where}: {exc}") from exc


def _coerce(annotation: Any, value: Any, where: str) -> Any:
    """Check/convert one value against its annotation; only what YAML can express."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0] if errors else f"{where}: cannot be null")
    if origin is typing.Literal:
        if value not in args:
            raise ParamsError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping")
        return build_config(annotation, value, where)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ParamsError(f"{where}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or annotation is tuple) else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        return Path(value)
    return value
