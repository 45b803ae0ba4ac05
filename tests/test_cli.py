"""The `affcache` command line: help texts, store tools, and clear errors for bad params."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from affcache.cli import main
from pipeline.config import ParamsError, build_config, load_params

COMMANDS = ["demo-data", "demo-models", "index", "extract", "train", "fuse", "evaluate", "report", "export",
            "predict", "store"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_store_tools_on_a_store_written_here(tmp_path: Path) -> None:
    from pipeline.store import FeatureStore

    url = str(tmp_path / "face" / "grada-test.zarr")
    store = FeatureStore.create(url, extractor="grada", fingerprint={"model": "test"})
    n = 12
    store.write_video("v1", {"emb": np.ones((n, 4), np.float32), "t0": np.arange(n, dtype=np.float32),
                             "t1": np.arange(1, n + 1, dtype=np.float32), "valid": np.ones(n, bool)})
    runner = CliRunner()
    verified = runner.invoke(main, ["store", "verify", url])
    assert verified.exit_code == 0 and "ok" in verified.output
    info = runner.invoke(main, ["store", "info", url])
    assert info.exit_code == 0 and "grada" in info.output
    exported = runner.invoke(main, ["store", "export-h5", url, str(tmp_path / "out.h5")])
    assert exported.exit_code == 0 and (tmp_path / "out.h5").stat().st_size > 0


def test_store_verify_reports_a_missing_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["store", "verify", str(tmp_path / "nope.zarr")])
    assert result.exit_code != 0
    assert "nope.zarr" in result.output
    assert not (tmp_path / "nope.zarr").exists()  # verifying a missing store creates nothing


def test_unknown_param_is_named_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["train"]["face"]["windw"] = 10  # typo
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "face"])
    assert result.exit_code != 0
    assert "params.yaml" in result.output and "windw" in result.output and "window" in result.output


def test_missing_params_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["evaluate"])
    assert result.exit_code != 0 and "params.yaml" in result.output and "not found" in result.output


def test_missing_index_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "audio"])
    assert result.exit_code != 0 and "index" in result.output


@dataclasses.dataclass
class Inner:
    k: int = 3
    names: tuple[str, ...] = ("a",)


@dataclasses.dataclass
class Outer:
    lr: float = 0.1
    device: str = "auto"
    limit: float | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_build_config_is_strict_and_typed() -> None:
    cfg = build_config(Outer, {"lr": 1, "inner": {"names": ["x", "y"]}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.inner == Inner(3, ("x", "y"))
    assert build_config(Outer, {"limit": None}).limit is None
    with pytest.raises(ParamsError, match="inner.k: expected an integer"):
        build_config(Outer, {"inner": {"k": "three"}})
    with pytest.raises(ParamsError, match="unknown option"):
        build_config(Outer, {"lrr": 1})
    with pytest.raises(ParamsError, match="expected a number"):
        build_config(Outer, {"lr": True})


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("params_file", [ROOT / "params.yaml", ROOT / "affcache" / "profiles" / "paper.yaml"])
def test_params_sections_build_their_configs(params_file: Path) -> None:
    """Every section of the shipped params files builds the config its stage uses (no typo ships)."""
    from heads.registry import REGISTRY
    from affcache.project_extractors import build_extractor

    params = load_params(params_file)
    for modality in ("face", "audio", "behavior", "reliability"):
        assert build_extractor(params, modality).modality == modality
    for spec in REGISTRY.values():
        spec.build(params.build(spec.params_section, spec.config_class()))
    assert json.dumps(params.data)  # plain YAML types only


def test_version() -> None:
    import affcache

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"affcache {affcache.__version__}"
    assert affcache.__version__ not in ("", "0+unknown")


def test_shared_options_after_the_subcommand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--params` after the subcommand wins over the default; `-q` after it is accepted too."""
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["train"]["face"]["windw"] = 10
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "face", "-q", "--params", "other.yaml"])
    assert result.exit_code != 0
    assert "other.yaml" in result.output and "windw" in result.output


def _project_with_index(tmp_path: Path) -> Path:
    from pipeline.records import Video, write_index

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    videos = [Video(video_id=v, media_path=f"{v}.mp4", fps=10.0, num_frames=10, duration=1.0, has_audio=False,
                    split="train") for v in ("a", "b")]
    write_index(videos, tmp_path / "data" / "index.json")
    return tmp_path


def test_extract_names_unknown_video_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(_project_with_index(tmp_path))
    result = CliRunner().invoke(main, ["extract", "reliability", "--videos", "a,zzz"])
    assert result.exit_code != 0
    assert "zzz" in result.output and "index.json" in result.output and "a, b" in result.output


def test_extract_device_on_a_cpu_only_extractor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(_project_with_index(tmp_path))
    result = CliRunner().invoke(main, ["extract", "reliability", "--device", "cuda"])
    assert result.exit_code != 0
    assert "--device" in result.output and "no device setting" in result.output


def test_select_videos_keeps_index_order() -> None:
    from pipeline.records import Video
    from affcache.stages.extract import select_videos

    videos = [Video(video_id=v, media_path=f"{v}.mp4", fps=10.0, num_frames=1, duration=0.1, has_audio=False,
                    split="train") for v in "abc"]
    assert [v.video_id for v in select_videos(videos, ["c", "a"], Path("index.json"))] == ["a", "c"]
    assert select_videos(videos, None, Path("index.json")) == videos


@pytest.mark.parametrize("option,value", [("--split", "valdiation"), ("--model", "fusion_mo")])
def test_export_choices_list_the_valid_values(option: str, value: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", option, value, "--out", str(tmp_path / "x.txt")])
    assert result.exit_code == 2
    assert "validation" in result.output if option == "--split" else "fusion_gated_moe" in result.output


def test_export_late_fusion_without_its_store_says_how_to_make_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = CliRunner().invoke(main, ["export", "--model", "late_fusion", "--out", str(tmp_path / "x.txt")])
    assert result.exit_code != 0
    assert "data/fusion/late_fusion/outputs.zarr: not found" in result.output
    assert "evaluate.late_fusion" in result.output and not (tmp_path / "x.txt").exists()
