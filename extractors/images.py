"""Face crops as tensors: decoding (OpenCV, else Pillow), letterboxing and normalisation.

Shared by the extractors that read crops (the face extractor) and the static fine-tuning that
trains on them, so a crop is the same tensor for training and for extraction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from extractors.base import VideoError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def letterbox_u8(images: list[torch.Tensor] | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3,h,w] images -> uint8 [B,3,size,size]: long side to `size`, centred zero padding.

    Same-shape images (the usual case: aligned crops) are resized as one tensor.
    """
    from torchvision.transforms.v2 import functional as F

    if isinstance(images, torch.Tensor):
        images = list(images)
    out = torch.zeros((len(images), 3, size, size), dtype=torch.uint8)
    if not images:
        return out
    shapes = {tuple(im.shape[-2:]) for im in images}
    groups = [(shapes.pop(), list(range(len(images))))] if len(shapes) == 1 else \
        [(tuple(im.shape[-2:]), [i]) for i, im in enumerate(images)]
    for (h, w), idx in groups:
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        batch = torch.stack([images[i] for i in idx])
        if (nh, nw) != (h, w):
            batch = F.resize(batch, [nh, nw], antialias=True)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[idx, :, top:top + nh, left:left + nw] = batch
    return out


def normalize(x_u8: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 normalised, on x's device and in x's memory format.

    In place after the one float copy: the same arithmetic as `(x - m) / s` without two more
    image-sized temporaries (each a fresh, page-faulted buffer at batch size)."""
    m = torch.tensor(mean, device=x_u8.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=x_u8.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return x_u8.float().sub_(m).div_(s)


def read_rgb(path: Path) -> torch.Tensor:
    """Decode one crop to uint8 [3,H,W] RGB. OpenCV, not torchvision.io: torchvision's image decoders
    are deprecated since 0.29, and cv2.imread releases the GIL, so worker threads decode in parallel.
    Without OpenCV (a bare GPU machine) Pillow decodes it: both wheels decode JPEG with libjpeg-turbo's
    defaults, pixel for pixel the same (tested)."""
    try:
        import cv2
    except ImportError:
        return _read_rgb_pillow(path)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VideoError(f"{path}: unreadable/corrupt crop; re-extract it, or delete it to mark 'no face'")
    return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)


def _read_rgb_pillow(path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise VideoError(f"{path}: unreadable/corrupt crop ({e}); re-extract it, or delete it to mark 'no face'") from e
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)
