"""affcache.project_extractors: extractors built from params, read under a project root given explicitly."""

from __future__ import annotations

from pathlib import Path

import pytest

from affcache.project_extractors import build_extractor, dataset_paths, extractor_config, under_root
from pipeline.config import Params, ParamsError


def project(tmp_path: Path) -> Params:
    """A project whose audio encoder is a local folder named relative to the project."""
    (tmp_path / "models" / "wavlm").mkdir(parents=True)
    (tmp_path / "models" / "wavlm" / "config.json").write_text("{}")
    data = {"dataset": {"root": "raw"},
            "extract": {"audio": {"extractor": "speech_ssl", "config": {"model": "models/wavlm", "device": "cpu"}},
                        "reliability": {"extractor": "reliability",
                                        "config": {"mouth_method": "csv", "mouth_csv_dir": "mouth"}}}}
    return Params(data, tmp_path / "params.yaml")


def test_a_relative_model_is_read_under_the_root_and_fingerprinted_as_params_name_it(tmp_path, monkeypatch):
    params = project(tmp_path)
    monkeypatch.chdir(tmp_path)
    in_project = build_extractor(params, "audio")  # as a stage runs it: in the project folder
    assert in_project.cfg.model == "models/wavlm"
    key = in_project.fingerprint()
    monkeypatch.chdir(tmp_path.parent)
    elsewhere = build_extractor(params, "audio", root=tmp_path)
    assert elsewhere.cfg.model == str(tmp_path / "models" / "wavlm")  # the folder that loads
    assert elsewhere.fingerprint() == key  # the same store key
    assert elsewhere.fingerprint()["weights"] is not None  # the content was found and hashed


def test_dataset_relative_paths_follow_the_dataset_root_under_the_project(tmp_path):
    params = project(tmp_path)
    _, cfg = extractor_config(params, "reliability")
    assert cfg.mouth_csv_dir == str(Path("raw") / "mouth")
    assert dataset_paths(params, cfg.__class__(mouth_csv_dir="mouth"), tmp_path).mouth_csv_dir == \
        str(tmp_path / "raw" / "mouth")


def test_under_root_leaves_names_that_are_no_project_file(tmp_path):
    params = project(tmp_path)
    _, cfg = extractor_config(params, "audio", {"model": "microsoft/wavlm-large"})
    moved_cfg, moved = under_root(cfg, tmp_path)
    assert moved_cfg == cfg and moved == {}


def test_params_errors_name_the_section(tmp_path):
    params = project(tmp_path)
    with pytest.raises(ParamsError, match="--nope: the audio extractor .* has no nope setting"):
        extractor_config(params, "audio", {"nope": 1})
    wrong = Params({"extract": {"face": {"extractor": "speech_ssl"}}}, tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="extract.face.extractor: 'speech_ssl' extracts 'audio', not 'face'"):
        extractor_config(wrong, "face")
    unknown = Params({"extract": {"face": {"extractor": "gradaa"}}}, tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="extract.face.extractor: unknown extractor 'gradaa'"):
        build_extractor(unknown, "face")


def test_under_root_passes_over_text_that_is_no_file_name(tmp_path):
    """The behaviour prompt (longer than a file name may be) is a config string, not a path."""
    from extractors.behavior import BehaviorConfig

    cfg = BehaviorConfig(model="models/wavlm")
    project(tmp_path)
    moved_cfg, moved = under_root(cfg, tmp_path)
    assert moved_cfg.prompt == cfg.prompt and moved == {str(tmp_path / "models" / "wavlm"): "models/wavlm"}
