"""Image files: listing, decoding to 8-bit RGB (bit depth rules), masks, readability.

Pixel values: 8-bit images are used as they are; samples of more than 8 bits keep their
top 8 bits, by the file's range (16-bit: 65535 -> 255) or by ``bit_depth`` (e.g. 12);
float images must hold [0, 1]. See :func:`load_rgb`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dadf_fast.data.errors import ImageReadError, MissingFolderError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder) -> list[Path]:
    """The image files directly inside ``folder`` (known extensions; hidden files such as
    macOS ``._x.png`` and folders named like images left out), sorted by name (a
    deterministic order)."""
    return sorted((p for p in Path(folder).iterdir() if is_image(p)), key=lambda p: p.name)


def expand_image_paths(items, what: str = "images") -> list[str]:
    """Image files and folders (each folder: its :func:`list_images`) as one list of file
    paths in the given order; a folder without images or a missing path raises
    ``ValueError`` naming ``what``."""
    paths = []
    for p in items:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = [str(f) for f in list_images(p)]
            if not found:
                raise ValueError(f"{what}: no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {p}")
            paths += found
        elif os.path.isfile(p):
            paths.append(p)
        else:
            raise ValueError(f"{what}: no such image file or folder: {p}")
    return paths


def require_dir(folder: Path, what: str) -> Path:
    """``folder``; raises :class:`MissingFolderError` (naming it as ``what``) unless it is a directory."""
    if not folder.is_dir():
        raise MissingFolderError(f"{what} folder not found: {folder}")
    return folder




# Pillow modes whose samples have more than 8 bits (or are floats); the others (L, P, RGB,
# RGBA, ...) are 8-bit and converted by Pillow directly.
_HIGH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def check_bit_depth(bit_depth):
    if bit_depth is None:
        return None
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, (int, np.integer)) \
            or not 8 <= int(bit_depth) <= 32:
        raise ValueError(f"bit_depth must be None or an integer from 8 to 32 (the significant "
                         f"bits of high-bit-depth images, e.g. 12), got {bit_depth!r}")
    return int(bit_depth)


def _to_uint8(arr: np.ndarray, bit_depth, path, container_bits: int | None = None) -> np.ndarray:
    """Samples of any dtype -> uint8, by the format's range, never by the image's content.

    * 8-bit samples are kept (``bit_depth`` does not apply to them).
    * integer samples of a ``B``-bit container (16, 32; ``bit_depth`` overrides B, e.g. 12
      for 12-bit camera data stored in 16 bits) keep their top 8 bits: ``v >> (B - 8)``,
      so 65535 -> 255 and 257 * k -> k. That is how Pillow decodes 16-bit RGB files and how
      scikit-image converts uint16, so every loader path gives the same pixels. Negative
      values, or values that do not fit in B bits, are an error.
    * float samples are intensities in [0, 1] (-> ``rint(v * 255)``); anything else is an
      error (a per-image min-max would give the same pixel different values in
      different images).
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind in "iu":
        container = container_bits or arr.dtype.itemsize * 8
        if container <= 8:
            if arr.size and arr.min() < 0:
                raise ValueError(f"image {path} holds negative pixel values")
            return arr.astype(np.uint8)
        bits = container if bit_depth is None else bit_depth
        if bits > container:
            raise ValueError(f"bit_depth={bits} is more than the {container} bits per sample "
                             f"of image {path}")
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0:
            raise ValueError(f"image {path} holds negative pixel values (min {lo}); integer "
                             f"images must hold intensities >= 0")
        if hi >= 1 << bits:
            hint = "" if bit_depth is None else " (is bit_depth too small?)"
            raise ValueError(f"image {path} holds pixel values up to {hi}, more than "
                             f"{bits}-bit data allows ({(1 << bits) - 1}){hint}")
        return np.right_shift(arr, bits - 8).astype(np.uint8)
    if arr.dtype.kind == "f":
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
            raise ValueError(f"image {path} is a float image with values outside [0, 1] "
                             f"(min {float(np.nanmin(arr))}, max {float(np.nanmax(arr))}, or "
                             f"non-finite); float images are read as intensities in [0, 1]: "
                             f"rescale it, or store it as 8- or 16-bit integers")
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f"image {path} has samples of unsupported type {arr.dtype}")


def _array_to_rgb(arr: np.ndarray, bit_depth, path, container_bits: int | None = None) -> Image.Image:
    """``[H, W]``, ``[H, W, C]`` or channel-first ``[C, H, W]`` samples -> RGB image
    (C = 1, 2 gray + alpha, 3, 4 RGBA; alpha dropped)."""
    if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 3 and arr.shape[-1] in (1, 2):
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3]
    elif arr.ndim != 2:
        raise ValueError(f"image {path} has samples of shape {arr.shape}; expected [H, W] or "
                         f"[H, W, C] with C in 1..4")
    arr = _to_uint8(np.ascontiguousarray(arr), bit_depth, path, container_bits)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(str(path)))


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _high_bit_rgb_png(img: Image.Image) -> bool:
    """A 16-bit colour PNG: Pillow decodes only the top 8 bits of its samples."""
    tile = getattr(img, "tile", None) or []
    raw = tile[0][3] if tile and len(tile[0]) > 3 else None
    raw = raw[0] if isinstance(raw, tuple) else raw
    return isinstance(raw, str) and ";16" in raw and img.mode not in _HIGH_MODES


