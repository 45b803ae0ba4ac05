"""The params schema: one pydantic check of every section and key, with errors naming file and key."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import Params, ParamsError, Schema, build_config, check_params

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Leaf:
    size: int = 1
    names: tuple[str, ...] = ("a",)


@dataclasses.dataclass
class Tree:
    rate: float = 0.5
    path: Path = Path("x")
    either: int | str = 0
    leaf: Leaf = dataclasses.field(default_factory=Leaf)

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError("rate must be >= 0")


def test_build_config_nested_tuples_and_paths() -> None:
    tree = build_config(Tree, {"path": "a/b", "leaf": {"names": ["x", "y"]}, "either": "s"})
    assert tree == Tree(0.5, Path("a/b"), "s", Leaf(1, ("x", "y")))
    assert isinstance(build_config(Tree, {"rate": 1}).rate, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"leaf": {"size": "4"}}, "f.yaml: s.leaf.size: expected an integer, got '4'"),
        ({"leaf": {"sizes": 4}}, "f.yaml: s.leaf: unknown option `sizes`; known options of Leaf: names, size"),
        ({"rate": True}, "f.yaml: s.rate: expected a number, got True"),
        ({"leaf": {"names": [1]}}, "f.yaml: s.leaf.names[0]: expected a string, got 1"),
        ({"either": 1.5}, "f.yaml: s.either: expected an integer or a string, got 1.5"),
        ({"leaf": 3}, "f.yaml: s.leaf: expected a mapping, got 3"),
        ({"rate": -1.0}, "f.yaml: s: rate must be >= 0"),
    ],
)
def test_build_config_errors_name_key_expected_and_found(data: dict, message: str) -> None:
    with pytest.raises(ParamsError) as err:
        build_config(Tree, data, where="f.yaml: s")
    assert str(err.value) == message


def shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def schema() -> Schema:
    from affcache.stages.schema import params_schema

    return params_schema()


@pytest.mark.parametrize("params_file", [ROOT / "params.yaml", ROOT / "affcache" / "profiles" / "paper.yaml"])
def test_shipped_params_pass_the_whole_file_check(params_file: Path) -> None:
    from pipeline.config import load_params

    check_params(load_params(params_file), schema())


def bad(edit) -> str:
    data = copy.deepcopy(shipped())
    edit(data)
    with pytest.raises(ParamsError) as err:
        check_params(Params(data, Path("p/params.yaml")), schema())
    return str(err.value)


def test_worker_count_must_be_an_integer() -> None:
    msg = bad(lambda d: d["extract"]["face"].update(workers="two"))
    assert msg == "p/params.yaml: extract.face.workers: expected an integer, got 'two'"


def test_worker_count_must_be_positive() -> None:
    msg = bad(lambda d: d["extract"]["audio"].update(prefetch=0))
    assert msg == "p/params.yaml: extract.audio.prefetch: expected a value >= 1, got 0"


def test_typo_in_extract_entry_lists_known_keys() -> None:
    msg = bad(lambda d: d["extract"]["face"].update(worker=2))
    assert msg.startswith("p/params.yaml: extract.face: unknown option `worker`; known options of ExtractParams: ")
    assert "workers" in msg and "prefetch" in msg


def test_engine_and_ray_block_are_checked() -> None:
    msg = bad(lambda d: d["extract"]["face"].update(engine="dask"))
    assert msg.startswith("p/params.yaml: extract.face.engine: ") and "'local'" in msg and "'ray'" in msg
    msg = bad(lambda d: d["extract"]["face"].update(engine="ray", ray={"actor": 2}))
    assert "p/params.yaml: extract.face.ray: unknown option `actor`; known options of RayConfig" in msg
    assert "actors" in msg and "gpus_per_actor" in msg
    msg = bad(lambda d: d["extract"]["behavior"].update(ray={"actors": 0}))
    assert "extract.behavior.ray" in msg and "actors must be >= 1" in msg


def test_extractor_config_is_checked_against_its_class() -> None:
    msg = bad(lambda d: d["extract"]["face"]["config"].update(image_sise=64))
    assert "p/params.yaml: extract.face.config: unknown option `image_sise`; known options of FaceConfig" in msg
    msg = bad(lambda d: d["extract"]["face"].update(extractor="gradaa"))
    assert "p/params.yaml: extract.face.extractor: unknown extractor 'gradaa'; known: " in msg
    assert "grada, " in msg and "speech_ssl" in msg  # other tests may register extra extractors


def test_dataset_options_typed_per_adapter() -> None:
    msg = bad(lambda d: d["dataset"].update(options={"workers": "4"}))
    assert msg == "p/params.yaml: dataset.options.workers: expected an integer, got '4'"
    msg = bad(lambda d: d["dataset"].update(adapter="folder", options={"tasks": ["va"]}))
    assert msg.startswith("p/params.yaml: dataset.options: unknown option `tasks`; known options of FolderAdapterOptions")
    msg = bad(lambda d: d["dataset"].update(adapter="csv"))
    assert msg == "p/params.yaml: dataset.adapter: unknown dataset adapter 'csv'; known: affwild2, folder"


def test_evaluate_split_is_a_choice() -> None:
    msg = bad(lambda d: d["evaluate"].update(split="valdiation"))
    assert msg == "p/params.yaml: evaluate.split: unknown split 'valdiation'; known: train, validation, test"


def test_late_fusion_models_must_be_known() -> None:
    msg = bad(lambda d: d["evaluate"]["late_fusion"].update(models=["behaviour"]))
    assert msg.startswith("p/params.yaml: evaluate.late_fusion.models[0]: unknown model 'behaviour'; known: audio, behavior, face, ")


def test_other_sections() -> None:
    assert "demo.preset: 'huge' is not one of 'default' or 'tiny'" in bad(lambda d: d["demo"].update(preset="huge"))
    assert "demo.overrides: unknown option `fps_typo`" in bad(lambda d: d["demo"].update(overrides={"fps_typo": 1}))
    assert "report: unknown option `video`" in bad(lambda d: d["report"].update(video=3))
    assert "predict.model: unknown model 'fusion_x'" in bad(lambda d: d.update(predict={"model": "fusion_x"}))
    assert "unknown section(s) extrct" in bad(lambda d: d.update(extrct={}))


def test_all_problems_reported_at_once() -> None:
    def edit(d: dict) -> None:
        d["extract"]["face"]["workers"] = "two"
        d["evaluate"]["split"] = "valdiation"

    assert len(bad(edit).splitlines()) == 2


def test_train_entries_use_the_classes_the_caller_passes() -> None:
    @dataclasses.dataclass
    class FaceHead:
        window: int = 100

    data = {"train": {"face": {"window": "long"}, "mouth": {}}}
    with pytest.raises(ParamsError) as err:
        check_params(Params(data, Path("p.yaml")), Schema(sections={"train.face": FaceHead}))
    assert str(err.value).splitlines() == [
        "p.yaml: train.face.window: expected an integer, got 'long'",
        "p.yaml: train: unknown entry `mouth`; known: face",
    ]
    check_params(Params(data, Path("p.yaml")), Schema())  # no classes given: the train stage checks its own
