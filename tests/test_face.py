"""Face extractor: the GRADA architecture and weights path, crops with gaps, detection, timing."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from extractors.base import ExtractorError, VideoError, run_extraction
from extractors.face import (
    FaceConfig,
    GradaEmbedder,
    GradaFaceExtractor,
    auto_cpu_chunk,
)
from extractors.images import letterbox_u8, normalize
from pipeline.records import Video

SIZE = 64  # tests run the real B1 at a tiny input size: same code path, ~50x cheaper


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Encode RGB uint8 frames with PyAV (libx264 when available, else mpeg4)."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        codec = "libx264"
    except Exception:  # noqa: BLE001
        codec = "mpeg4"
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "grada_b1.pth"
    torch.save(GradaEmbedder("b1").state_dict(), path)
    return path


def _crops(dir_: Path, present: list[int], size: int = 32) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in present:
        cv2.imwrite(str(dir_ / f"{i:05d}.jpg"), rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8))
    return dir_


def _cfg(weights: Path, **kw) -> FaceConfig:
    kw = {"image_size": SIZE, "batch_size": 4, "device": "cpu", **kw}
    return FaceConfig(weights=str(weights), **kw)


def _run(ext: GradaFaceExtractor, video: Video) -> dict[str, np.ndarray]:
    return ext.compute(video, ext.prepare(video))


def test_grada_architecture_matches_the_published_keys() -> None:
    m = GradaEmbedder("b1").eval()
    keys = set(m.state_dict())
    for k in ("model.features.0.0.weight", "embeddings_layer.weight", "batchnorm.running_mean",
              "classifier.weight", "regression.bias"):
        assert k in keys
    assert m.embeddings_layer.in_features == 1280 and m.classifier.out_features == 8
    with torch.inference_mode():
        e = m(torch.randn(2, 3, SIZE, SIZE))
        va, ex = m.heads(e)
    assert e.shape == (2, 256) and e.abs().max() <= 1.0
    assert va.shape == (2, 2) and ex.shape == (2, 8)


def test_letterbox_pads_to_square_centred() -> None:
    img = torch.full((3, 20, 40), 255, dtype=torch.uint8)
    out = letterbox_u8([img], 40)
    assert out.shape == (1, 3, 40, 40) and out.dtype == torch.uint8
    assert out[0, :, :10].max() == 0 and out[0, :, 30:].max() == 0 and out[0, :, 10:30].min() == 255
    x = normalize(torch.zeros((1, 3, 2, 2), dtype=torch.uint8), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.allclose(x, torch.full_like(x, -1.0))


def test_crops_with_gaps_valid_mask_timing_and_weights(tmp_path: Path, weights: Path) -> None:
    crops = _crops(tmp_path / "crops" / "v", [1, 2, 4, 5])  # 1-based names; frames 2 and 5 have no face
    video = Video("v", str(tmp_path / "v.mp4"), fps=25.0, num_frames=6, duration=0.24, has_audio=False,
                  split="train", crops_dir=str(crops))
    ext = GradaFaceExtractor(_cfg(weights))
    ext.load()
    out = _run(ext, video)
    assert out["valid"].tolist() == [True, True, False, True, True, False]
    assert out["emb"].shape == (6, 256) and not out["emb"][2].any() and out["emb"][0].any()
    np.testing.assert_allclose(out["t0"], np.arange(6) / 25.0, rtol=1e-6)
    np.testing.assert_allclose(out["t1"], np.arange(1, 7) / 25.0, rtol=1e-6)
    assert out["frame_index"].tolist() == list(range(6))
    assert out["va_pred"].shape == (6, 2) and out["expr_logits"].shape == (6, 8)

    # the embedding is the saved model's output on the documented preprocessing
    ref = GradaEmbedder("b1").eval()
    ref.load_state_dict(torch.load(weights))
    img = torch.from_numpy(cv2.cvtColor(cv2.imread(str(crops / "00004.jpg")), cv2.COLOR_BGR2RGB)).permute(2, 0, 1)
    with torch.inference_mode():
        e = ref(normalize(letterbox_u8([img], SIZE), ext.mean, ext.std))[0].numpy()
    np.testing.assert_allclose(out["emb"][3], e, atol=1e-4)


def test_more_crops_than_frames_extends_rows(tmp_path: Path, weights: Path) -> None:
    crops = _crops(tmp_path / "c", [1, 3])
    video = Video("v", "v.mp4", 10.0, 2, 0.2, False, "train", crops_dir=str(crops))
    ext = GradaFaceExtractor(_cfg(weights))
    ext.load()
    out = _run(ext, video)
    assert out["valid"].tolist() == [True, False, True] and out["t1"][-1] == pytest.approx(0.3)


def test_missing_crops_dir_is_a_video_error(tmp_path: Path, weights: Path) -> None:
    video = Video("v", "v.mp4", 10.0, 2, 0.2, False, "train", crops_dir=str(tmp_path / "nope"))
    ext = GradaFaceExtractor(_cfg(weights))
    with pytest.raises(VideoError, match="nope.*not found"):
        ext.prepare(video)
    rep = run_extraction(ext, [video], str(tmp_path / "f"), progress=False)  # through the engine
    assert "nope: crops folder of video v not found" in rep.failed[0]["error"]
    with pytest.raises(VideoError, match="no crops_dir"):
        GradaFaceExtractor(_cfg(weights, source="crops")).prepare(Video("w", "w.mp4", 10.0, 2, 0.2, False, "train"))


def test_bad_weights_fail_before_any_video(tmp_path: Path, weights: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save(nn.Linear(3, 4).state_dict(), bad)
    crops = _crops(tmp_path / "c", [1])
    video = Video("v", "v.mp4", 10.0, 1, 0.1, False, "train", crops_dir=str(crops))
    with pytest.raises(ExtractorError, match=r"bad\.pth.*missing \['model\.features.*unexpected \['weight'"):
        run_extraction(GradaFaceExtractor(_cfg(bad)), [video], str(tmp_path / "f"), progress=False)
    assert not (tmp_path / "f").exists()

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ExtractorError, match="junk.pth: cannot read weights"):
        GradaFaceExtractor(_cfg(junk)).load()
    with pytest.raises(ExtractorError, match="missing.pth: face weights file not found"):
        GradaFaceExtractor(_cfg(tmp_path / "missing.pth")).load()
    with pytest.raises(ExtractorError, match="face.weights is not set"):
        GradaFaceExtractor(FaceConfig(device="cpu")).load()
    with pytest.raises(ExtractorError, match="variant 'b9'"):
        GradaFaceExtractor(FaceConfig(variant="b9"))


def test_weights_without_heads_and_dataparallel_prefix(tmp_path: Path, weights: Path) -> None:
    sd = {f"module.{k}": v for k, v in torch.load(weights).items() if not k.startswith(("classifier", "regression"))}
    p = tmp_path / "noheads.pth"
    torch.save({"state_dict": sd}, p)
    ext = GradaFaceExtractor(_cfg(p))
    ext.load()
    out = _run(ext, Video("v", "v.mp4", 10.0, 1, 0.1, False, "train", crops_dir=str(_crops(tmp_path / "c", [1]))))
    assert "va_pred" not in out and out["valid"].all()


def test_fingerprint_tracks_weights_content_not_execution_params(tmp_path: Path, weights: Path) -> None:
    fp = GradaFaceExtractor(_cfg(weights)).fingerprint()
    assert fp["weights"].startswith("sha256:") and fp["variant"] == "b1"
    assert GradaFaceExtractor(FaceConfig(weights=str(weights), image_size=SIZE, batch_size=1, bf16=False)).fingerprint() == fp
    assert GradaFaceExtractor(_cfg(weights, image_size=SIZE * 2)).fingerprint() != fp
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(GradaEmbedder("b1").state_dict(), other)
    assert GradaFaceExtractor(_cfg(other)).fingerprint()["weights"] != fp["weights"]


def test_no_face_video_stores_invalid_rows(tmp_path: Path, weights: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.store import FeatureStore

    media = write_video(tmp_path / "blank.mp4", [np.full((96, 128, 3), 90, np.uint8)] * 12)
    video = Video("blank", str(media), 10.0, 12, 1.2, False, "train")
    with caplog.at_level("WARNING"):
        rep = run_extraction(GradaFaceExtractor(_cfg(weights)), [video], str(tmp_path / "f"), progress=False)
    assert rep.ok and rep.done == ["blank"]
    got = FeatureStore.open(rep.url).read_video("blank")
    assert got["valid"].shape == (12,) and not got["valid"].any() and got["emb"].shape == (12, 256)
    assert "no face found" in caplog.text


def test_torchvision_backbone_random_init_warns(tmp_path: Path) -> None:
    ext = GradaFaceExtractor(FaceConfig(backbone="torchvision:resnet18", image_size=SIZE, device="cpu"))
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        ext.load()
    crops = _crops(tmp_path / "c", [1, 2])
    out = _run(ext, Video("v", "v.mp4", 10.0, 2, 0.2, False, "train", crops_dir=str(crops)))
    assert out["emb"].shape == (2, 512) and out["valid"].all()
    assert ext.fingerprint()["weights"] == "random-init-seed0"


def test_real_clip_detect_path_finds_faces(realdata: Path, weights: Path) -> None:
    clip = realdata / "facenet-examples" / "video.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} absent")
    from pipeline.media import probe

    info = probe(clip)
    video = Video("facenet", str(clip), info.fps, info.num_frames, info.duration, info.has_audio, "test")
    ext = GradaFaceExtractor(_cfg(weights, source="detect", max_frames=20, batch_size=8))
    ext.load()
    out = _run(ext, video)
    assert out["valid"].shape == (20,)
    assert out["valid"].mean() >= 0.6, out["valid"]


def test_hf_backbone_from_a_local_dir(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    image_size=SIZE, patch_size=16)
    ViTModel(cfg).save_pretrained(tmp_path / "vit")
    ext = GradaFaceExtractor(FaceConfig(backbone=f"hf:{tmp_path / 'vit'}", image_size=SIZE, device="cpu"))
    ext.load()
    out = _run(ext, Video("v", "v.mp4", 10.0, 2, 0.2, False, "train", crops_dir=str(_crops(tmp_path / "c", [2]))))
    assert out["emb"].shape == (2, 32) and out["valid"].tolist() == [False, True]
    with pytest.raises(ExtractorError, match="cannot load HF face backbone"):
        GradaFaceExtractor(FaceConfig(backbone=f"hf:{tmp_path / 'nope'}", device="cpu")).load()


def test_cpu_freeze_matches_eager(tmp_path: Path, weights: Path) -> None:
    """The frozen TorchScript path (CPU speed-up: fixed-size chunks, zero-padded tail, oneDNN Graph
    fusion) stores the same embeddings as eager PyTorch, and leaves the global fusion switch as it was."""
    crops = _crops(tmp_path / "c", [1, 2, 3, 5, 8, 9, 10])
    video = Video("v", str(tmp_path / "v.mp4"), 10.0, 10, 1.0, False, "train", crops_dir=str(crops))
    frozen = GradaFaceExtractor(_cfg(weights, batch_size=4, cpu_batch_size=3))  # batches 4+3 -> chunks 3+1, 3
    eager = GradaFaceExtractor(_cfg(weights, batch_size=4, cpu_freeze=False))
    fusion_before = torch.jit.onednn_fusion_enabled()
    frozen.load()
    eager.load()
    a, b = _run(frozen, video), _run(eager, video)
    assert torch.jit.onednn_fusion_enabled() == fusion_before
    assert frozen._frozen is not None and eager._frozen is None
    assert frozen.fingerprint() == eager.fingerprint()
    np.testing.assert_array_equal(a["valid"], b["valid"])
    np.testing.assert_allclose(a["emb"], b["emb"], atol=2e-3)  # stored as float16


def test_cpu_freeze_falls_back_when_fusion_fails(tmp_path: Path, weights: Path, monkeypatch) -> None:
    """A torch build or CPU whose oneDNN Graph fusion fails still gets the frozen model, unfused,
    with the same embeddings."""
    import contextlib

    import extractors.face as face

    real = face.onednn_fusion

    @contextlib.contextmanager
    def broken(enabled: bool = True):
        if enabled:
            raise RuntimeError("no oneDNN Graph on this build")
        with real(False):
            yield

    crops = _crops(tmp_path / "c", [1, 2, 3, 4, 5])
    video = Video("v", str(tmp_path / "v.mp4"), 10.0, 5, 0.5, False, "train", crops_dir=str(crops))
    eager = GradaFaceExtractor(_cfg(weights, cpu_freeze=False))
    eager.load()
    monkeypatch.setattr(face, "onednn_fusion", broken)
    frozen = GradaFaceExtractor(_cfg(weights, cpu_batch_size=2))
    frozen.load()
    assert frozen._frozen is not None and frozen._fuse is False
    np.testing.assert_allclose(_run(frozen, video)["emb"], _run(eager, video)["emb"], atol=2e-3)


def test_cpu_freeze_checks_values_on_real_input(tmp_path: Path, weights: Path, monkeypatch) -> None:
    """Where the fused model's numbers differ from eager on the first real images (a CPU whose
    kernels round differently), the extractor runs unfused, or eager when that differs too, and
    stores eager's embeddings."""
    crops = _crops(tmp_path / "c", [1, 2, 3, 4, 5])
    video = Video("v", str(tmp_path / "v.mp4"), 10.0, 5, 0.5, False, "train", crops_dir=str(crops))
    eager = GradaFaceExtractor(_cfg(weights, cpu_freeze=False))
    eager.load()
    reference = _run(eager, video)["emb"]
    real_trace = GradaFaceExtractor._trace

    def off_by_one(self, fuse: bool):
        frozen = real_trace(self, fuse)
        return (lambda x: frozen(x) + 1.0) if fuse else frozen

    monkeypatch.setattr(GradaFaceExtractor, "_trace", off_by_one)
    unfused = GradaFaceExtractor(_cfg(weights, cpu_batch_size=2))
    unfused.load()
    assert unfused._fuse is True
    np.testing.assert_allclose(_run(unfused, video)["emb"], reference, atol=2e-3)
    assert unfused._frozen is not None and unfused._fuse is False

    monkeypatch.setattr(GradaFaceExtractor, "_trace", lambda self, fuse: (lambda x: real_trace(self, fuse)(x) - 1.0))
    fallback = GradaFaceExtractor(_cfg(weights, cpu_batch_size=2))
    fallback.load()
    np.testing.assert_allclose(_run(fallback, video)["emb"], reference, atol=2e-3)
    assert fallback._frozen is None


