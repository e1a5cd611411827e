"""Validation of what users hand the detectors: image batches, training data, sizes.

Every check raises one line naming the argument and what was expected (the CLI prints
these messages as they are).
"""
from __future__ import annotations

import numbers

import torch

NORMALISE_HINT = ("scale to [0, 1] and ImageNet-normalise them first, e.g. "
                  "dadf_fast.data.normalize(images.float() / 255)")


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


def check_input_size(value) -> int:
    """``value`` as an int; raises unless it is an int >= 32 and a multiple of 16 (the stride-16
    map must be at least 2x2, and the stride-4 map is cut into 4x4 patches)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 32 or value % 16:
        raise ValueError(f"input_size must be an int >= 32 and a multiple of 16, got {value!r}")
    return int(value)


def check_predict_batch(images, size: int, batch_size) -> None:
    """The checks of a detector's ``predict``: ``images`` as :func:`check_images`, not empty,
    and ``batch_size`` None or a positive int."""
    check_images(images, size)
    if images.shape[0] == 0:
        raise ValueError(f"images is an empty batch (shape {tuple(images.shape)}): nothing to predict")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")


def model_input(images: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """``images`` cast to the dtype of ``module``'s weights (float64/float16 inputs would
    otherwise fail inside the first convolution; mixed precision is autocast's job, not the
    input's); raises when they are on another device than the weights."""
    param = next(module.parameters())
    if images.device != param.device:
        raise ValueError(f"images are on {images.device} but the model is on {param.device}; "
                         f"move them first (images.to({str(param.device)!r}))")
    return images if images.dtype == param.dtype else images.to(param.dtype)


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
