"""The one list of trainable models: name -> where it lives, its config, its kind and its inputs.

Why one registry: the CLI's choices, the train/fuse stages (generated into dvc.yaml), the params
schema, evaluation, the report, export and inference all enumerate the same models. A model declares
itself where it is written: its `Head` class carries `@register_model(name, kind=..., config=...,
inputs=..., tasks=...)`, and the registry reads those declarations from the source
(`pipeline.plugins`), so adding a model is one module plus its params section. Importing this
module is cheap (no torch): modules and config classes are imported only when a spec is used.

`inputs` name what a model reads, as paths under data/: `features/<modality>` (an extraction
stage's store) or `heads/<head>` (a head's outputs.zarr). dvc.yaml lists the same data deps.

Every model has a `task`: "va" (valence/arousal, the primary task) or "expr" (the 8 ABAW
expression classes). An EXPR model is the VA model's module and config trained on EXPR labels;
its registry name is `expr_<name>` (`task_name`), so its params section (`train.expr_face`,
`fuse.expr_gated_moe`), its directory and its metrics are its own and VA and EXPR stages
invalidate independently. An EXPR fusion reads the EXPR heads' outputs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any, Literal

Kind = Literal["head", "fusion"]
Task = Literal["va", "expr"]


def task_name(name: str, task: str) -> str:
    """Registry name of model `name` trained for `task`: the name itself for VA, `expr_<name>` for EXPR."""
    return name if task == "va" else f"{task}_{name}"


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: a head or fusion module, its config class and `Head` class, what it reads."""

    name: str                  # registry name: CLI argument, params key, data/<heads|fusion>/<name>
    kind: Kind
    module: str                # e.g. "heads.face_temporal"
    config: str                # config dataclass in `module` (it nests a `train:` TrainConfig block)
    head: str                  # the heads.contract.Head subclass in `module`
    inputs: tuple[str, ...]    # "features/<modality>" | "heads/<head>"
    task: Task = "va"
    weights: tuple[str, ...] = ()  # config fields naming files it loads (DVC deps via its params section)
    optional: tuple[str, ...] = ()  # inputs it does without when the dataset has none (affcache.stages.applicable)

    @property
    def base(self) -> str:
        """The model's name without its task prefix (`face` for `expr_face`)."""
        prefix = task_name("", self.task)
        return self.name[len(prefix):]

    @property
    def model_name(self) -> str:
        """Name of the model's metrics, plots and predictions: the head name, or `fusion_<name>`
        (`expr_<...>` for an EXPR model: `expr_face`, `expr_fusion_gated_moe`)."""
        return task_name(self.base if self.kind == "head" else f"fusion_{self.base}", self.task)

    @property
    def params_section(self) -> str:
        """Its params.yaml section: `train.<name>` for heads, `fuse.<name>` for fusions."""
        return f"{'train' if self.kind == 'head' else 'fuse'}.{self.name}"

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def task_overrides(self) -> dict[str, str]:
        """Config keys the registry fixes: the model's `task` (an EXPR entry trains on EXPR labels)."""
        return {"task": self.task}

    def build(self, cfg: Any):
        """The `Head` of this model for a built config."""
        return getattr(importlib.import_module(self.module), self.head)(cfg)


def register_model(name: str, *, kind: Kind, config: type, inputs: tuple[str, ...],
                   tasks: tuple[Task, ...] = ("va",), weights: tuple[str, ...] = (),
                   optional: tuple[str, ...] = ()):
    """Class decorator and declaration of a head or fusion (read from the source by `_declared`):
    its registry name, kind, config dataclass, what it reads under data/, the tasks it trains for
    (an EXPR entry `expr_<name>` reads the EXPR heads' outputs), and the config fields that name
    weights it loads (each becomes a DVC dep of its stage, read from its params section), and the
    inputs it does without (`optional`: a modality the dataset has none of leaves it applicable)."""

    def deco(cls: type) -> type:
        if not hasattr(config, "__dataclass_fields__"):
            raise TypeError(f"register_model({name!r}): config {config!r} is not a dataclass")
        return cls

    return deco


def for_task(s: ModelSpec, task: Task) -> ModelSpec:
    """The entry of `s` trained for `task`: own name, and the same task's head outputs as inputs."""
    def renamed(i: str) -> str:
        return f"heads/{task_name(i[len('heads/'):], task)}" if i.startswith("heads/") else i

    return replace(s, name=task_name(s.name, task), inputs=tuple(map(renamed, s.inputs)),
                   optional=tuple(map(renamed, s.optional)), task=task)


def _declared() -> dict[str, ModelSpec]:
    """Every declared model and task variant: heads before fusions, VA before EXPR, then by name."""
    from pipeline.plugins import declarations

    entries = []
    for d in declarations("heads", "register_model"):
        base = ModelSpec(d.name, d.kwargs["kind"], d.module, d.kwargs["config"], d.cls, tuple(d.kwargs["inputs"]),
                         weights=tuple(d.kwargs.get("weights", ())), optional=tuple(d.kwargs.get("optional", ())))
        entries += [for_task(base, task) for task in d.kwargs.get("tasks", ("va",))]
    order = {"head": 0, "fusion": 1}
    entries.sort(key=lambda s: (s.task != "va", order[s.kind], s.base))
    return {s.name: s for s in entries}


REGISTRY: dict[str, ModelSpec] = _declared()
HEADS: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.kind == "head")
FUSIONS: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.kind == "fusion")
DEFAULT_MODEL = "fusion_gated_moe"   # predict's choice when nothing was evaluated yet


def spec(name: str, kind: Kind | None = None) -> ModelSpec:
    """The entry `name` (optionally of one kind); a ValueError lists the known names."""
    s = REGISTRY.get(name)
    if s is None or (kind is not None and s.kind != kind):
        known = [n for n, x in REGISTRY.items() if kind is None or x.kind == kind]
        raise ValueError(f"unknown {kind or 'model'} {name!r}; known: {', '.join(known)}")
    return s


def by_model_name(model_name: str) -> ModelSpec:
    """The entry whose `model_name` (metrics / predict name, e.g. `fusion_raav`) is `model_name`."""
    for s in REGISTRY.values():
        if s.model_name == model_name:
            return s
    raise ValueError(f"unknown model {model_name!r}; known: {', '.join(model_names(None))}")


def model_names(task: str | None = "va") -> list[str]:
    """Every model's metrics / predict name of `task` (None: every task), heads first."""
    return [s.model_name for s in specs(task)]


def specs(task: str | None = None, kind: Kind | None = None) -> list[ModelSpec]:
    """The entries of one task and/or kind (None: any), in registry order."""
    return [s for s in REGISTRY.values() if (task is None or s.task == task) and (kind is None or s.kind == kind)]
