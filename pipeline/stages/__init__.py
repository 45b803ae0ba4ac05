"""Thin DVC stages: read params, call library code, write outputs.

The on-disk layout lives here (and mirrors dvc.yaml), so no library module hard-codes a path.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Params, Schema, check_params
from pipeline.files import atomic_write_json


class StageFailed(RuntimeError):
    """A stage finished what it could but must exit non-zero (e.g. some videos failed)."""


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (see dvc.yaml)."""

    root: Path = Path(".")

    @property
    def index(self) -> Path:
        return self.root / "data" / "index.json"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    def feature_dir(self, modality: str) -> Path:
        return self.features / modality

    def head_dir(self, head: str) -> Path:
        return self.root / "data" / "heads" / head

    def fusion_dir(self, fusion: str) -> Path:
        return self.root / "data" / "fusion" / fusion

    def model_dir(self, kind: str, name: str) -> Path:
        """data/heads/<name> for a head, data/fusion/<name> for a fusion (heads.registry kinds)."""
        return self.head_dir(name) if kind == "head" else self.fusion_dir(name)

    def input_url(self, inp: str) -> str:
        """A registry input (`features/<modality>` or `heads/<head>`) as the store URL a model reads."""
        kind, _, name = inp.partition("/")
        if kind == "features":
            from pipeline.store import read_current

            return read_current(str(self.feature_dir(name)))
        if kind == "heads":
            return str(self.head_dir(name) / "outputs.zarr")
        raise ValueError(f"unknown model input {inp!r} (expected features/<modality> or heads/<head>)")

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def reports(self) -> Path:
        return self.root / "data" / "reports"


def write_json(path: Path, data: Any) -> None:
    """Write a stage output as JSON through the one atomic writer (sorted keys, stable bytes)."""
    atomic_write_json(path, data)


def params_schema(sections: Mapping[str, type] | None = None) -> Schema:
    """The whole-file params schema from the registries the stage layer may import.

    Extractors (registry name -> config class), dataset adapters (name -> their options), the
    splits, the model names, the demo's config and the evaluate/report configs are filled in
    here; `sections` adds (or overrides) dotted sections, e.g. the heads' `train.<head>` and
    `fuse.<strategy>` classes, which the heads' stages pass in.
    """
    from extractors.base import REGISTRY, _import_builtin_extractors
    from heads.postprocess import LateFusionConfig
    from pipeline.datasets import ADAPTERS
    from pipeline.datasets.synthetic import DemoConfig
    from pipeline.evaluate import EvalConfig
    from pipeline.records import SPLITS
    from pipeline.report import ReportConfig
    from pipeline.stages.evaluate import model_dirs
    from pipeline.stages.extract import config_class

    _import_builtin_extractors()
    own = {"demo.overrides": DemoConfig, "evaluate": EvalConfig, "evaluate.late_fusion": LateFusionConfig,
           "report": ReportConfig}
    return Schema(
        sections={**own, **(sections or {})},
        extractors={name: config_class(cls) for name, cls in REGISTRY.items()},
        adapters={name: adapter_options(cls) for name, cls in ADAPTERS.items()},
        splits=SPLITS,
        models=tuple(model_dirs(Layout())),
    )


def check_stage_params(params: Params, sections: Mapping[str, type] | None = None) -> None:
    """Check the whole params file at the start of a stage (see `pipeline.config.check_params`)."""
    check_params(params, params_schema(sections))


def adapter_options(adapter: type) -> type:
    """The options dataclass of a dataset adapter: its init fields other than `root`.

    `dataset.root` is a key of its own, so `dataset.options` holds only the rest; deriving the
    class from the adapter keeps one definition of each option (type and default).
    """
    hints = typing.get_type_hints(adapter)
    fields = [(f.name, hints[f.name], dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING
               else dataclasses.field(default_factory=f.default_factory))  # type: ignore[arg-type]
              for f in dataclasses.fields(adapter) if f.init and f.name != "root"]
    return dataclasses.make_dataclass(f"{adapter.__name__}Options", fields)
