"""Face extractor: aligned face crops (provided or detected) -> backbone -> one embedding per frame.

Default backbone = the published GRADA model (README, "The paper profile"): torchvision EfficientNet-B1 features +
avgpool -> Dropout 0.1 -> Linear(1280, 256) -> BatchNorm1d -> Tanh, i.e. a 256-d embedding, plus an
8-class `classifier` and a 2-d `regression` (VA) head. Attribute names match the published
`Modified_EfficientNet_B1`, so its `.pth` state dict loads as is. Preprocessing: long side to 240 px
(B4: 380), zero-pad to a square, ImageNet mean/std.

Rows: one per video frame i, t0/t1 = [presentation time of frame i, of frame i + 1) from the file's
packet timestamps recorded in the index (`Video.frame_grid`, right for variable frame rates); frames without a face
have `valid=False` and a zero embedding. Detected videos also store `box` [N, 4] (x0, y0, x1, y1 in
pixels of the upright source frame, NaN without a face; provided crops have no box, so none is stored)
and follow every person of `detector.max_faces` (`extractors.face_detection`): each person gets its N
rows, stacked person by person with a `person` column (`pipeline.persons`; one person, the annotated
subject, unless `max_faces` says otherwise), each crop aligned on five landmarks like Aff-Wild2's
`cropped_aligned` images. Missing faces are *not* filled here (the published face head uses the nearest
cached frame): filling is a modelling choice and belongs to the head, the cache stores what was seen.

A video in which no face is found at all is not an error: every row is stored with `valid=False` and a
warning is logged. The reliability signals mark such a video as face-less and the heads/fusion mask it;
failing it would make the stage exit non-zero on a legitimate input (e.g. a back-facing speaker).
A video that *should* have crops but whose crops folder is missing is a `VideoError` (a data bug).

Throughput: decoding and resize/pad run in a producer thread (`BackgroundStream`) a few batches ahead
of the model on uint8 tensors; `compute()` only moves batches through the model under inference_mode
(channels_last; + bf16 autocast on CUDA). On CUDA the uint8 batch is normalised on the device (4x less
host memory and transfer). On CPU normalisation stays in the producer thread (one torch thread, so it
does not pre-empt the model's), and the model is a frozen, oneDNN-fused TorchScript trace run in
fixed-size chunks (`GradaFaceExtractor._freeze`; figures in bench/RESULTS.md).
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from extractors.base import (
    BackgroundStream,
    ExtractorError,
    VideoError,
    inference,
    register,
    torch_device,
)
from extractors.face_detection import FaceDetectorConfig, crop_files, iter_face_crops
from extractors.images import IMAGENET_MEAN, IMAGENET_STD, letterbox_u8, normalize, read_rgb
from pipeline.files import sha256_file
from pipeline.persons import stack_persons
from pipeline.progress import advance_to, inner_bar
from pipeline.records import Video

log = logging.getLogger(__name__)

SCHEMA = 1  # bump when the meaning/layout of this extractor's arrays changes
_VARIANTS = {"b1": ("efficientnet_b1", 1280), "b4": ("efficientnet_b4", 1792)}


@dataclass
class FaceConfig:
    """Face extraction parameters (published GRADA defaults).

    backbone: "grada" | "torchvision:<name>" | "hf:<model id or local dir>".
    weights: GRADA: path to the published `.pth` state dict (required: a random GRADA would silently
        cache garbage). torchvision: optional `.pth`; without it the net is randomly initialised with a
        warning (pretrained downloads are impossible offline). hf: unused (the id/dir holds weights).
    variant: GRADA variant "b1" (published; 240 px) or "b4" (published with 380 px).
    source: "auto" (crops when the video has `crops_dir`, else detect) | "crops" | "detect".
    detector: face detection and tracking for videos without crops (`FaceDetectorConfig`).
    max_frames: only the first `max_frames` frames (tests, benchmarks, smoke runs); None = all.
    device / bf16 / batch_size / queue_batches / cpu_freeze / cpu_batch_size: execution only; they are
        not in the fingerprint.
    """

    backbone: str = "grada"
    weights: str | None = None
    variant: str = "b1"
    image_size: int = 240
    batch_size: int = 64
    device: str = "auto"
    bf16: bool = True
    source: str = "auto"
    detector: FaceDetectorConfig = field(default_factory=FaceDetectorConfig)
    max_frames: int | None = None
    store_heads: bool = True
    queue_batches: int = 3
    cpu_freeze: bool = True  # CPU only: TorchScript trace + freeze + oneDNN Graph fusion (see `_freeze`)
    cpu_batch_size: int = 0  # CPU only: frozen-model chunk in images; 0 = `auto_cpu_chunk(image_size)`

    def validate(self) -> None:
        if not (self.backbone == "grada" or self.backbone.startswith(("torchvision:", "hf:"))):
            raise ExtractorError(f"face backbone {self.backbone!r}: use 'grada', 'torchvision:<name>' or 'hf:<id>'")
        if self.variant not in _VARIANTS:
            raise ExtractorError(f"face variant {self.variant!r}: use one of {sorted(_VARIANTS)}")
        if self.source not in ("auto", "crops", "detect"):
            raise ExtractorError(f"face source {self.source!r}: use 'auto', 'crops' or 'detect'")
        self.detector.validate("face")
        for key in ("image_size", "batch_size", "queue_batches"):
            if int(getattr(self, key)) < 1:
                raise ExtractorError(f"face {key} must be >= 1, got {getattr(self, key)}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ExtractorError(f"face max_frames must be >= 1 or None, got {self.max_frames}")
        if self.cpu_batch_size < 0:
            raise ExtractorError(f"face cpu_batch_size must be >= 1, or 0 for auto; got {self.cpu_batch_size}")

    @property
    def cpu_chunk(self) -> int:
        """Images per frozen-model call on the CPU (the set value, or the automatic one)."""
        return self.cpu_batch_size or auto_cpu_chunk(self.image_size)


def auto_cpu_chunk(image_size: int) -> int:
    """Images per frozen-model call on the CPU: 4 at the published 240 px, scaled with the pixel count
    (so the largest activation stays ~22 MB, see `GradaFaceExtractor._freeze`), between 1 and 32.
    Measured on the 2-core CPU at 96 px: chunks of 16 run 1.25x faster than chunks of 4."""
    return max(1, min(32, int(4 * (240 / image_size) ** 2)))


# ------------------------------------------------------------------------------------------- model
class GradaEmbedder(nn.Module):
    """The published GRADA static model; `forward` returns the 256-d Tanh embedding.

    `heads(emb)` gives (va [B,2], expr logits [B,8]) from the `regression` / `classifier` heads.
    """

    def __init__(self, variant: str = "b1", embedding_dim: int = 256, num_classes: int = 8):
        super().__init__()
        import torchvision

        arch, feat_dim = _VARIANTS[variant]
        self.model = getattr(torchvision.models, arch)(weights=None)
        self.model.classifier = nn.Identity()  # features -> avgpool -> flatten -> [B, feat_dim]
        self.dropout_after_pretrained = nn.Dropout(0.1)
        self.embeddings_layer = nn.Linear(feat_dim, embedding_dim)
        self.batchnorm = nn.BatchNorm1d(embedding_dim, momentum=0.1, affine=True)
        self.activation_embeddings = nn.Tanh()
        self.classifier = nn.Linear(embedding_dim, num_classes)
        self.regression = nn.Linear(embedding_dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout_after_pretrained(self.model(x))
        return self.activation_embeddings(self.batchnorm(self.embeddings_layer(x)))

    def heads(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.regression(emb), self.classifier(emb)


def _unwrap_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict, a {'state_dict'|'model_state_dict': ...} checkpoint, or a DataParallel
    ('module.'-prefixed) one: all three circulate for the published weights."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExtractorError(f"{path}: not a PyTorch state dict (got {type(obj).__name__}); save one with "
                             "torch.save(model.state_dict(), path)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_dict_checked(model: nn.Module, path: str, optional_prefixes: tuple[str, ...] = ()) -> set[str]:
    """Load `path` into `model` strictly; keys under `optional_prefixes` may be absent.

    Returns the missing optional prefixes. Any other mismatch -> ExtractorError naming the file and the
    first offending keys (the usual cause: wrong variant, or a checkpoint of another architecture).
    """
    if not Path(path).is_file():
        raise ExtractorError(f"{path}: face weights file not found; set face.weights to the GRADA .pth "
                             "(published Drive folder 16nL_5J9I9MEnJQI34fgRMdSUm9HwfgwX) or run the demo_models stage")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file
        raise ExtractorError(f"{path}: cannot read weights ({type(e).__name__}: {e}); is it a torch.save'd state dict?") from e
    sd = _unwrap_state_dict(obj, path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    hard_missing = [k for k in missing if not k.startswith(optional_prefixes)]
    if hard_missing or unexpected:
        raise ExtractorError(
            f"{path}: state dict does not match {type(model).__name__}: missing {hard_missing[:5]}"
            f"{' ...' if len(hard_missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}. Check face.variant / face.backbone for these weights.")
    shape_bad = [k for k in sd if sd[k].shape != own[k].shape]
    if shape_bad:
        k = shape_bad[0]
        raise ExtractorError(f"{path}: shape mismatch for {k}: file {tuple(sd[k].shape)} vs model "
                             f"{tuple(own[k].shape)}. Check face.variant for these weights.")
    model.load_state_dict(sd, strict=False)
    return {p for p in optional_prefixes if any(k.startswith(p) for k in missing)}


class _Pooled(nn.Module):
    """Wrap a backbone so that it returns one vector per image (flatten / mean over tokens/space)."""

    def __init__(self, net: nn.Module, hf: bool = False):
        super().__init__()
        self.net, self.hf = net, hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hf:
            out = self.net(pixel_values=x)
            pooled = getattr(out, "pooler_output", None)
            y = pooled if pooled is not None else out.last_hidden_state
        else:
            y = self.net(x)
        if y.dim() == 4:  # [B,C,H,W] feature map
            return y.mean(dim=(2, 3))
        if y.dim() == 3:  # [B,T,D] tokens
            return y.mean(dim=1)
        return y.flatten(1)


def _torchvision_backbone(name: str, weights: str | None) -> nn.Module:
    import torchvision

    try:
        net = torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        raise ExtractorError(f"torchvision model {name!r} unknown ({e}); see torchvision.models.list_models()") from e
    if weights:
        load_state_dict_checked(net, weights)
    else:
        warnings.warn(f"face backbone torchvision:{name} has no weights file: RANDOM initialisation (seeded) - "
                      "pretrained downloads are impossible offline; set face.weights to a .pth", stacklevel=2)
    for head in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(net, head, None), nn.Module):
            setattr(net, head, nn.Identity())
            break
    return _Pooled(net)


def _hf_backbone(model_id: str) -> tuple[nn.Module, tuple, tuple]:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        from transformers import AutoImageProcessor, AutoModel

        net = AutoModel.from_pretrained(model_id, local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, ... all mean "cannot load"
        raise ExtractorError(f"cannot load HF face backbone {model_id!r} ({type(e).__name__}: {e}); give a local "
                             "directory saved with save_pretrained, or download it while online") from e
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        proc = AutoImageProcessor.from_pretrained(model_id, local_files_only=offline)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:  # noqa: BLE001 - no processor saved: ImageNet statistics
        pass
    return _Pooled(net, hf=True), mean, std


# --------------------------------------------------------------------------------------- extractor
@dataclass
class FacePrepared:
    """What `prepare` hands to `compute`: the row count and a stream of (frame indices, batch)."""

    num_rows: int
    batches: BackgroundStream
    info: dict  # filled by the producer: decoded frame count (detect path)

    def close(self) -> None:
        self.batches.close()


@register("grada", modality="face", default=True, weights=True, crops=True)
class GradaFaceExtractor:
    """Face embeddings per frame (store layout: emb, t0, t1, valid, frame_index [+ va_pred, expr_logits])."""

    def __init__(self, cfg: FaceConfig):
        self.cfg = cfg
        self.cfg.validate()
        self.model: nn.Module | None = None
        self._frozen: torch.jit.ScriptModule | None = None
        self._fuse = False  # whether `_frozen` was built (and must run) with oneDNN Graph fusion
        self._checked = False  # whether `_frozen` was compared with eager on real input yet
        self.device: torch.device | None = None
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._weights_sha: str | None = None
        self._has_heads = False

    # -- identity
    def weights_id(self) -> str:
        cfg = self.cfg
        if cfg.backbone.startswith("hf:"):
            return cfg.backbone[3:]
        if not cfg.weights:
            return "random-init-seed0"
        if self._weights_sha is None:
            if not Path(cfg.weights).is_file():
                raise ExtractorError(f"{cfg.weights}: face weights file not found; fix face.weights")
            self._weights_sha = sha256_file(cfg.weights)
        return "sha256:" + self._weights_sha

    def fingerprint(self) -> dict:
        """Everything that changes the stored numbers; device, batch size and bf16 do not (by design:
        a GPU teammate's cache must be reusable on CPU)."""
        c = self.cfg
        fp = {"extractor": self.name, "schema": SCHEMA, "backbone": c.backbone, "weights": self.weights_id(),
              "image_size": c.image_size, "source": c.source, "max_frames": c.max_frames,
              "store_heads": c.store_heads}
        if c.backbone == "grada":
            fp["variant"] = c.variant
        if c.source != "crops":  # which detector, landmark model and alignment template ran
            fp["detector"] = asdict(c.detector)
            fp["detector_identity"] = c.detector.identity()
        return fp

    def source(self, video: Video) -> str:
        """The crops folder when crops are used (its content, as the index checked it, keys the cache:
        `Video.crops_source`), else the media file."""
        return video.crops_source() if self._use_crops(video) and video.crops_dir else video.media_path

    def _use_crops(self, video: Video) -> bool:
        if self.cfg.source == "crops":
            return True
        if self.cfg.source == "detect":
            return False
        return bool(video.crops_dir)

    # -- model
    def load(self) -> None:
        """Build the backbone and load its weights (idempotent: an engine may call it again)."""
        if self.model is not None:
            return
        cfg = self.cfg
        self.device = torch_device(cfg.device)
        if cfg.backbone == "grada":
            if not cfg.weights:
                raise ExtractorError("face.weights is not set: GRADA needs its published .pth (Drive folder "
                                     "16nL_5J9I9MEnJQI34fgRMdSUm9HwfgwX) or the demo one written by demo_models")
            model = GradaEmbedder(cfg.variant)
            missing = load_state_dict_checked(model, cfg.weights, optional_prefixes=("classifier.", "regression."))
            self._has_heads = not missing
        elif cfg.backbone.startswith("torchvision:"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # random init is at least reproducible
                model = _torchvision_backbone(cfg.backbone.split(":", 1)[1], cfg.weights)
        else:
            model, self.mean, self.std = _hf_backbone(cfg.backbone[3:])
        self.weights_id()  # fail now on an unreadable file, not at fingerprint time
        if cfg.source == "detect":  # ("auto" needs it only for videos without crops: checked per video)
            cfg.detector.check_available("face")  # a detector that cannot load fails here, not once per video
        # channels_last on CPU too: oneDNN's depthwise convs are ~1.3x faster in NHWC (measured, B1 240 px)
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self._frozen = self._freeze() if self.device.type == "cpu" and self.cfg.cpu_freeze else None

    def _freeze(self) -> torch.jit.ScriptModule | None:
        """A frozen TorchScript trace of the embedding model, for CPU inference, warmed up.

        Freezing folds every BatchNorm into its convolution; oneDNN Graph fusion then fuses the
        convolutions with their SiLU / squeeze-excitation multiplies. The model always sees the same
        shape, `cfg.cpu_chunk` images (see `_backbone`): the TorchScript profiling executor compiles
        one graph per input shape (~0.5 s each). Why 4 at 240 px: per-image time is flat from 4 to 8 and worse
        at 16 (activations spill the cache), and at 4 the largest activation of B1 at 240 px
        (4 x 96 x 120 x 120 fp32, 22 MB) stays under glibc's 32 MB mmap ceiling, so its buffer is
        reused instead of being mapped and page-faulted afresh on every call (8 images: ~6x more
        minor faults per frame). Measured on the 2-core CPU, B1 at 240 px, ms per image: eager
        batch 1 ~45, frozen batch 4-8 ~22-26, frozen + fusion batch 4-8 ~17-21, identical outputs
        (max |diff| ~1e-9). torch.compile reaches ~22 ms but spends ~55 s compiling per shape, hence
        TorchScript. GPU runs stay eager (bf16 autocast); HF backbones return structured outputs
        and stay eager.
        """
        if self.cfg.backbone.startswith("hf:"):
            return None
        for fuse in (True, False):  # a torch build or CPU where fusion fails runs unfused
            try:
                frozen = self._trace(fuse)
                self._fuse, self._checked = fuse, False
                return frozen
            except Exception as e:  # noqa: BLE001 - any failure here only costs speed
                log.info("face model on CPU: frozen%s path unavailable (%s)", " + oneDNN-fused" if fuse else "", e)
        return None

    def _trace(self, fuse: bool) -> torch.jit.ScriptModule:
        """Trace, freeze and warm up the model at the fixed chunk shape (values are checked later)."""
        size = self.cfg.image_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            example = torch.randn((self.cfg.cpu_chunk, 3, size, size)).contiguous(memory_format=torch.channels_last)
        with warnings.catch_warnings(), torch.inference_mode(), onednn_fusion(fuse):
            warnings.simplefilter("ignore")  # TorchScript deprecation/tracer notices
            frozen = torch.jit.freeze(torch.jit.trace(self.model, example, check_trace=False))
            for _ in range(3):  # the profiling executor optimises the graph on its first calls
                frozen(example)
        return frozen

    def _run_frozen(self, x: torch.Tensor) -> torch.Tensor:
        step = self.cfg.cpu_chunk
        outs = []
        with onednn_fusion(self._fuse):
            for s in range(0, len(x), step):
                chunk = x[s:s + step]
                n = len(chunk)
                if n < step:  # pad the tail: a new shape would cost a graph compile per tail size
                    chunk = torch.cat([chunk, chunk.new_zeros((step - n, *chunk.shape[1:]))])
                outs.append(self._frozen(chunk.contiguous(memory_format=torch.channels_last))[:n])
        return torch.cat(outs)

    def _check_frozen(self, x: torch.Tensor) -> None:
        """Compare the frozen model with eager on the first real images; fall back where they differ.

        The check runs on real input because that is where the numbers must agree: on white noise
        a (demo-calibrated) EfficientNet saturates its Tanh, and the last-bit differences between
        oneDNN's kernels on different CPUs (seen on AMD EPYC) flip whole outputs there, while on
        face crops the same models agree to ~3e-5. Fused -> unfused -> eager, each only on mismatch.
        """
        self._checked = True
        sample = x[: self.cfg.cpu_chunk]
        expected = self.model(sample)
        while self._frozen is not None:
            got = self._run_frozen(sample)
            if torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
                return
            diff = (got - expected).abs().max().item()
            if self._fuse:
                log.info("face model on CPU: oneDNN-fused outputs differ from eager by %.2e; running unfused", diff)
                try:
                    self._frozen, self._fuse = self._trace(False), False
                    continue
                except Exception as e:  # noqa: BLE001 - only costs speed
                    log.info("face model on CPU: unfused frozen path unavailable (%s)", e)
            else:
                log.info("face model on CPU: frozen outputs differ from eager by %.2e; running eager", diff)
            self._frozen = None

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        if self._frozen is not None and not self._checked:
            self._check_frozen(x)
        if self._frozen is None:
            return self.model(x)
        return self._run_frozen(x)

    # -- per video
    def prepare(self, video: Video) -> FacePrepared:
        if video.fps <= 0:
            raise VideoError(f"{video.media_path}: fps {video.fps} is not positive; re-index the dataset")
        info: dict = {}
        if self._use_crops(video):
            files = crop_files(video)
            last = max(files) + 1 if files else 0
            n = max(int(video.num_frames), last)
            if self.cfg.max_frames:
                n = min(n, self.cfg.max_frames)
                files = {i: p for i, p in files.items() if i < n}
            make = lambda: self._crop_batches(files)  # noqa: E731
        else:
            n = int(video.num_frames) if not self.cfg.max_frames else min(int(video.num_frames), self.cfg.max_frames)
            make = lambda: self._detect_batches(video, info)  # noqa: E731
        on_cpu = self.device is not None and self.device.type == "cpu"
        stream = BackgroundStream(make, maxsize=self.cfg.queue_batches, name=f"face:{video.video_id}",
                                  torch_threads=1 if on_cpu else None)
        return FacePrepared(n, stream, info)

    def _finish(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Worker-side preprocessing: letterbox (uint8); normalise here too unless the model is on CUDA."""
        x = letterbox_u8(images, self.cfg.image_size)
        if self.device is None or self.device.type != "cuda":  # channels_last here, off the model's thread
            return normalize(x.contiguous(memory_format=torch.channels_last), self.mean, self.std)
        return x.pin_memory()

    def _crop_batches(self, files: dict[int, Path]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        items = list(files.items())
        bs = self.cfg.batch_size
        for s in range(0, len(items), bs):
            chunk = items[s:s + bs]
            images = [read_rgb(p) for _, p in chunk]
            yield np.array([i for i, _ in chunk], dtype=np.int64), self._finish(images)

    def _detect_batches(self, video: Video, info: dict) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        info["boxes"] = []  # one [k, 4] array per yielded batch (`compute` stores them as `box`)
        info["persons_of"] = []  # one [k] array per yielded batch: the person of each crop
        for batch in iter_face_crops(video.media_path, self.cfg.detector, self.cfg.batch_size, self.cfg.max_frames,
                                     side=video.side):
            info["decoded"], info["persons"] = batch.decoded, batch.persons
            if batch.crops:
                info["boxes"].append(np.asarray(batch.boxes, np.float32).reshape(-1, 4))
                info["persons_of"].append(np.asarray(batch.persons_of, np.int64))
                crops = [torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1) for c in batch.crops]
                yield np.array(batch.indices, dtype=np.int64), self._finish(crops)

    def compute(self, video: Video, prepared: FacePrepared) -> dict[str, np.ndarray]:
        if self.model is None:
            raise ExtractorError("GradaFaceExtractor.compute called before load()")
        embs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        # frames through the model so far (a batch's last frame index): one bar update per batch
        with inference(self.device, self.cfg.bf16), inner_bar(prepared.num_rows, "frame") as bar:
            for idx, x in prepared.batches:
                embs.append((idx, *self._forward(x)))
                if len(idx):
                    advance_to(bar, int(idx.max()) + 1)
            advance_to(bar, prepared.num_rows)
        info = prepared.info
        n = max(prepared.num_rows, int(info.get("decoded", 0)))
        dim = embs[0][1].shape[1] if embs else self._embedding_dim()
        out = empty_face_rows(n, video.fps, dim, video.frame_grid(n))
        detected = "boxes" in info
        if detected:  # every followed person gets n rows (pipeline.persons); a faceless video: person 0
            out["box"] = np.full((n, 4), np.nan, np.float32)
        heads = self.cfg.store_heads and self._has_heads
        if heads:
            out["va_pred"] = np.zeros((n, 2), np.float32)
            out["expr_logits"] = np.zeros((n, 8), np.float32)
        if detected:
            out = stack_persons(out, int(info.get("persons", 1)))
        crops_of = info.get("persons_of", [None] * len(embs))
        for (idx, e, va, ex), boxes, persons in zip(embs, info.get("boxes", [None] * len(embs)), crops_of):
            keep = idx < n
            rows = idx[keep] + (persons[keep] * n if persons is not None else 0)
            if boxes is not None:
                out["box"][rows] = boxes[keep]
            out["emb"][rows] = e[keep]
            out["valid"][rows] = True
            if heads:
                out["va_pred"][rows] = va[keep]
                out["expr_logits"][rows] = ex[keep]
        if n and not out["valid"].any():
            log.warning("%s (%s): no face found in any of %d frames; all rows stored invalid",
                        video.video_id, self.source(video), n)
        return out

    def _forward(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = normalize(x, self.mean, self.std)
        emb = self._backbone(x.contiguous(memory_format=torch.channels_last))
        va = ex = None
        if self.cfg.store_heads and self._has_heads:
            va_t, ex_t = self.model.heads(emb)
            va, ex = va_t.float().cpu().numpy(), ex_t.float().cpu().numpy()
        return emb.float().cpu().numpy(), va, ex

    def _embedding_dim(self) -> int:
        with inference(self.device, False):
            x = torch.zeros((2, 3, self.cfg.image_size, self.cfg.image_size), device=self.device)
            return int(self.model(x).shape[1])


@contextmanager
def onednn_fusion(enabled: bool = True) -> Iterator[None]:
    """Switch TorchScript's oneDNN Graph fusion on for the enclosed calls only.

    The switch is process-global in torch.jit, so it is restored on exit: other TorchScript models in
    the same process (silero-vad in the reliability extractor) keep their default graphs. A torch build
    without the switch runs the frozen model unfused.
    """
    toggle = getattr(torch.jit, "enable_onednn_fusion", None)
    state = getattr(torch.jit, "onednn_fusion_enabled", None)
    if toggle is None or state is None:
        yield
        return
    before = bool(state())
    toggle(enabled)
    try:
        yield
    finally:
        toggle(before)


def empty_face_rows(n: int, fps: float, dim: int,
                    grid: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All-invalid rows on the frame grid: frame i spans `grid` = (t0, t1) [n] (the frames' real
    times, `Video.frame_grid`); without a grid, [i/fps, (i+1)/fps)."""
    i = np.arange(n, dtype=np.float64)
    t0, t1 = grid if grid is not None else (i / fps, (i + 1) / fps)
    return {"emb": np.zeros((n, dim), np.float32), "t0": np.asarray(t0, np.float64).astype(np.float32),
            "t1": np.asarray(t1, np.float64).astype(np.float32), "valid": np.zeros(n, bool),
            "frame_index": np.arange(n, dtype=np.int64)}
