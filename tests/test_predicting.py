"""affcache.predicting and the one Predictor of both tasks: the parts that need no trained project
(tests/test_predict.py runs the whole path on a tiny trained demo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affcache.predicting import choose_model, under
from affcache.stages import Layout
from pipeline.config import Params


def test_under_puts_relative_local_paths_in_the_project(tmp_path):
    assert under(tmp_path, "data/predictions") == tmp_path / "data" / "predictions"
    assert under(tmp_path, tmp_path.parent / "out") == tmp_path.parent / "out"
    assert under(tmp_path, "s3://bucket/features") == "s3://bucket/features"
    assert under(None, "data/predictions") == Path("data/predictions")


def test_layout_from_params_reads_the_project_at_its_root(tmp_path):
    layout = Layout.from_params(Params({"storage": {"features": "cache/features"}}, tmp_path / "params.yaml"), tmp_path)
    assert layout.head_dir("face") == tmp_path / "data" / "heads" / "face"
    assert layout.metrics == tmp_path / "metrics"
    assert layout.feature_dir("audio") == f"{tmp_path / 'cache' / 'features'}/audio"
    remote = Layout.from_params(Params({"storage": {"features": "s3://b/f"}}, tmp_path / "params.yaml"), tmp_path)
    assert remote.feature_dir("audio") == "s3://b/f/audio"
    assert Layout.from_params(Params({}, Path("params.yaml"))).head_dir("face") == Path("data/heads/face")


def test_the_best_model_is_read_from_the_project_not_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "summary.json").write_text(json.dumps({"best": {"model": "audio", "ccc_mean": 0.3}}))
    monkeypatch.chdir(tmp_path.parent)
    params = Params({}, tmp_path / "params.yaml")
    assert choose_model(params, Layout.from_params(params, tmp_path)) == "audio"
    assert choose_model(params, Layout.from_params(params)) == "fusion_gated_moe"  # nothing evaluated here


def test_one_loader_for_both_tasks_names_unknown_models(tmp_path):
    from heads.inference import ModelLoadError, load_predictor

    heads = {"face": tmp_path / "face", "expr_face": tmp_path / "expr_face"}
    with pytest.raises(ModelLoadError, match="unknown model 'fusion_x'; choose one of face, expr_face"):
        load_predictor("fusion_x", heads, {})
    with pytest.raises(ModelLoadError, match="unknown model 'fusion_raav'"):
        load_predictor("fusion_raav", heads, {})  # a fusion this pipeline does not train
    with pytest.raises(ModelLoadError, match=r"expr_face.*model.pt: trained model not found"):
        load_predictor("expr_face", heads, {})  # an EXPR head: looked up under its own registry name


def test_a_model_answers_only_for_its_task():
    from heads.inference import ModelLoadError, Predictor

    with pytest.raises(ModelLoadError, match="expr_face is a model of task 'expr'; it has no 'va' output"):
        Predictor("expr_face", {}, task="expr").predict({})
    with pytest.raises(ModelLoadError, match="face is a model of task 'va'; it has no 'expr' output"):
        Predictor("face", {}).probabilities({})


def test_a_checkpoints_weight_fields_are_read_under_the_project(tmp_path):
    """The audio head's fine-tuned backbone (`backbone_dir`, a registry weights field) is named
    relative to the project in its checkpoint config, as training read it."""
    from heads.audio_pooling import AudioPoolingConfig
    from heads.inference import under_project
    from heads.registry import spec

    fields = spec("audio").weights
    assert "backbone_dir" in fields
    cfg = AudioPoolingConfig(backbone_dir="models/wavlm")
    assert under_project(cfg, fields, tmp_path).backbone_dir == str(tmp_path / "models" / "wavlm")
    assert under_project(cfg, fields, None) is cfg
    assert under_project(AudioPoolingConfig(), fields, tmp_path).backbone_dir is None
    assert under_project(AudioPoolingConfig(backbone_dir="/abs/wavlm"), fields, tmp_path).backbone_dir == "/abs/wavlm"