def _decode(path: Path):
    """Open ``path``: ``(loaded PIL image, is_16bit_colour_png)``, or raw samples (numpy)
    for TIFFs with more than 8 bits per sample or that Pillow cannot read (tifffile keeps
    every bit and the sample type)."""
    try:
        with Image.open(path) as img:
            if _is_tiff(path):
                bits = img.tag_v2.get(258, 8) if hasattr(img, "tag_v2") else 8
                bits = max(bits) if isinstance(bits, tuple) else bits
                if bits > 8:  # Pillow drops the low bits of colour samples, and keeps
                    return _read_tiff(path)  # 32-bit ints in the same mode as 16-bit ones
            high_png = _high_bit_rgb_png(img)  # the tile list is gone after load()
            img.load()
            return img.copy(), high_png  # a copy outlives the closed file
    except Exception as err:  # noqa: BLE001 - any decoder failure becomes one clear error
        if _is_tiff(path):
            try:
                return _read_tiff(path)
            except Exception:  # noqa: BLE001
                pass
        raise ImageReadError(f"cannot read image file {path}: {err}") from err


def load_rgb(path, bit_depth: int | None = None) -> Image.Image:
    """Decode an image file to an RGB PIL image.

    Grayscale, palette and RGBA images become RGB (alpha dropped). Samples of more than 8
    bits keep their top 8 bits, by the container's range (16-bit: 65535 -> 255, whatever
    the image holds); ``bit_depth`` names the significant bits instead, e.g. 12 for 12-bit
    camera data stored in 16-bit files (4095 -> 255); it does not apply to 8-bit images.
    Pillow's mode ``I`` images (e.g. 16-bit PGM) count as 16-bit; TIFFs of more than 8
    bits per sample, and those Pillow cannot decode, are read with ``tifffile`` (their
    own sample type decides: uint16 16 bits, (u)int32 32 bits). Float images must hold
    intensities in [0, 1] (-> ``rint(v * 255)``).

    Raises:
        ImageReadError: the file cannot be decoded; the message names it.
        ValueError: ``bit_depth`` is not None or 8..32, or the samples do not fit the rule
            (negative, above the bit depth, float outside [0, 1]); the message names the file.
    """
    path = Path(path)
    bit_depth = check_bit_depth(bit_depth)
    decoded = _decode(path)
    if isinstance(decoded, np.ndarray):
        return _array_to_rgb(decoded, bit_depth, path)
    img, high_png = decoded
    if high_png and bit_depth not in (None, 16):
        raise ValueError(f"image {path} is a 16-bit colour PNG, which Pillow decodes to its "
                         f"top 8 bits only, so bit_depth={bit_depth} cannot be applied; store "
                         f"it as a 16-bit TIFF")
    if img.mode in _HIGH_MODES:
        # Pillow keeps 16-bit PGM/PNG samples in 32-bit mode "I": their container is 16 bits
        return _array_to_rgb(np.asarray(img), bit_depth, path,
                             container_bits=16 if img.mode == "I" else None)
    if img.mode == "RGB":
        return img
    # L, LA, P, RGBA, CMYK, YCbCr, 1 ... : PIL converts directly. For RGBA/LA the alpha
    # channel is dropped (the colour values are kept), like torchvision's loaders.
    return img.convert("RGB")


def original_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, from its header when Pillow can read it."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            return h, w
    except Exception as err:  # noqa: BLE001
        if _is_tiff(path):
            try:
                arr = _read_tiff(path)
                if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
                    return arr.shape[1], arr.shape[2]
                return arr.shape[0], arr.shape[1]
            except Exception:  # noqa: BLE001
                pass
        raise ImageReadError(f"cannot read image file {path}: {err}") from err


def load_mask_array(path: Path) -> np.ndarray:
    """Raw mask pixel values, ``[H, W]`` (channels reduced by max; alpha ignored)."""
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except Exception as err:  # noqa: BLE001
        raise ImageReadError(f"cannot read mask file {path}: {err}") from err
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)
    return arr


def binary_mask(arr: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """Nonzero pixels of ``arr`` -> float32 ``[H, W]`` in {0, 1} (nearest-neighbour resize).

    Binarising before the resize and using nearest neighbour keeps the result exactly
    binary (a bilinear resize would create fractional edge values).
    """
    binary = Image.fromarray(((arr > 0) * 255).astype(np.uint8), mode="L")
    if binary.size != (hw[1], hw[0]):
        binary = binary.resize((hw[1], hw[0]), Image.NEAREST)
    return torch.from_numpy((np.asarray(binary) > 0).astype(np.float32))


def check_readable(path: Path) -> str | None:
    """None if ``path`` decodes fully, else the error text.

    ``verify()`` checks the PNG chunk CRCs cheaply; a full decode (with JPEG draft
    mode, which still parses the whole stream) catches truncated files of other formats.
    """
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
        return None
    except Exception as err:  # noqa: BLE001
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                _read_tiff(path)
                return None
            except Exception:  # noqa: BLE001
                pass
        return f"{type(err).__name__}: {err}"
