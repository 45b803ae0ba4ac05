"""The "not applicable" rule (affcache.stages.applicable): a model whose required inputs the dataset has
no media for, or whose task it has no labels of, is not trained; its stage writes a marker instead, and
the consumers skip it. Fast: records built here, no store, no training. The whole `dvc repro` on an
audio-only corpus is the story in tests/test_dvc_audio_only.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from affcache.stages import Layout
from affcache.stages.applicable import (MARKER, applicable_dirs, modality_media, not_applicable,
                                        not_applicable_model, reason_not_applicable, static_reason,
                                        write_not_applicable)
from heads.registry import REGISTRY, spec
from pipeline.config import Params
from pipeline.records import Video


def video(vid: str, *, pictures: bool = True, sound: bool = True, tasks: tuple[str, ...] = ("va",),
          split: str = "train") -> Video:
    return Video(video_id=vid, media_path=f"{vid}.wav", fps=25.0, num_frames=50, duration=2.0, has_audio=sound,
                 split=split, labels={t: f"{vid}.{t}.csv" for t in tasks}, has_video=pictures)


MEDIA = modality_media(None)  # the declared default extractors


def not_applicable_names(videos: list[Video], media=MEDIA) -> dict[str, str]:
    return {n: r for n, s in REGISTRY.items() if (r := reason_not_applicable(s, videos, media))}


def test_the_default_extractors_read_pictures_except_the_audio_one() -> None:
    assert MEDIA == {"audio": "sound", "behavior": "pictures", "face": "pictures", "reliability": "pictures",
                     "sun_audio": "sound", "sun_face": "pictures"}


def test_an_audio_only_corpus_trains_the_audio_heads_only() -> None:
    videos = [video("a", pictures=False), video("b", pictures=False, split="validation")]
    na = not_applicable_names(videos)
    assert "audio" not in na and "sun_audio" not in na  # their reliability input (pictures) is declared optional
    assert set(na) == set(REGISTRY) - {"audio", "sun_audio"}
    assert na["face"] == "no video has pictures (face store empty): the face head needs features/face"
    assert na["behavior"].startswith("no video has pictures (behavior store empty)")
    assert na["gated_moe"].endswith("and the gated_moe fusion needs heads/face")
    assert na["expr_audio"] == "no video has EXPR labels: the expr_audio head learns them"


def test_one_video_with_pictures_makes_the_picture_models_applicable() -> None:
    videos = [video("a", pictures=False), video("b", tasks=("va", "expr")), video("c", pictures=False)]
    assert not_applicable_names(videos) == {}


def test_a_silent_corpus_drops_the_audio_head_and_the_fusions_that_fuse_it() -> None:
    videos = [video("a", sound=False), video("b", sound=False)]
    na = not_applicable_names(videos)
    assert {n for n in na if not n.startswith("expr_")} == {"audio", "gated_moe", "raav", "sun_audio", "sun_av"}  # dcmmoe: face+behavior
    assert na["audio"].startswith("no video has sound (audio store empty)")


def test_a_static_encoder_needs_pictures_and_labels_of_its_task() -> None:
    """train_static_<name> follows the same rule for the modality its weights are for."""
    assert static_reason("sun_face", "va", [video("a", pictures=False)], MEDIA) == (
        "no video has pictures (sun_face store empty): the sun_face encoder fine-tunes on face crops")
    assert static_reason("sun_face", "va", [video("a", pictures=False), video("b")], MEDIA) is None
    assert static_reason("sun_face", "expr", [video("a")], MEDIA) == (
        "no video has EXPR labels: the sun_face encoder learns them")


def test_the_rule_follows_the_extractor_the_params_choose(tmp_path: Path) -> None:
    """A modality whose chosen extractor is a project's own (not declared here) is never called not
    applicable: the head's own error then speaks if its store is empty."""
    params = Params({"extract": {"face": {"extractor": "my_project_encoder"}}}, tmp_path / "params.yaml")
    media = modality_media(params)
    assert "face" not in media and media["audio"] == "sound"
    assert reason_not_applicable(spec("face"), [video("a", pictures=False)], media) is None


def test_the_marker_and_the_consumers(tmp_path: Path, caplog) -> None:
    layout = Layout(root=tmp_path)
    face, audio = layout.head_dir("face"), layout.head_dir("audio")
    audio.mkdir(parents=True)
    (face / "stale.pt").parent.mkdir(parents=True)
    (face / "stale.pt").write_text("an earlier run's model")
    reason = "no video has pictures (face store empty): the face head needs features/face"
    with caplog.at_level(logging.WARNING, logger="affcache.stages.applicable"):
        write_not_applicable(face, layout.metrics / "face.json", layout.plots / "history" / "face.json", "face", reason)
    assert [r.getMessage() for r in caplog.records] == [f"face: not applicable, not trained: {reason}"]
    assert sorted(p.name for p in face.iterdir()) == [MARKER]  # nothing left to evaluate by mistake
    assert json.loads((layout.metrics / "face.json").read_text()) == {
        "not_applicable": "no video has pictures (face store empty)"}
    assert json.loads((layout.plots / "history" / "face.json").read_text()) == []
    assert not_applicable(face) == reason and not_applicable(audio) is None
    assert not_applicable_model(layout, "face") == reason and not_applicable_model(layout, "audio") is None
    assert applicable_dirs({"face": face, "audio": audio}) == {"audio": audio}


def test_predict_falls_back_from_a_not_applicable_default_and_refuses_one_named(tmp_path: Path) -> None:
    from affcache.predicting import choose_model
    from heads.registry import DEFAULT_MODEL, by_model_name
    from pipeline.config import ParamsError

    layout = Layout(root=tmp_path)
    for name in ("face", "behavior", DEFAULT_MODEL):
        s = by_model_name(name)
        write_not_applicable(layout.model_dir(s.kind, s.name), layout.metrics / f"{name}.json",
                             layout.plots / "history" / f"{name}.json", name, "no pictures")
    params = Params({}, tmp_path / "params.yaml")
    assert choose_model(params, layout) == "audio"  # the first applicable VA model, logged
    with pytest.raises(ParamsError, match="face is not applicable .*no pictures.*use one of audio"):
        choose_model(params, layout, "face")
