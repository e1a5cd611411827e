"""Image tensors for the models: [0, 1] scaling, ImageNet normalisation, flip augmentation."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from dadf_fast.data.images import load_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def size_hw(image_size) -> tuple[int, int]:
    """``(H, W)`` from an int ``S`` (``S x S``) or a pair; raises unless both are positive."""
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def load_image(path, image_size, bit_depth: int | None = None) -> torch.Tensor:
    """Image file -> float32 ``[3, H, W]`` model input (:func:`~dadf_fast.data.images.load_rgb`
    then :func:`image_tensor`)."""
    return image_tensor(load_rgb(path, bit_depth), image_size)


def image_tensor(img: Image.Image, image_size) -> torch.Tensor:
    """RGB PIL image -> float32 ``[3, H, W]``, resized to ``image_size`` (bilinear) and
    ImageNet-normalised: what every model of the package takes as input."""
    h, w = size_hw(image_size)
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    return normalize(x)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` (or ``[B, 3, H, W]``) floats in [0, 1] -> ImageNet-normalised."""
    return (image - _MEAN.to(image)) / _STD.to(image)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation for display.

    Args:
        image: ``[3, H, W]`` or ``[B, 3, H, W]`` normalised tensor (any device/dtype).
    Returns:
        uint8 numpy array ``[H, W, 3]`` (or ``[B, H, W, 3]``).
    """
    x = image.detach().to("cpu", torch.float32)
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected [3,H,W] or [B,3,H,W], got {tuple(x.shape)}")
    x = (x * _STD + _MEAN).clamp(0, 1) * 255.0
    x = x.round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def flip_augment(hflip: bool = True, vflip: bool = False, rot90: bool = False,
                 p: float = 0.5) -> Callable[[Image.Image], Image.Image]:
    """Random flips / 90-degree rotations of a PIL image (for normal training images).

    Each enabled transform is applied with probability ``p`` (rot90 picks 90, 180 or 270
    degrees). Randomness comes from torch's generator, so ``torch.manual_seed`` and
    DataLoader worker seeding make it reproducible.
    """
    def augment(img: Image.Image) -> Image.Image:
        if hflip and torch.rand(()) < p:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if vflip and torch.rand(()) < p:
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        if rot90 and torch.rand(()) < p:
            k = int(torch.randint(1, 4, ()))
            img = img.transpose([Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270][k - 1])
        return img

    return augment
