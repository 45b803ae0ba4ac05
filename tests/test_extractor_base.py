"""The extraction engine: registry, incrementality, failure isolation, load-before-work."""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from extractors.base import (
    REGISTRY,
    BackgroundStream,
    Extractor,
    ExtractorError,
    RunReport,
    VideoError,
    autocast_context,
    failures_path,
    get_extractor,
    register,
    run_extraction,
    torch_device,
)
from pipeline.records import Video


@dataclass
class DummyConfig:
    scale: float = 1.0
    bad_load: bool = False


@register("dummy-test", modality="dummy")
class DummyExtractor:
    """Deterministic toy extractor; a video whose media file contains b'BOOM' fails in compute."""

    name = "dummy-test"
    modality = "dummy"

    def __init__(self, cfg: DummyConfig):
        self.cfg = cfg
        self.loaded = False
        self.prepared: list[str] = []

    def fingerprint(self) -> dict:
        return {"extractor": self.name, "scale": self.cfg.scale, "schema": 1}

    def load(self) -> None:
        if self.cfg.bad_load:
            raise ExtractorError("bad model id 'nope': not found; fix the dummy param")
        self.loaded = True

    def source(self, video: Video) -> str:
        return video.media_path

    def prepare(self, video: Video) -> bytes:
        assert self.loaded, "prepare before load"
        self.prepared.append(video.video_id)
        return Path(video.media_path).read_bytes()

    def compute(self, video: Video, prepared: bytes) -> dict[str, np.ndarray]:
        if b"BOOM" in prepared:
            raise VideoError(f"{video.media_path}: corrupt test video")
        n = 5
        i = np.arange(n, dtype=np.float32)
        return {"emb": np.full((n, 3), self.cfg.scale, np.float32), "t0": i / 10, "t1": (i + 1) / 10,
                "valid": np.ones(n, bool)}


def _video(tmp: Path, vid: str, content: bytes = b"ok") -> Video:
    p = tmp / "media" / f"{vid}.bin"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content)
    return Video(vid, str(p), fps=10.0, num_frames=5, duration=0.5, has_audio=False, split="train")


def test_registry_and_protocol() -> None:
    ext = get_extractor("dummy-test", DummyConfig())
    assert isinstance(ext, Extractor)
    assert REGISTRY["dummy-test"] is DummyExtractor
    with pytest.raises(ExtractorError, match="unknown extractor 'nope'.*dummy-test"):
        get_extractor("nope", DummyConfig())
    with pytest.raises(ExtractorError, match="registered twice"):
        register("dummy-test", modality="dummy")(type("Other", (), {}))
    # the built-in ones are found by name without importing their modules first
    from extractors.face import FaceConfig, GradaFaceExtractor

    assert isinstance(get_extractor("grada", FaceConfig(weights="w.pth")), GradaFaceExtractor)
    # configs travel to other processes (Ray): they must pickle
    assert pickle.loads(pickle.dumps(FaceConfig(weights="w.pth"))) == FaceConfig(weights="w.pth")


def test_torch_helpers() -> None:
    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ExtractorError, match="CUDA is not available"):
            torch_device("cuda")
    with autocast_context(torch.device("cpu"), bf16=True):  # no-op on CPU
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_incremental_runs(tmp_path: Path) -> None:
    from pipeline.store import FeatureStore, read_current

    root = str(tmp_path / "features")
    vids = [_video(tmp_path, f"v{i}") for i in range(3)]
    rep = run_extraction(DummyExtractor(DummyConfig()), vids, root, progress=False)
    assert sorted(rep.done) == ["v0", "v1", "v2"] and rep.ok
    store = FeatureStore.open(rep.url)
    assert store.video_ids() == ["v0", "v1", "v2"]
    assert read_current(f"{root}/dummy") == rep.url
    assert json.loads(Path(failures_path(root, "dummy", "dummy-test")).read_text()) == []

    again = DummyExtractor(DummyConfig())
    rep2 = run_extraction(again, vids, root, progress=False)
    assert rep2.done == [] and sorted(rep2.skipped) == ["v0", "v1", "v2"] and again.prepared == []

    vids.append(_video(tmp_path, "v3"))
    rep3 = run_extraction(DummyExtractor(DummyConfig()), vids, root, progress=False)
    assert rep3.done == ["v3"]

    rep4 = run_extraction(DummyExtractor(DummyConfig(scale=2.0)), vids, root, progress=False)
    assert rep4.url != rep.url and sorted(rep4.done) == ["v0", "v1", "v2", "v3"]
    assert read_current(f"{root}/dummy") == rep4.url
    np.testing.assert_allclose(FeatureStore.open(rep4.url).read_video("v0")["emb"], 2.0)


def test_one_bad_video_does_not_stop_the_run(tmp_path: Path) -> None:
    root = str(tmp_path / "features")
    vids = [_video(tmp_path, "a"), _video(tmp_path, "bad", b"BOOM"), _video(tmp_path, "c")]
    rep = run_extraction(DummyExtractor(DummyConfig()), vids, root, progress=False, prefetch=3)
    assert sorted(rep.done) == ["a", "c"]
    assert not rep.ok  # the stage exits non-zero on this
    fails = json.loads(Path(failures_path(root, "dummy", "dummy-test")).read_text())
    assert len(fails) == 1 and fails[0]["video_id"] == "bad"
    assert fails[0]["file"].endswith("bad.bin") and "corrupt test video" in fails[0]["error"]

    Path(vids[1].media_path).write_bytes(b"fixed")  # the user fixes the file
    rerun = DummyExtractor(DummyConfig())
    rep2 = run_extraction(rerun, vids, root, progress=False)
    assert rep2.done == ["bad"] and rerun.prepared == ["bad"] and rep2.ok


