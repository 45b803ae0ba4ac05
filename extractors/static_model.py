"""The static (frame-level) face encoder and its weights file: what a `train_static_<name>` stage
(`extractors/static_finetune.py`) trains and writes, and what the extractor of its modality
(`extractors/sun_face.py`) loads. Shared by both, so neither plug-in imports the other.

Model (`StaticModel`): a torchvision backbone (EfficientNet-B1, EfficientNet-B4 or ViT-B/16) -> a
256-d embedding layer (Linear -> BatchNorm -> Tanh) -> a 2-d VA output (tanh) or 8 expression logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from extractors.base import ExtractorError

# arch -> (torchvision constructor, feature width, published input size)
ARCHS = {"efficientnet_b1": ("efficientnet_b1", 1280, 224), "efficientnet_b4": ("efficientnet_b4", 1792, 380),
         "vit_b_16": ("vit_b_16", 768, 224)}


# ------------------------------------------------------------------------------------------- model
class StaticModel(nn.Module):
    """backbone -> 256-d embedding (Linear, BatchNorm, Tanh) -> VA (tanh) or expression logits.

    `forward` returns the embedding (what the face extractor stores); `head(emb)` the task output.
    """

    def __init__(self, arch: str = "efficientnet_b1", embedding_dim: int = 256, task: str = "va"):
        super().__init__()
        import torchvision

        ctor, width, _ = ARCHS[arch]
        self.arch, self.task = arch, task
        self.backbone = getattr(torchvision.models, ctor)(weights=None)
        if arch.startswith("vit"):
            self.backbone.heads = nn.Identity()
        else:
            self.backbone.classifier = nn.Identity()
        self.embedding = nn.Linear(width, embedding_dim)
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.out = nn.Linear(embedding_dim, 2 if task == "va" else 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.norm(self.embedding(self.backbone(x))))

    def head(self, emb: torch.Tensor) -> torch.Tensor:
        y = self.out(emb)
        return torch.tanh(y) if self.task == "va" else y

    def layers(self) -> list[nn.Module]:
        """The unfreezing units, top first: output, embedding (+ norm), then the backbone's blocks
        from the last to the first (EfficientNet: `features` stages; ViT: encoder layers, then the
        patch embedding)."""
        top: list[nn.Module] = [self.out, nn.ModuleList([self.embedding, self.norm])]
        b = self.backbone
        if self.arch.startswith("vit"):
            blocks = [b.encoder.ln, *reversed(list(b.encoder.layers)),
                      nn.ModuleList([b.conv_proj]), _ParamHolder(b.class_token, b.encoder.pos_embedding)]
        else:
            blocks = list(reversed(list(b.features)))
        return top + blocks


class _ParamHolder(nn.Module):
    """Loose parameters (ViT's class token and position embedding) as one unfreezing unit."""

    def __init__(self, *params: nn.Parameter):
        super().__init__()
        self.held = nn.ParameterList(params)


def load_backbone_init(model: StaticModel, path: str) -> None:
    """Start the backbone from a torchvision state dict (e.g. ImageNet weights downloaded by the user);
    its classifier keys are ignored, every other key must match."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    own = model.backbone.state_dict()
    sd = {k: v for k, v in sd.items() if k in own}
    missing = [k for k in own if k not in sd]
    if missing:
        raise ExtractorError(f"{path}: not a torchvision {model.arch} state dict (missing {missing[:3]})")
    model.backbone.load_state_dict(sd)


def save_weights(model: StaticModel, image_size: int, path: Path) -> None:
    """The weights file: the state dict plus what rebuilds the model (arch, embedding size, task,
    image size), so the extractor needs no other setting to load it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"arch": model.arch, "embedding_dim": model.embedding.out_features, "task": model.task,
            "image_size": int(image_size)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    tmp.replace(path)


def load_weights(path: str) -> tuple[StaticModel, dict]:
    """The model a `train_static` stage wrote, eval mode, and its meta (arch, embedding_dim, task, image_size)."""
    if not Path(path).is_file():
        raise ExtractorError(f"{path}: static encoder weights not found; run its `train_static_<name>` stage "
                             "(dvc repro) or point the config's `weights` at a file it wrote")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "meta" not in obj or "state_dict" not in obj:
        raise ExtractorError(f"{path}: not a file written by a train_static stage (no 'meta'/'state_dict')")
    meta = dict(obj["meta"])
    model = StaticModel(meta["arch"], int(meta["embedding_dim"]), meta["task"])
    model.load_state_dict(obj["state_dict"])
    return model.eval(), meta
