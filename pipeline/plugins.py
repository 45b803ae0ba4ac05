"""Plug-ins declare themselves; this module reads the declarations and the code they import.

A module becomes a plug-in by decorating one class with a declaration call whose arguments are
literals (`@register("grada", modality="face", ...)` for an extractor, `@register_model(...)` for a
head or fusion, `@register_adapter(...)` for a dataset adapter). Everything that used to be a list
kept by hand follows from those declarations: the CLI's choices, the API's defaults, the params
schema, and the DVC stages with their code deps (`affcache dvc-yaml`).

Declarations are read from the source with `ast`, not by importing the modules: listing every
plug-in then costs milliseconds and no torch import, and a plug-in whose optional dependency is
missing is still listed (it fails when it is used, naming the package). The decorator itself runs
when the module is imported and checks that the class matches what was declared.

The second job here is the import closure of a set of source files (every repository module they
may import, at any depth of the file, with the package `__init__.py` files on the way): a DVC stage
lists exactly that closure as its code deps, so editing any file it runs re-runs it and editing
anything else does not.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO_PACKAGES = ("affcache", "pipeline", "extractors", "heads")


class DeclarationError(Exception):
    """A plug-in declaration that cannot be read (a non-literal argument, a duplicate name)."""


@dataclass(frozen=True)
class Declaration:
    """One decorated class, as the source declares it."""

    module: str                 # dotted module name, e.g. "heads.face_temporal"
    path: Path                  # its file
    cls: str                    # the decorated class
    args: tuple[Any, ...]       # positional literal arguments of the declaration call
    kwargs: dict[str, Any] = field(default_factory=dict)  # literals, or a class name given by name

    @property
    def name(self) -> str:
        """The plug-in's registry name: the declaration's first argument."""
        return str(self.args[0])

    def load(self) -> type:
        """Import the module and return the declared class."""
        return getattr(importlib.import_module(self.module), self.cls)


def package_dir(package: str) -> Path:
    """The folder a package is imported from (the checkout on PYTHONPATH, or the installed copy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DeclarationError(f"{package!r} is not an importable package")
    return Path(next(iter(spec.submodule_search_locations)))


def _value(node: ast.expr, where: str) -> Any:
    """A declaration argument: a literal, or a bare name (a class defined in the module)."""
    if isinstance(node, ast.Name):
        return node.id
    try:
        return ast.literal_eval(node)
    except ValueError as e:
        raise DeclarationError(f"{where}: declaration arguments must be literals or class names, "
                               f"got {ast.unparse(node)!r}") from e


def _declarations_in(path: Path, module: str, decorator: str) -> list[Declaration]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == decorator:
                where = f"{path}:{deco.lineno}"
                found.append(Declaration(module, path, node.name,
                                         tuple(_value(a, where) for a in deco.args),
                                         {k.arg: _value(k.value, where) for k in deco.keywords if k.arg}))
    return found


@lru_cache(maxsize=None)
def declarations(package: str, decorator: str) -> tuple[Declaration, ...]:
    """Every class in `package`'s modules (one level, sorted by file name) decorated with a call to
    `decorator`; names must be unique."""
    folder = package_dir(package)
    found: list[Declaration] = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        found += _declarations_in(path, f"{package}.{path.stem}", decorator)
    seen: dict[str, Declaration] = {}
    for d in found:
        if d.name in seen:
            raise DeclarationError(f"{decorator}({d.name!r}) is declared twice: in {seen[d.name].path} "
                                   f"and {d.path}")
        seen[d.name] = d
    return tuple(found)


# ------------------------------------------------------------------------------------ import closure
def _module_file(root: Path, dotted: str) -> Path | None:
    """The repository file that module `dotted` is loaded from, or None when it is not ours."""
    if dotted.split(".")[0] not in REPO_PACKAGES:
        return None
    base = root.joinpath(*dotted.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    init = base / "__init__.py"
    return init if init.is_file() and _has_code(init) else None


def _has_code(init: Path) -> bool:
    body = ast.parse(init.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def package_inits(root: Path, dotted: str) -> set[Path]:
    """The `__init__.py` files that importing `dotted` runs, when they hold code."""
    parts = dotted.split(".")
    inits = set()
    for i in range(1, len(parts) + 1):
        init = root.joinpath(*parts[:i], "__init__.py")
        if init.is_file() and _has_code(init):
            inits.add(init)
    return inits


def imported_modules(path: Path) -> set[str]:
    """Dotted names of everything `path` may import, at any depth of the file (`from a import b`
    yields `a` and `a.b`, since `b` may be a module). Modules loaded by a name held in a string
    (`importlib.import_module`) are not followed: plug-ins are listed from their declarations."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def import_closure(root: Path, files: set[Path] | list[Path]) -> set[Path]:
    """All repository files reachable from `files` through imports (the files included)."""
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for dotted in imported_modules(f):
            target = _module_file(root, dotted)
            if target is not None:
                todo.append(target)
                todo.extend(package_inits(root, dotted))
    return seen