def test_prepare_errors_are_recorded_too(tmp_path: Path) -> None:
    vids = [_video(tmp_path, "a"), Video("gone", str(tmp_path / "missing.bin"), 10.0, 5, 0.5, False, "train")]
    rep = run_extraction(DummyExtractor(DummyConfig()), vids, str(tmp_path / "f"), progress=False)
    assert rep.done == ["a"] and [f["video_id"] for f in rep.failed] == ["gone"]
    assert "missing.bin" in rep.failed[0]["file"]


def test_load_fails_before_any_video(tmp_path: Path) -> None:
    ext = DummyExtractor(DummyConfig(bad_load=True))
    with pytest.raises(ExtractorError, match="bad model id"):
        run_extraction(ext, [_video(tmp_path, "a")], str(tmp_path / "features"), progress=False)
    assert ext.prepared == [] and not (tmp_path / "features").exists()


def test_background_stream_propagates_and_stops() -> None:
    def gen():
        yield 1
        yield 2
        raise RuntimeError("decoder died")

    s = BackgroundStream(gen, maxsize=1)
    got = []
    with pytest.raises(RuntimeError, match="decoder died"):
        for x in s:
            got.append(x)
    assert got == [1, 2]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    s2 = BackgroundStream(endless, maxsize=2)
    assert next(iter(s2)) == 0
    s2.close()
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 5  # the producer stopped, memory stayed bounded


def test_background_stream_limits_only_its_own_torch_threads() -> None:
    """A CPU model's producer runs torch ops on one thread; the consumer keeps its thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = list(BackgroundStream(lambda: iter([torch.get_num_threads()]), torch_threads=1))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_run_report_defaults() -> None:
    assert RunReport().ok and RunReport(failed=[{"video_id": "x"}]).ok is False


def test_extract_one_is_the_engine_independent_unit(tmp_path: Path) -> None:
    """What a remote worker (Ray actor) runs: config -> extractor -> load -> one video -> store."""
    from extractors.base import extract_one, open_store
    from pipeline.store import FeatureStore

    cfg = pickle.loads(pickle.dumps(DummyConfig(scale=3.0)))  # the config travels, the model does not
    ext = get_extractor("dummy-test", cfg)
    ext.load()
    store = open_store(ext, str(tmp_path / "f"))
    video = _video(tmp_path, "solo")
    extract_one(ext, video, store)
    assert FeatureStore.open(store.url).is_complete("solo")
    assert store.todo([video], source=ext.source) == []  # the source fingerprint was recorded


# ------------------------------------------------------------------- extractors stand side by side
EXTRACTOR_MODULES = ("face", "audio", "behavior", "reliability")
SIBLINGS = {f"extractors.{m}" for m in (*EXTRACTOR_MODULES, "demo_models")}


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from extractors import face`
    return names


@pytest.mark.parametrize("module", EXTRACTOR_MODULES)
def test_extractors_import_no_sibling(module: str) -> None:
    path = Path(__file__).resolve().parents[1] / "extractors" / f"{module}.py"
    assert not (_imported_modules(path) & SIBLINGS), f"extractors/{module}.py imports a sibling extractor"


# ---------------------------------------------------------------- fingerprints: features, not hardware
EXECUTION_FIELDS = {"device", "bf16", "batch_size", "cpu_batch_size", "cpu_freeze", "queue_batches", "cache_size",
                    "attn_implementation"}
# one field per built-in extractor that changes its numbers
FEATURE_CHANGE = {"grada": {"image_size": 128}, "speech_ssl": {"chunk_seconds": 10.0},
                  "qwen3vl": {"frame_long_side": 224}, "reliability": {"thumb": 32},
                  "pdem": {"chunk_seconds": 10.0}, "sun_face": {"image_size": 128}}


def _builtin_extractors() -> list[str]:
    from extractors.registry import declared_extractors

    return sorted(declared_extractors())


def _other_value(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    return {"auto": "cpu", "sdpa": "eager"}.get(value, "cpu")


@pytest.mark.parametrize("name", _builtin_extractors())
def test_fingerprint_and_store_url_ignore_execution_fields(name: str, tmp_path: Path) -> None:
    """A store written on a GPU (bf16, big batches) is the store a CPU laptop reads."""
    import dataclasses

    from extractors.registry import config_class, extractor_class
    from pipeline.store import store_url

    cls = extractor_class(name)
    base = config_class(cls)()
    execution = {f.name: _other_value(getattr(base, f.name)) for f in dataclasses.fields(base)
                 if f.name in EXECUTION_FIELDS}
    assert name in FEATURE_CHANGE, f"add a feature-changing field of {name!r} to FEATURE_CHANGE"

    def fp_url(cfg: object) -> tuple[dict, str]:
        ext = cls(cfg)
        fp = ext.fingerprint()
        return fp, store_url(str(tmp_path), ext.modality, ext.name, fp)

    ref = fp_url(base)
    assert fp_url(dataclasses.replace(base, **execution)) == ref, f"{name}: execution fields {sorted(execution)}"
    assert not (set(ref[0]) & EXECUTION_FIELDS)
    changed = fp_url(dataclasses.replace(base, **FEATURE_CHANGE[name]))
    assert changed[0] != ref[0] and changed[1] != ref[1]

