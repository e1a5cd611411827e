"""Datasets: MVTec AD, MVTec LOCO AD and a plain folder dataset.

Every dataset is a :class:`torch.utils.data.Dataset` whose items are dicts:

==========  ==============================  =============================================
key         value                           meaning
==========  ==============================  =============================================
``image``   float32 ``[3, H, W]``           RGB, resized to ``image_size`` (bilinear),
                                            ImageNet-normalised
``mask``    float32 ``[1, H, W]`` in {0,1}  ground truth (union of all masks for LOCO),
                                            resized with nearest neighbour; zeros for
                                            good images and for unknown labels
``label``   int                             0 good, 1 anomalous, -1 unknown (folder
                                            dataset without a mask directory)
``defect``  str                             ``"good"``, the defect folder name, ...
``path``    str                             the image file
==========  ==============================  =============================================

:class:`MVTecLOCO` items add ``masks`` (float32 ``[K, H, W]``, one channel per ground
truth file, ``K = 0`` for good images) and ``saturation`` (float32 ``[K]``, sPRO
saturation areas in pixels of the resized mask: the official area of the full-size mask,
``min(t, area)`` or ``int(t * area)``, times the pixel-count ratio, capped at the resized
region's area). ``K`` varies between images, so batch LOCO test items with
:func:`collate` (it keeps those two keys as lists).

``H, W`` is ``image_size`` (an int ``S`` gives ``S x S``; the model's input size).
``dataset.ground_truth(i)`` gives item ``i``'s ground truth at the image's original size,
unresized (what the official evaluation compares maps with).

Pixel values: 8-bit images are used as they are; samples of more than 8 bits keep their
top 8 bits, by the file's range (16-bit: 65535 -> 255) or by ``bit_depth`` (e.g. 12);
float images must hold [0, 1]. See :func:`load_rgb`.

Error policy, so that a bad file fails fast with its name rather than half-way
through training:

* a missing folder raises :class:`MissingFolderError` (both a ``FileNotFoundError`` and
  a ``ValueError``); any other layout problem (empty train set, mask without an image,
  anomalous image without a mask, unknown category) raises :class:`DatasetError`
  (a ``ValueError``) naming the file or folder.
* construction only lists files, except with ``skip_unreadable=True`` (the default for
  test and validation splits): then every image (and mask) is decoded once up front;
  an unreadable one triggers a :class:`SkippedImageWarning` naming it, is dropped, and
  its path is recorded in ``dataset.skipped``.
* an image that cannot be decoded at load time raises :class:`ImageReadError` naming it.
  Call :meth:`validate` before a long training run to find all such files at once.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dadf_fast.metrics.core import saturation_area

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "MissingFolderError",
    "ImageReadError",
    "SkippedImageWarning",
    "MVTecAD",
    "MVTecLOCO",
    "FolderDataset",
    "collate",
    "denormalize",
    "normalize",
    "flip_augment",
    "list_categories",
    "list_images",
    "load_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


class DatasetError(ValueError):
    """The folder layout is not a valid dataset (the message names the file or folder)."""


class MissingFolderError(FileNotFoundError, DatasetError):
    """A folder the dataset needs does not exist."""


class ImageReadError(OSError):
    """An image or mask file exists but cannot be decoded (the message names it)."""


class SkippedImageWarning(UserWarning):
    """An unreadable evaluation image was dropped from the dataset."""


# ----------------------------------------------------------------------------- helpers

def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (deterministic order)."""
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def list_images(folder) -> list[Path]:
    """The image files directly inside ``folder`` (known extensions; hidden files such as
    macOS ``._x.png`` and folders named like images left out), sorted by name."""
    return _list_images(Path(folder))


