"""The whole params.yaml schema, checked by the CLI before any stage command starts.

Every section and key is checked at once, so a typo anywhere fails in seconds with the file and
the key named, not after an hour of extraction. The schema is read from the registries of every
layer (extractors, heads, dataset adapters), which is why it lives apart from the stage modules:
a stage's DVC deps are the import closure of its own module, and importing every registry there
would make each stage depend on every extractor and head.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from pathlib import Path

from pipeline.config import Schema, check_params, load_params
from pipeline.files import atomic_write_text

MEMO = Path(".affcache") / "params_checked"  # in the project (the stages' working directory), never tracked
CODE_PACKAGES = ("pipeline", "extractors", "heads", "affcache")  # where the schema's classes live


def params_schema() -> Schema:
    """The whole-file params schema from the registries: extractors (registry name -> config
    class), dataset adapters (name -> their options), every head and fusion (`train.<head>`,
    `fuse.<fusion>` -> its config class), the splits, the model names, and the demo's and the
    evaluate/report configs."""
    from extractors.registry import config_class, declared_extractors, declared_static, extractor_class, modalities
    from extractors.engine_ray import RayConfig
    from heads.registry import REGISTRY as MODELS
    from heads.registry import model_names
    from heads.postprocess import LateFusionConfig
    from pipeline.datasets import adapter_classes
    from pipeline.datasets.synthetic import DemoConfig
    from pipeline.evaluate import EvalConfig
    from pipeline.records import SPLITS
    from pipeline.report import ReportConfig

    sections = {"demo.overrides": DemoConfig, "extract.ray": RayConfig, "evaluate": EvalConfig,
                "evaluate.late_fusion": LateFusionConfig,
                "report": ReportConfig}
    sections.update({s.params_section: s.config_class() for s in MODELS.values()})
    sections.update({f"train_static.{s.name}": s.config_class() for s in declared_static().values()})
    return Schema(
        sections=sections,
        extractors={name: config_class(extractor_class(name)) for name in declared_extractors()},
        adapters={name: adapter_options(cls) for name, cls in adapter_classes().items()},
        modalities=tuple(modalities()),
        splits=SPLITS,
        models=tuple(model_names()),  # late fusion and predict choose among the VA models
    )


def check_params_file(path: Path, memo: Path | None = MEMO) -> None:
    """Check the whole params file before a stage starts (see `pipeline.config.check_params`).

    A check that passed is remembered in `memo` (keyed by the params file's bytes and the stats of
    the code that defines the schema), so the stage that runs at every `dvc repro` (`index`) does
    not import every registry (torch, transformers: seconds) when neither changed.
    """
    key = _check_key(path) if memo is not None else None
    if key is not None and memo is not None and memo.is_file() and memo.read_text() == key:
        return
    check_params(load_params(path), params_schema())
    if key is not None and memo is not None:
        try:
            atomic_write_text(memo, key)
        except OSError:  # a read-only project still runs; it just checks every time
            pass


def _check_key(path: Path) -> str | None:
    try:
        h = hashlib.sha256(Path(path).read_bytes())
    except OSError:
        return None  # load_params reports the missing file
    code = Path(__file__).resolve().parents[2]
    for package in CODE_PACKAGES:
        for f in sorted((code / package).rglob("*.py")):
            st = f.stat()
            h.update(f"{f.relative_to(code)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest() + "\n"


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
