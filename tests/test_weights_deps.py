"""Encoder weights are DVC deps of their extraction stages, and the paper profile builds no demo stage.

`extract.<modality>.weights` is listed in dvc.yaml; `check_weights` refuses a config that loads its
weights from somewhere that dep does not cover, so DVC can never call a stale store up to date.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_dvc_deps import DVC_TIMEOUT, stage_deps

from pipeline.config import Params, ParamsError
from affcache.stages.extract import check_weights

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "affcache" / "profiles" / "paper.yaml"


@dataclass
class _Cfg:
    model: str | None = None
    ssl_weights: str | None = None
    weights: str | None = None


def _params(tmp_path: Path, weights: str | None) -> Params:
    data = {"extract": {"audio": {"extractor": "speech_ssl", **({"weights": weights} if weights else {})}}}
    return Params(data, tmp_path / "params.yaml")


def _project(tmp_path: Path, params_file: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    shutil.copy(params_file, project / "params.yaml")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, check=True, timeout=DVC_TIMEOUT)
    return project


def test_paper_profile_builds_no_demo_stage_and_depends_on_the_real_weights(tmp_path):
    deps = stage_deps(_project(tmp_path, PAPER))
    assert not [s for s in deps if s.startswith("demo")], sorted(deps)
    paper = yaml.safe_load(PAPER.read_text())
    for modality in ("face", "audio", "behavior"):
        weights = paper["extract"][modality]["weights"]
        assert weights in deps[f"extract_{modality}"], (modality, deps[f"extract_{modality}"])
        assert not any(d.startswith("data/models/demo") for d in deps[f"extract_{modality}"])


def test_demo_profile_builds_the_demo_stages_and_depends_on_each_encoder_folder(tmp_path):
    deps = stage_deps(_project(tmp_path, REPO / "params.yaml"))
    assert {"demo_data@demo", "demo_models@demo"} <= set(deps)
    assert "data/models/demo/grada" in deps["extract_face"]
    assert "data/models/demo/wavlm" in deps["extract_audio"]
    assert "data/models/demo/qwen3vl" in deps["extract_behavior"]
    assert "data/models/demo/wavlm" not in deps["extract_face"]  # one encoder's weights re-run only its stage


def test_a_local_model_outside_the_declared_weights_is_refused(tmp_path):
    model = tmp_path / "models" / "wavlm"
    model.mkdir(parents=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    check_weights(_params(tmp_path, str(tmp_path / "models")), "audio", _Cfg(model=str(model)))
    check_weights(_params(tmp_path, str(model)), "audio", _Cfg(model=str(model)))
    with pytest.raises(ParamsError, match=r"config.model .* is not inside extract.audio.weights"):
        check_weights(_params(tmp_path, str(other)), "audio", _Cfg(model=str(model)))
    with pytest.raises(ParamsError, match="extract.audio.weights is not set"):
        check_weights(_params(tmp_path, None), "audio", _Cfg(model=str(model)))


def test_a_hub_id_is_covered_by_its_hugging_face_cache_folder(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # HF_HOME=<tmp>/hf
    cache = tmp_path / "hf" / "hub" / "models--3loi--SER-Odyssey-Baseline-WavLM-Multi-Attributes"
    cfg = _Cfg(model="microsoft/wavlm-large", ssl_weights="3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes")
    check_weights(_params(tmp_path, str(cache)), "audio", cfg)
    # the same params in a process whose Hugging Face cache is elsewhere (HF_HOME not kept set for
    # `dvc repro`): DVC would watch one copy of the weights while the extractor reads another
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "home" / ".cache" / "huggingface" / "hub"))
    with pytest.raises(ParamsError, match=r"set HF_HOME=.*hf .*dvc repro"):
        check_weights(_params(tmp_path, str(cache)), "audio", cfg)
    with pytest.raises(ParamsError, match="holds none of the weights"):
        check_weights(_params(tmp_path, str(tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-VL-4B-Instruct")),
                      "audio", cfg)


def test_a_config_that_loads_no_weights_needs_no_dep(tmp_path):
    check_weights(_params(tmp_path, None), "audio", _Cfg())
