"""dvc.yaml follows from the plug-in declarations: committed as generated, and a new plug-in is one
file plus its params section (then `affcache dvc-yaml`).

The full story, a new extractor, fusion and dataset adapter run through `dvc repro` on the repro'd tiny demo,
is `tests/test_dvc_stories.py::test_e_a_new_plugin_is_one_file_and_a_params_section`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from affcache import dvc_yaml

REPO = Path(__file__).resolve().parents[1]

NEW_EXTRACTOR = '''"""Per-frame mean brightness: a plug-in written for the test."""
from dataclasses import dataclass

import numpy as np

from extractors.registry import register


@dataclass
class BrightnessConfig:
    stride: int = 1


@register("brightness", modality="brightness", default=True)
class BrightnessExtractor:
    def __init__(self, cfg: BrightnessConfig):
        self.cfg = cfg

    def fingerprint(self) -> dict:
        return {"extractor": "brightness", "stride": self.cfg.stride}

    def load(self) -> None:
        pass

    def source(self, video):
        return video.media_path

    def prepare(self, video):
        from pipeline.media import iter_frames

        batches = list(iter_frames(video.media_path, size=(32, 32)))
        means = np.concatenate([b.images.reshape(len(b.images), -1).mean(1) for b in batches])
        times = np.concatenate([b.times for b in batches])
        return means[:: self.cfg.stride], times[:: self.cfg.stride]

    def compute(self, video, prepared):
        means, t = prepared
        return {"emb": means.astype(np.float16)[:, None], "t0": t.astype(np.float32),
                "t1": (t + 1 / video.fps).astype(np.float32), "valid": np.ones(len(t), bool)}
'''

NEW_FUSION = '''"""RAAV under a name of its own: a plug-in written for the test."""
from heads.fusion_raav import RAAV, RAAVConfig
from heads.registry import register_model


@register_model("raav_copy", kind="fusion", config=RAAVConfig,
                inputs=("heads/face", "heads/behavior", "heads/audio", "features/reliability"))
class RAAVCopy(RAAV):
    pass
'''


NEW_ADAPTER = '''"""A mirror of the ABAW release (the official tree under a name of its own): a plug-in written for
the test, reusing the Aff-Wild2 adapter whole."""
from dataclasses import dataclass

from pipeline.datasets.affwild2 import AffWild2Adapter
from pipeline.datasets.common import register_adapter


@register_adapter("abaw_mirror")
@dataclass
class AbawMirrorAdapter(AffWild2Adapter):
    pass
'''


def add_plugins(project: Path) -> None:
    """Write one new extractor, one new fusion and one new dataset adapter, and their params
    sections, into `project` (the dataset switches to the new adapter)."""
    (project / "extractors" / "brightness.py").write_text(NEW_EXTRACTOR)
    (project / "heads" / "fusion_raav_copy.py").write_text(NEW_FUSION)
    (project / "pipeline" / "datasets" / "abaw_mirror.py").write_text(NEW_ADAPTER)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"]["adapter"] = "abaw_mirror"
    params["extract"]["brightness"] = {"extractor": "brightness", "config": {"stride": 2}}
    params["fuse"]["raav_copy"] = {**params["fuse"]["raav"], "train": {"epochs": 2, "seed": 7}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_affcache(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project), "HF_HUB_OFFLINE": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(["affcache", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_committed_dvc_yaml_is_what_the_declarations_give() -> None:
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml.render(REPO), (
        "dvc.yaml is stale: run `affcache dvc-yaml` and commit it")


def test_every_declared_plugin_has_its_stage_and_module_as_dep() -> None:
    """What registries load by name (not followed by the import closure) is listed too."""
    from extractors.registry import declared_extractors
    from heads.registry import specs

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for s in declared_extractors().values():
        assert s.module.replace(".", "/") + ".py" in stages[f"extract_{s.modality}"]["deps"], s
    for s in specs():
        stage = stages[f"{'train' if s.kind == 'head' else 'fuse'}_{s.name}"]
        assert s.module.replace(".", "/") + ".py" in stage["deps"], s
        assert {f"data/{i}" for i in s.inputs} <= set(stage["deps"]), s


def test_a_new_plugin_gets_stages_cli_choices_and_schema(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for folder in ("affcache", "pipeline", "extractors", "heads"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / f, project / f)
    add_plugins(project)
    check = run_affcache(project, "dvc-yaml", "--check")
    assert check.returncode != 0 and "stale" in check.stderr
    assert run_affcache(project, "dvc-yaml").returncode == 0
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "extractors/brightness.py" in stages["extract_brightness"]["deps"]
    assert stages["extract_brightness"]["params"] == ["extract.brightness"]
    assert "heads/fusion_raav_copy.py" in stages["fuse_raav_copy"]["deps"]
    assert "data/fusion/raav_copy" in stages["evaluate"]["deps"]
    # the old stages keep their deps: a new plug-in does not invalidate them
    old = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["extract_face"] == old["extract_face"] and stages["fuse_raav"] == old["fuse_raav"]
    assert "pipeline/datasets/abaw_mirror.py" in stages["index"]["deps"]
    assert "brightness" in run_affcache(project, "extract", "--help").stdout
    assert "raav_copy" in run_affcache(project, "fuse", "--help").stdout
    assert "abaw_mirror" in run_affcache(project, "index", "--help").stdout
    shown = run_affcache(project, "params", "show", "params.yaml", "--stage", "fuse_raav_copy",
                         "--stage", "extract_brightness", "--stage", "index")
    assert shown.returncode == 0, shown.stderr
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["extract_brightness"]["config"] == {"stride": 2}
    assert resolved["fuse_raav_copy"]["train"]["epochs"] == 2
    assert resolved["index"]["adapter"] == "abaw_mirror" and "test_list" in resolved["index"]["options"]


def test_a_declaration_must_be_literal(tmp_path: Path) -> None:
    from pipeline.plugins import DeclarationError, _declarations_in

    f = tmp_path / "x.py"
    f.write_text("NAME = 'x'\n@register(NAME + '1', modality='m')\nclass X:\n    pass\n")
    with pytest.raises(DeclarationError, match="literals"):
        _declarations_in(f, "extractors.x", "register")
