"""The head contract: what every unimodal head AND every fusion supplies to the one training driver.

Why one interface: training (`heads.train.train_model`), inference (`heads.inference`) and the
stages only ever talk to a `Head`, so they never branch on which model it is, and a new model is
one module plus one registry entry (`heads.registry`). A `Head` wraps its config; it owns

- `load`: its input records from the cache (feature stores) or from the heads' outputs (fusions),
- `prepare`: per-video model inputs built ONCE per run (in RAM, aligned to the label grid),
- `build_bank`: the training windows as one in-RAM bank (`gather(idx) -> batch`, see heads.train),
- `build_model`, `loss`: the network and the batch loss,
- `predict`: per-frame outputs (`heads.outputs.HeadOutput`) of a list of videos,
- `targets`: the label grid values and validity used by the one scorer (`heads.outputs.score`).

`dims` are the shapes the model is built with that come from data (input width, rows per bin);
they are saved in the checkpoint so inference rebuilds the model without the training data.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Generic, Mapping, Protocol, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from heads.outputs import HeadOutput
from heads.train import TrainConfig

TASK_OUTPUTS = {"va": 2, "expr": 8}  # outputs per frame: valence/arousal, or 8 expression logits

C = TypeVar("C")
LossFn = Callable[[nn.Module, dict], torch.Tensor]


class Bank(Protocol):
    """Training windows held in RAM; a batch is an index gather (the `heads.train.Batches` contract)."""

    def __len__(self) -> int: ...

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]: ...


class Head(abc.ABC, Generic[C]):
    """One trainable model (a unimodal head or a fusion) behind the one training driver.

    Class attributes: `name` (the registry name, written into the checkpoint), `kind` ("head" or
    "fusion": where its outputs live and what its store is called), `fill_missing`
    (the scorer fills frames the model marked invalid with the nearest prediction -- the
    submission rule -- before scoring; fusions select epochs that way, heads score only the
    frames they predicted), `select_array` (the output array validation selects on: fusions
    select on the unsmoothed `pred_raw`, as published).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "head"
    fill_missing: ClassVar[bool] = False
    select_array: ClassVar[str] = "pred"

    def __init__(self, cfg: C) -> None:
        self.cfg = cfg
        # EXPR: per-class loss weights [8] from the training labels (set by the driver before
        # `loss()`; None = unweighted), see heads.losses.class_weights
        self.class_weight: torch.Tensor | None = None
        self.check()

    # ----------------------------------------------------------------- settings
    @property
    def train_config(self) -> TrainConfig:
        """The `train:` block every head and fusion config nests (same shape everywhere)."""
        return self.cfg.train  # type: ignore[attr-defined]

    @property
    def task(self) -> str:
        return str(getattr(self.cfg, "task", "va"))

    @property
    def registry_name(self) -> str:
        """The registry entry this model is (`face`, or `expr_face` for the face head on EXPR)."""
        from heads.registry import task_name

        return task_name(self.name, self.task)

    @property
    def metric(self) -> str:
        """The validation metric the driver keeps the best epoch on (ABAW: CCC mean / macro F1)."""
        return "ccc_mean" if self.task == "va" else "f1"

    def check(self) -> None:
        """Raise ValueError for a config that cannot work (called before any data is read).

        The default checks the config's `task` (heads that add rules call it first)."""
        task = getattr(self.cfg, "task", "va")
        if task not in TASK_OUTPUTS:
            raise ValueError(f"{type(self.cfg).__name__}.task must be 'va' or 'expr', got {task!r}")

    # ----------------------------------------------------------------- data
    @abc.abstractmethod
    def load(self, records: Sequence, urls: Mapping[str, str]) -> list:
        """Input records of every indexed video; `urls` maps each registry input to its store URL."""

    @abc.abstractmethod
    def prepare(self, videos: Sequence) -> dict[str, Any]:
        """Per-video model inputs, by video id (built once; batches only gather from them)."""

    @abc.abstractmethod
    def dims(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        """Model shapes that come from the data (saved in the checkpoint)."""

    def input_width(self, inp: Any) -> int | None:
        """Feature width of one video's prepared inputs (None: no input) -- checked at inference."""
        return None

    @abc.abstractmethod
    def build_bank(self, videos: Sequence, inputs: Mapping[str, Any], dims: Mapping[str, int]) -> tuple[Bank, dict]:
        """Training windows of the train split and their statistics (merged into the metrics)."""

    @abc.abstractmethod
    def targets(self, video: Any) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid) on the video's label grid; all invalid when it has no labels."""

    # ----------------------------------------------------------------- model
    @abc.abstractmethod
    def build_model(self, dims: Mapping[str, int]) -> nn.Module:
        """A freshly initialised model (the caller seeds torch first)."""

    def materialize(self, model: nn.Module, bank: Bank) -> None:
        """Give lazy layers their shapes before the optimiser sees the parameters (default: none)."""

    @abc.abstractmethod
    def loss(self) -> LossFn:
        """`loss(model, batch) -> scalar` over one batch gathered from the bank."""

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        """Optimiser parameter groups (own learning rates); None = all trainable parameters."""
        return None

    @abc.abstractmethod
    def predict(self, model: nn.Module, videos: Sequence, inputs: Mapping[str, Any], dims: Mapping[str, int],
                device: torch.device) -> dict[str, HeadOutput]:
        """Per-frame outputs of `videos` on their label grids (a list, so fusions can batch windows)."""

    def final_outputs(self, outputs: dict[str, HeadOutput]) -> dict[str, HeadOutput]:
        """The outputs to write after training (and at inference), from `predict`'s.

        The identity by default; a fusion whose written outputs are smoothed differently from the
        validation outputs that selected its epoch re-smooths them here.
        """
        return outputs

    def output_attrs(self) -> dict:
        """Extra attributes of the output store (e.g. the fusion's gate names)."""
        return {}

    def check_inputs(self, inputs: Mapping[str, Any], dims: Mapping[str, int]) -> None:
        """Raise ValueError naming the first video whose inputs have another width than the model's.

        Features from another extractor config would be silently wrong at inference.
        """
        want = dims.get("in_dim")
        for vid, inp in inputs.items():
            got = self.input_width(inp)
            if want is not None and got is not None and got != want:
                raise ValueError(f"the {self.name} model was trained on inputs of width {want} but video {vid} "
                                 f"gives {got}")

    def summary(self) -> dict:
        """Extra metrics keys describing the model (e.g. the fusion's gate names)."""
        return {}
