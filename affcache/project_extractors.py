"""Building a project's extractors from its params (`extract.<modality>`): the one place that does it.

The extraction stages, `affcache predict` (stage and Python API) and `affcache params show` all need
the extractor a params file names, with its config checked strictly and its dataset-relative paths
read under `dataset.root`; each built it by hand before, and a fix in one copy missed the others.

A project names its files relative to its folder (`extract.audio.config.model:
data/models/demo/wavlm`), as `dvc repro` runs the stages there. A caller elsewhere (the Python API)
passes the project `root`: a relative path that exists under it is read there, while the store
fingerprint keeps the params' own string, so the features cached by the stages and by a call from
another folder are the same store. Extraction engines rebuild an extractor from its class and config
(the Ray workers do), which is why the fingerprint is restored on the instance and the config holds
the paths that load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.config import Params, ParamsError


def extractor_config(params: Params, modality: str, overrides: dict[str, Any] | None = None,
                     root: Path | None = None) -> tuple[type, Any]:
    """(the extractor class named in `extract.<modality>`, its strictly-checked config).

    `overrides` (command-line options such as `--device`, or predict's `detector.max_faces`) replace
    config fields before the check; dataset-relative fields follow `dataset.root` (`dataset_paths`).
    """
    from extractors.registry import ExtractorError, config_class, extractor_class, extractor_config as built

    section = f"extract.{modality}"
    name = params.section(f"{section}.extractor")
    try:
        cls = extractor_class(name)
    except ExtractorError as e:
        raise ParamsError(f"{params.path}: {section}.extractor: {e}") from e
    for key in overrides or {}:
        if key not in getattr(config_class(cls), "__dataclass_fields__", {}):
            raise ParamsError(f"--{key}: the {modality} extractor ({name}) has no {key} setting")
    values = {**(params.get(f"{section}.config") or {}), **(overrides or {})}
    try:
        cls, cfg = built(name, values, where=f"{params.path}: {section}.config", modality=modality)
    except ExtractorError as e:
        raise ParamsError(f"{params.path}: {section}.extractor: {e}") from e
    return cls, dataset_paths(params, cfg, root)


def build_extractor(params: Params, modality: str, overrides: dict[str, Any] | None = None,
                    root: Path | None = None) -> Any:
    """The extractor of `extract.<modality>` (see `extractor_config`), its files read under the project
    `root` (None: the working directory, as under `dvc repro`)."""
    cls, cfg = extractor_config(params, modality, overrides, root)
    if root is None:
        return cls(cfg)
    loaded, moved = under_root(cfg, Path(root))
    extractor = cls(loaded)
    if moved:
        own = extractor.fingerprint
        extractor.fingerprint = lambda: _restored(own(), moved)  # the params' strings, as the stages key it
    return extractor


def dataset_paths(params: Params, cfg: Any, root: Path | None = None) -> Any:
    """`cfg` with its dataset-relative paths read under params `dataset.root` (itself under `root`
    when relative and a project root is given).

    A config class lists such fields in its `DATASET_RELATIVE` class attribute (the reliability
    extractor's `mouth_csv_dir`): files that belong with the dataset, so a relative value follows
    `dataset.root` and a profile needs no absolute path. Absolute values are kept.
    """
    data = params.get("dataset.root")
    if data and root is not None and not Path(str(data)).is_absolute():
        data = Path(root) / str(data)
    changes = {}
    for name in getattr(type(cfg), "DATASET_RELATIVE", ()):
        value = getattr(cfg, name, None)
        if data and isinstance(value, str) and value and not Path(value).is_absolute():
            changes[name] = str(Path(str(data)) / value)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def under_root(cfg: Any, root: Path) -> tuple[Any, dict[str, str]]:
    """`cfg` with every relative string field that names an existing file or folder under `root`
    replaced by that path (nested configs included), and {new path: the params' string}."""
    moved: dict[str, str] = {}
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            inner, more = under_root(value, root)
            if more:
                changes[f.name], moved = inner, {**moved, **more}
        elif isinstance(value, str) and _project_file(root, value):
            changes[f.name] = str(root / value)
            moved[changes[f.name]] = value
    return (dataclasses.replace(cfg, **changes) if changes else cfg), moved


def _project_file(root: Path, value: str) -> bool:
    """Whether `value` is a relative path naming a file or folder under `root` (a prompt or a Hub id is not)."""
    if not value or "://" in value or Path(value).is_absolute():
        return False
    try:
        return (root / value).exists()
    except (OSError, ValueError):  # not a possible file name (too long, a NUL byte)
        return False


def _restored(value: Any, moved: dict[str, str]) -> Any:
    """A fingerprint with the moved paths written back as the params name them."""
    if isinstance(value, dict):
        return {k: _restored(v, moved) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_restored(v, moved) for v in value)
    return moved.get(value, value) if isinstance(value, str) else value
