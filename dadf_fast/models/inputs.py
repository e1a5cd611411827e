"""Validation of what users hand the detectors: image batches, training data, sigmas.

Every check raises one line naming the argument and what was expected (the CLI prints
these messages as they are).
"""
from __future__ import annotations

import math
import numbers

import torch

NORMALISE_HINT = ("scale to [0, 1] and ImageNet-normalise them first, e.g. "
                  "dadf_fast.data.datasets.normalize(images.float() / 255)")


def check_images(images, size: int, name: str = "images") -> None:
    """Raise unless ``images`` is a finite floating-point ``[B, 3, size, size]`` tensor."""
    want = f"[B, 3, {size}, {size}]"
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {want}, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must be 4-D {want}, got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"{name} must have 3 (RGB) channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if tuple(images.shape[2:]) != (size, size):
        # rejected rather than resized: a silent resize would change what the maps mean
        # (and where they are written); the dataset classes resize to input_size
        raise ValueError(
            f"{name} must be {size}x{size} for this model (input_size={size}), got "
            f"{images.shape[2]}x{images.shape[3]}; resize them first (the dataset classes do)"
        )
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (ImageNet-normalised), got {images.dtype}; "
                        f"{NORMALISE_HINT}")
    if images.numel() and not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"{name} contain NaN or Inf values (first in image {bad})")


def _item_image(item, where: str):
    if isinstance(item, dict):
        if "image" not in item:
            raise ValueError(f"{where} is a dict without an 'image' entry (keys: {sorted(item)[:8]})")
        return item["image"]
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError(f"{where} is an empty {type(item).__name__}; expected (image, ...)")
        return item[0]
    return item


def stack_train_images(data, size: int, name: str = "train_data") -> torch.Tensor:
    """``[N, 3, size, size]`` finite float images from a tensor or a dataset (``len`` and
    indexing) whose items are images, dicts with an ``image`` or tuples ``(image, ...)``.

    Raises a one-line error naming ``name`` (and the item) for an empty dataset, a wrong
    rank, channel count, size or dtype, or NaN/Inf values.
    """
    if isinstance(data, torch.Tensor):
        if data.dim() == 4 and data.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(data.shape)}): at least one normal image is needed")
        check_images(data, size, name)
        return data
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__") or isinstance(data, (str, bytes)):
        raise TypeError(f"{name} must be a tensor [N, 3, {size}, {size}] or a dataset of images, "
                        f"got {type(data).__name__}")
    n = len(data)
    if n == 0:
        raise ValueError(f"{name} is empty: at least one normal image is needed")
    imgs = []
    for i in range(n):
        where = f"{name}[{i}]"
        img = _item_image(data[i], where)
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"{where} must hold a torch.Tensor image [3, {size}, {size}], got {type(img).__name__}")
        if img.dim() != 3:
            raise ValueError(f"{where} must be an image [3, {size}, {size}], got shape {tuple(img.shape)}")
        check_images(img[None], size, where)
        imgs.append(img)
    return torch.stack(imgs)


def check_sigma(value, name: str = "smooth_sigma") -> float:
    """``value`` as a float, raising unless it is a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0: no smoothing), got {value}")
    return value


class NonFiniteOutputError(RuntimeError):
    """A detector produced NaN or Inf in its anomaly maps or scores."""


def check_finite_output(out: dict, what: str, offset: int = 0) -> None:
    """Raise :class:`NonFiniteOutputError` if any map or score in ``out`` is NaN or Inf
    (``offset``: index of the chunk's first image in the whole batch)."""
    for key in ("anomaly_map", "score"):
        t = out[key]
        ok = torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
        if not bool(ok.all()):
            bad = (~ok).nonzero().flatten().tolist()
            raise NonFiniteOutputError(
                f"{what} produced a non-finite {key} for {len(bad)} image(s) (first: image {offset + bad[0]}); "
                "its weights are probably damaged: retrain or reload a good checkpoint"
            )