def test_cpu_chunk_scales_with_the_pixel_count() -> None:
    """4 images at the published 240 px, more for smaller inputs, never below 1 or above 32;
    an explicit `cpu_batch_size` wins, and a negative one is rejected."""
    assert [auto_cpu_chunk(s) for s in (240, 96, 380, 16)] == [4, 25, 1, 32]
    assert FaceConfig(image_size=240).cpu_chunk == 4 and FaceConfig(cpu_batch_size=7).cpu_chunk == 7
    with pytest.raises(ExtractorError, match="cpu_batch_size"):
        FaceConfig(cpu_batch_size=-1).validate()


def test_crops_decode_the_same_without_opencv(tmp_path, monkeypatch):
    """A machine without OpenCV (the bare GPU node) decodes crops with Pillow: same pixels, same errors."""
    from PIL import Image

    from extractors.images import read_rgb

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), (7, 7), 0)
    cv2.imwrite(str(tmp_path / "00001.jpg"), img)
    Image.fromarray(img).save(tmp_path / "00002.jpg", quality=90)
    (tmp_path / "00003.jpg").write_bytes(b"not a jpeg")
    with_cv2 = [read_rgb(tmp_path / f"0000{i}.jpg") for i in (1, 2)]
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)  # `import cv2` now raises ImportError
    for i, want in zip((1, 2), with_cv2):
        got = read_rgb(tmp_path / f"0000{i}.jpg")
        assert got.dtype == torch.uint8 and got.shape == (3, 112, 112)
        assert torch.equal(got, want)
    with pytest.raises(VideoError, match="00003.jpg: unreadable/corrupt crop"):
        read_rgb(tmp_path / "00003.jpg")
