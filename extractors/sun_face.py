"""The `sun_face` store: per-frame 256-d embeddings of the frame encoder fine-tuned on the face crops.

Profile `sun2024` (the SUN team's ABAW 2024 video branch): the encoder is not a downloadable
checkpoint but is fine-tuned on this dataset's crops by stage `train_static_sun_face`
(`extractors/static_finetune.py`, README "Static fine-tuning"); this extractor loads the weights file
that stage wrote and writes a store of its own, laid out as the face store (emb, t0, t1, valid,
frame_index; `box` for detected faces). Everything but the model is the face extractor's: crops or
detection, letterboxing, ImageNet normalisation, the frozen CPU path.

The model's architecture and input size come from the weights file (the stage records them);
`image_size` here must agree, so a store's fingerprint names the size its images had.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from extractors.base import ExtractorError, register, torch_device
from extractors.face import FaceConfig, GradaFaceExtractor
from extractors.static_model import load_weights


@dataclass
class SunFaceConfig(FaceConfig):
    """FaceConfig with the fine-tuned static encoder as backbone (`weights`: the `.pth` written by
    `train_static_sun_face`, `data/static/sun_face/weights.pth`). The task output is not stored
    (`store_heads` false): the temporal head learns from the embedding."""

    backbone: str = "static"
    image_size: int = 224
    store_heads: bool = False

    def validate(self) -> None:
        if self.backbone != "static":
            raise ExtractorError(f"sun_face backbone {self.backbone!r}: only 'static' (the train_static weights)")
        saved, self.backbone = self.backbone, "grada"  # the remaining checks are the face extractor's
        try:
            super().validate()
        finally:
            self.backbone = saved


@register("sun_face", modality="sun_face", default=True, weights=True, crops=True)
class SunFaceExtractor(GradaFaceExtractor):
    """Face embeddings of the fine-tuned static encoder (store layout of the face extractor)."""

    def __init__(self, cfg: SunFaceConfig):
        super().__init__(cfg)

    def fingerprint(self) -> dict:
        fp = super().fingerprint()
        fp.pop("variant", None)
        return fp

    def load(self) -> None:
        """Build the encoder from the weights file (architecture recorded in it) and prepare the CPU path."""
        if self.model is not None:
            return
        cfg = self.cfg
        if not cfg.weights:
            raise ExtractorError("sun_face: `weights` is not set; point it at data/static/sun_face/weights.pth "
                                 "(written by stage train_static_sun_face)")
        self.device = torch_device(cfg.device)
        model, meta = load_weights(cfg.weights)
        if int(meta["image_size"]) != cfg.image_size:
            raise ExtractorError(f"{cfg.weights}: trained at {meta['image_size']} px, but sun_face image_size is "
                                 f"{cfg.image_size}; set them equal (train_static.sun_face.image_size)")
        self._has_heads = False
        self.weights_id()
        if cfg.source == "detect":
            cfg.detector.check_available("face")
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self._frozen = self._freeze() if self.device.type == "cpu" and cfg.cpu_freeze else None