def _require_dir(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise MissingFolderError(f"{what} folder not found: {folder}")
    return folder


def _size_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


# Pillow modes whose samples have more than 8 bits (or are floats); the others (L, P, RGB,
# RGBA, ...) are 8-bit and converted by Pillow directly.
_HIGH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _check_bit_depth(bit_depth):
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
    bit_depth = _check_bit_depth(bit_depth)
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


def _original_size(path: Path) -> tuple[int, int]:
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


def _load_mask_array(path: Path) -> np.ndarray:
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


def _binary_mask(arr: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """Nonzero pixels of ``arr`` -> float32 ``[H, W]`` in {0, 1} (nearest-neighbour resize).

    Binarising before the resize and using nearest neighbour keeps the result exactly
    binary (a bilinear resize would create fractional edge values).
    """
    binary = Image.fromarray(((arr > 0) * 255).astype(np.uint8), mode="L")
    if binary.size != (hw[1], hw[0]):
        binary = binary.resize((hw[1], hw[0]), Image.NEAREST)
    return torch.from_numpy((np.asarray(binary) > 0).astype(np.float32))


def _check_readable(path: Path) -> str | None:
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


def list_categories(root) -> list[str]:
    """Sub-folders of an MVTec-style ``root`` that contain a ``train`` folder."""
    root = _require_dir(Path(root), "dataset root")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())


_LIST_KEYS = ("masks", "saturation")


def collate(batch: Sequence[dict]) -> dict:
    """Batch dataset items like ``default_collate``, but keep the variable-size LOCO keys
    ``masks`` (``[K_i, H, W]``) and ``saturation`` (``[K_i]``) as lists of length B."""
    from torch.utils.data import default_collate

    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        out[key] = list(values) if key in _LIST_KEYS else default_collate(values)
    return out


# ----------------------------------------------------------------------------- base

class _Record:
    __slots__ = ("path", "label", "defect", "mask_paths")

    def __init__(self, path: Path, label: int, defect: str, mask_paths: list[Path]):
        self.path, self.label, self.defect, self.mask_paths = path, label, defect, mask_paths


class _ImageDataset(Dataset):
    """Shared loading: records -> item dicts (see module docstring)."""

    split: str

    def __init__(self, image_size, augment, skip_unreadable, default_skip: bool, bit_depth=None):
        self.image_size = _size_hw(image_size)
        self.bit_depth = _check_bit_depth(bit_depth)
        if augment is not None and not callable(augment):
            raise TypeError("augment must be a callable on a PIL image, or None")
        self.augment = augment
        self.skip_unreadable = default_skip if skip_unreadable is None else bool(skip_unreadable)
        self.records: list[_Record] = []
        self.skipped: list[str] = []

    def _finish(self, records: list[_Record]):
        """Install records, dropping unreadable ones first when asked to."""
        if self.augment is not None and any(r.mask_paths for r in records):
            # a geometric augmentation of the image alone would misalign its mask
            raise ValueError("augment is for normal (training) images; this split has masks")
        if self.skip_unreadable:
            kept = []
            for rec in records:
                bad = next(((p, err) for p in [rec.path, *rec.mask_paths]
                            if (err := _check_readable(p)) is not None), None)
                if bad is None:
                    kept.append(rec)
                    continue
                warnings.warn(f"skipping unreadable file {bad[0]} ({bad[1]})",
                              SkippedImageWarning, stacklevel=3)
                self.skipped.append(str(rec.path))
            records = kept
        self.records = records

    # -- public

    def __len__(self) -> int:
        return len(self.records)

    @property
    def paths(self) -> list[str]:
        return [str(r.path) for r in self.records]

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def validate(self) -> None:
        """Decode every image and mask now; raise one :class:`ImageReadError` listing all
        unreadable files. Cheap insurance before an hour of training."""
        bad = [f"{p} ({err})" for r in self.records for p in [r.path, *r.mask_paths]
               if (err := _check_readable(p)) is not None]
        if bad:
            raise ImageReadError("unreadable files:\n  " + "\n  ".join(bad))

    def load_image(self, path) -> torch.Tensor:
        """Image file -> float32 ``[3, H, W]`` ImageNet-normalised (no augmentation)."""
        return self._image_tensor(load_rgb(path, self.bit_depth))

    def _image_tensor(self, img: Image.Image) -> torch.Tensor:
        h, w = self.image_size
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        return normalize(x)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        img = load_rgb(rec.path, self.bit_depth)
        if self.augment is not None:
            img = self.augment(img)
        item = {
            "image": self._image_tensor(img),
            "mask": self._union_mask(rec).unsqueeze(0),
            "label": rec.label,
            "defect": rec.defect,
            "path": str(rec.path),
        }
        item.update(self._extra(rec, item))
        return item

    def ground_truth(self, index: int) -> dict:
        """Ground truth of item ``index`` at the image's original resolution (nothing
        resized), as the official MVTec evaluation compares it.

        Returns:
            ``{"size": (H0, W0), "mask": bool [H0, W0]}`` (the union of the masks; all
            False for good and unlabelled images). :class:`MVTecLOCO` adds ``"masks"``
            (list of K bool ``[H0, W0]``, one per mask file) and ``"saturation"``
            (float64 ``[K]``, the official sPRO saturation areas of those masks; NaN
            without a ``defects_config.json``).

        Raises:
            DatasetError: a mask's size differs from its image's (the official scripts
                refuse such pairs too).
        """
        rec = self.records[index]
        size = _original_size(rec.path)
        union = np.zeros(size, dtype=bool)
        arrays = []
        for p in rec.mask_paths:
            arr = _load_mask_array(p)
            if arr.shape[:2] != size:
                raise DatasetError(f"mask {p} is {arr.shape[1]}x{arr.shape[0]} pixels but its "
                                   f"image {rec.path} is {size[1]}x{size[0]}")
            arrays.append(arr)
            union |= arr > 0
        out = {"size": size, "mask": union}
        out.update(self._extra_ground_truth(rec, arrays))
        return out

    def _extra_ground_truth(self, rec: _Record, arrays: list) -> dict:
        return {}

    def _union_mask(self, rec: _Record) -> torch.Tensor:
        h, w = self.image_size
        mask = torch.zeros(h, w)
        for p in rec.mask_paths:
            mask = torch.maximum(mask, _binary_mask(_load_mask_array(p), self.image_size))
        return mask

    def _extra(self, rec: _Record, item: dict) -> dict:
        return {}

    def __repr__(self) -> str:
        n_anom = sum(r.label == 1 for r in self.records)
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, "
                f"anomalous={n_anom}, skipped={len(self.skipped)}, image_size={self.image_size})")


def _category_dir(root, category: str) -> Path:
    root = _require_dir(Path(root), "dataset root")
    cat = root / category
    if not cat.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DatasetError(f"category {category!r} not found in {root}; "
                           f"categories present: {', '.join(present) or '(none)'}")
    return cat


def _good_records(folder: Path, what: str) -> list[_Record]:
    _require_dir(folder, what)
    files = _list_images(folder)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {what} folder {folder}")
    return [_Record(p, 0, "good", []) for p in files]


# ----------------------------------------------------------------------------- MVTec AD

class MVTecAD(_ImageDataset):
    """MVTec AD layout: ``<root>/<category>/train/good/*.png``,
    ``test/<good|defect>/*.png``, ``ground_truth/<defect>/<name>_mask.png``.

    Args:
        root: dataset root (the folder holding the category folders).
        category: e.g. ``"bottle"``.
        split: ``"train"`` (train/good) or ``"test"``.
        image_size: int ``S`` (``S x S``) or ``(H, W)``.
        augment: callable on the PIL RGB image, train split only (see :func:`flip_augment`).
        skip_unreadable: drop undecodable files with a warning (recorded in ``skipped``);
            default True for ``test``, False for ``train`` (load-time error instead).
        bit_depth: significant bits of high-bit-depth images (e.g. 12 for 12-bit data in
            16-bit files); None: the file's own sample size. See :func:`load_rgb`.

    Items: see the module docstring. Ground truth masks may also be named ``<name>.png``.

    Raises:
        MissingFolderError, DatasetError: see the module docstring.
    """

    def __init__(self, root, category: str, split: str = "train", image_size=256,
                 augment: Callable | None = None, skip_unreadable: bool | None = None,
                 bit_depth: int | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        super().__init__(image_size, augment, skip_unreadable, default_skip=(split != "train"),
                         bit_depth=bit_depth)
        self.root, self.category, self.split = Path(root), category, split
        cat = _category_dir(root, category)
        self.category_dir = cat
        if split == "train":
            records = _good_records(cat / "train" / "good", "train")
        else:
            records = _test_records(cat, _mvtec_masks)
        self._finish(records)


def _mvtec_masks(gt_defect: Path, image: Path) -> list[Path]:
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (gt_defect / name).is_file():
            return [gt_defect / name]
    return []


def _mvtec_mask_owner(mask: Path) -> str:
    stem = mask.stem
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def _test_records(cat: Path, find_masks, loco: bool = False) -> list[_Record]:
    """Test records of an MVTec (AD or LOCO) category, with cross-checks both ways
    between images and ground truth."""
    test = _require_dir(cat / "test", "test")
    gt = cat / "ground_truth"
    records: list[_Record] = []
    defects = sorted(p.name for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
    for defect in defects:
        images = _list_images(test / defect)
        if defect == "good":
            records += [_Record(p, 0, "good", []) for p in images]
            continue
        for p in images:
            masks = find_masks(gt / defect, p)
            if not masks:
                where = gt / defect / (f"{p.stem}/" if loco else f"{p.stem}_mask.png")
                raise DatasetError(f"anomalous test image {p} has no ground truth mask "
                                   f"(expected {where})")
            records.append(_Record(p, 1, defect, masks))
    if not records:
        raise DatasetError(f"no test images in {test}")
    # ground truth without an image is a layout error (usually a renamed or deleted file)
    if gt.is_dir():
        stems = {(r.defect, r.path.stem) for r in records}
        for gdir in sorted(p for p in gt.iterdir() if p.is_dir()):
            entries = sorted(p for p in gdir.iterdir() if (p.is_dir() if loco else _is_image(p)))
            for entry in entries:
                owner = entry.name if loco else _mvtec_mask_owner(entry)
                if (gdir.name, owner) not in stems:
                    raise DatasetError(f"ground truth {entry} has no matching test image "
                                       f"(expected {test / gdir.name / owner}.*)")
    return records


# ----------------------------------------------------------------------------- MVTec LOCO

def _loco_masks(gt_defect: Path, image: Path) -> list[Path]:
    folder = gt_defect / image.stem
    if not folder.is_dir():
        return []
    masks = _list_images(folder)
    if not masks:
        raise DatasetError(f"ground truth folder {folder} holds no mask images")
    return masks


class MVTecLOCO(_ImageDataset):
    """MVTec LOCO AD layout: as MVTec AD plus ``validation/good``; ground truth is
    ``ground_truth/<defect>/<image id>/000.png, 001.png, ...`` (one file per defect
    instance) and ``defects_config.json`` sits at the category root.

    Args:
        root, category, image_size, augment, skip_unreadable, bit_depth: as :class:`MVTecAD`.
        split: ``"train"``, ``"validation"`` or ``"test"``.

    Items add ``masks`` (float32 ``[K, H, W]``, the separate binarised masks, ``K = 0``
    for good images) and ``saturation`` (float32 ``[K]``, the sPRO saturation area of
    each mask in pixels of the resized ``H x W`` grid; NaN without a defects config).
    Batch test items with :func:`collate` (``dataset.collate``).

    Attributes:
        defects_config: the parsed ``defects_config.json`` (list of dicts with
            ``defect_name``, ``pixel_value``, ``saturation_threshold``,
            ``relative_saturation``), or None when the file is absent.
    """

    collate = staticmethod(collate)

    def __init__(self, root, category: str, split: str = "train", image_size=256,
                 augment: Callable | None = None, skip_unreadable: bool | None = None,
                 bit_depth: int | None = None):
        if split not in ("train", "validation", "test"):
            raise ValueError(f"split must be 'train', 'validation' or 'test', got {split!r}")
        super().__init__(image_size, augment, skip_unreadable, default_skip=(split != "train"),
                         bit_depth=bit_depth)
        self.root, self.category, self.split = Path(root), category, split
        cat = _category_dir(root, category)
        self.category_dir = cat
        self.defects_config = self._read_config(cat / "defects_config.json")
        if split in ("train", "validation"):
            records = _good_records(cat / split / "good", split)
        else:
            records = _test_records(cat, _loco_masks, loco=True)
        self._finish(records)

    @staticmethod
    def _read_config(path: Path):
        if not path.is_file():
            return None
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot parse {path}: {err}") from err
        keys = {"defect_name", "pixel_value", "saturation_threshold", "relative_saturation"}
        if not isinstance(cfg, list) or not all(isinstance(e, dict) and keys <= e.keys() for e in cfg):
            raise DatasetError(f"{path} must be a list of objects with keys {sorted(keys)}")
        return cfg

    def defect_entry(self, mask_path) -> dict | None:
        """The ``defects_config`` entry of a LOCO mask file, found by its pixel value.

        LOCO masks encode the defect type as the (single) nonzero pixel value; when a file
        holds several values the most frequent one decides. Returns None for an all-zero
        mask. Raises :class:`DatasetError` when there is no config or no entry matches.
        """
        return self._entry_for(np.asarray(_load_mask_array(Path(mask_path))), Path(mask_path))

    def _entry_for(self, arr: np.ndarray, path: Path) -> dict | None:
        if self.defects_config is None:
            raise DatasetError(f"no defects_config.json in {self.category_dir}")
        values, counts = np.unique(arr[arr > 0], return_counts=True)
        if values.size == 0:
            return None
        value = int(values[np.argmax(counts)])
        for entry in self.defects_config:
            if int(entry["pixel_value"]) == value:
                return entry
        raise DatasetError(f"mask {path} has pixel value {value}, which no entry of "
                           f"{self.category_dir / 'defects_config.json'} lists")

    def _saturation(self, arr: np.ndarray, path: Path) -> float:
        """Official saturation area of a full-size mask (NaN without a defects config)."""
        if self.defects_config is None:
            return float("nan")
        entry = self._entry_for(arr, path)
        if entry is None:
            raise DatasetError(f"mask {path} is empty (all pixels 0); a ground truth region "
                               f"needs at least one pixel")
        return saturation_area(int(np.count_nonzero(arr)), entry["saturation_threshold"],
                               bool(entry["relative_saturation"]))

    def _extra_ground_truth(self, rec: _Record, arrays: list) -> dict:
        return {"masks": [a > 0 for a in arrays],
                "saturation": np.array([self._saturation(a, p)
                                        for a, p in zip(arrays, rec.mask_paths)], dtype=np.float64)}

    def _extra(self, rec: _Record, item: dict) -> dict:
        h, w = self.image_size
        masks, sat = [], []
        for p in rec.mask_paths:
            arr = _load_mask_array(p)
            m = _binary_mask(arr, self.image_size)
            masks.append(m)
            area = float(m.sum())
            if self.defects_config is None:
                sat.append(float("nan"))
            elif area == 0 or not arr.any():
                sat.append(0.0)  # the region vanished in the resize: nothing can cover it
            else:
                # the official area at full size, in pixels of the resized grid, capped at
                # the resized region's area so that a fully covered region still scores 1
                scale = (h * w) / float(arr.shape[0] * arr.shape[1])
                sat.append(min(self._saturation(arr, p) * scale, area))
        return {
            "masks": torch.stack(masks) if masks else torch.zeros(0, h, w),
            "saturation": torch.tensor(sat, dtype=torch.float32),
        }


# ----------------------------------------------------------------------------- folders

class FolderDataset(_ImageDataset):
    """Plain folders: a directory of normal images, a directory of test images and an
    optional directory of masks (files directly inside each directory, sorted by name).

    Masks are matched to test images by stem: ``<stem>_mask.<ext>`` or ``<stem>.<ext>``.
    Labelling rule for the test split:

    * with ``mask_dir``: an image whose mask has any nonzero pixel is anomalous
      (label 1, defect ``"anomalous"``); an image with no mask, or an all-zero mask, is
      good (label 0, defect ``"good"``). A mask with no test image is an error.
    * without ``mask_dir``: labels are unknown (label -1, defect ``"unknown"``, zero mask);
      the dataset can be scored but not evaluated.

    Args:
        normal_dir: normal images (the train split).
        test_dir: test images (the test split).
        mask_dir: optional ground truth for ``test_dir``.
        split: ``"train"`` or ``"test"``.
        image_size, augment, skip_unreadable, bit_depth: as :class:`MVTecAD`.
    """

    def __init__(self, normal_dir=None, test_dir=None, mask_dir=None, split: str = "train",
                 image_size=256, augment: Callable | None = None,
                 skip_unreadable: bool | None = None, bit_depth: int | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        super().__init__(image_size, augment, skip_unreadable, default_skip=(split != "train"),
                         bit_depth=bit_depth)
        self.split = split
        self.normal_dir = Path(normal_dir) if normal_dir is not None else None
        self.test_dir = Path(test_dir) if test_dir is not None else None
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        if split == "train":
            if self.normal_dir is None:
                raise ValueError("the train split needs normal_dir")
            records = _good_records(self.normal_dir, "normal images")
        else:
            if self.test_dir is None:
                raise ValueError("the test split needs test_dir")
            records = self._test_records()
        self._finish(records)

    def _test_records(self) -> list[_Record]:
        test = _require_dir(self.test_dir, "test images")
        images = _list_images(test)
        if not images:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in test folder {test}")
        if self.mask_dir is None:
            return [_Record(p, -1, "unknown", []) for p in images]
        stems = {p.stem for p in images}
        if len(stems) != len(images):
            raise DatasetError(f"{test} holds images that share a stem (e.g. a.png and a.jpg); "
                               "masks are matched by stem, so stems must be unique")
        by_stem: dict[str, Path] = {}
        for m in _list_images(_require_dir(self.mask_dir, "mask")):
            # "<stem>_mask.*" first, then "<stem>.*" (so an image really named "x_mask"
            # still finds its mask "x_mask.png")
            key = next((k for k in (_mvtec_mask_owner(m), m.stem) if k in stems), None)
            if key is None:
                raise DatasetError(f"mask {m} has no matching test image in {test}")
            if key in by_stem:
                raise DatasetError(f"two masks for test image stem {key!r}: {by_stem[key]} and {m}")
            by_stem[key] = m
        records = []
        for p in images:
            m = by_stem.get(p.stem)
            if m is None:
                records.append(_Record(p, 0, "good", []))
                continue
            # decide the label now: an all-zero mask means a good image. An unreadable
            # mask stays on the record, so the skip / error policy applies to it like to
            # an unreadable image.
            try:
                anomalous = bool((_load_mask_array(m) > 0).any())
            except ImageReadError:
                anomalous = True
            records.append(_Record(p, 1, "anomalous", [m]) if anomalous
                           else _Record(p, 0, "good", []))
        return records
