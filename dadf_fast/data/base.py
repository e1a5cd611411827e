"""What every dataset shares: records, the item dicts, ground truth at full size, collate,
and the listing of MVTec-style test folders (see :mod:`dadf_fast.data` for the item keys)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dadf_fast.data.errors import DatasetError, ImageReadError, SkippedImageWarning
from dadf_fast.data.images import (
    IMAGE_EXTENSIONS,
    binary_mask,
    check_bit_depth,
    check_readable,
    is_image,
    list_images,
    load_mask_array,
    load_rgb,
    original_size,
    require_dir,
)
from dadf_fast.data.transforms import image_tensor, load_image, size_hw


def list_categories(root) -> list[str]:
    """Sub-folders of an MVTec-style ``root`` that contain a ``train`` folder."""
    root = require_dir(Path(root), "dataset root")
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


class Record:
    """One dataset entry: image path, label (0 good, 1 anomalous, -1 unknown), defect name, mask files."""

    __slots__ = ("path", "label", "defect", "mask_paths")

    def __init__(self, path: Path, label: int, defect: str, mask_paths: list[Path]):
        self.path, self.label, self.defect, self.mask_paths = path, label, defect, mask_paths


class ImageDataset(Dataset):
    """Shared loading: records -> item dicts (keys: see :mod:`dadf_fast.data`); subclasses
    list their records and call :meth:`_finish`."""

    def __init__(self, split: str, splits: tuple, image_size, augment, skip_unreadable, bit_depth=None):
        if split not in splits:
            names = ", ".join(repr(s) for s in splits[:-1]) + f" or {splits[-1]!r}"
            raise ValueError(f"split must be {names}, got {split!r}")
        self.split = split
        # evaluation splits drop unreadable files by default; a bad training image is an error
        default_skip = split != "train"
        self.image_size = size_hw(image_size)
        self.bit_depth = check_bit_depth(bit_depth)
        if augment is not None and not callable(augment):
            raise TypeError("augment must be a callable on a PIL image, or None")
        self.augment = augment
        self.skip_unreadable = default_skip if skip_unreadable is None else bool(skip_unreadable)
        self.records: list[Record] = []
        self.skipped: list[str] = []

    def _finish(self, records: list[Record]):
        """Install records, dropping unreadable ones first when asked to."""
        if self.augment is not None and any(r.mask_paths for r in records):
            # a geometric augmentation of the image alone would misalign its mask
            raise ValueError("augment is for normal (training) images; this split has masks")
        if self.skip_unreadable:
            kept = []
            for rec in records:
                bad = next(((p, err) for p in [rec.path, *rec.mask_paths]
                            if (err := check_readable(p)) is not None), None)
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
               if (err := check_readable(p)) is not None]
        if bad:
            raise ImageReadError("unreadable files:\n  " + "\n  ".join(bad))

    def load_image(self, path) -> torch.Tensor:
        """Image file -> float32 ``[3, H, W]`` ImageNet-normalised (no augmentation)."""
        return load_image(path, self.image_size, self.bit_depth)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        img = load_rgb(rec.path, self.bit_depth)
        if self.augment is not None:
            img = self.augment(img)
        item = {
            "image": image_tensor(img, self.image_size),
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
        size = original_size(rec.path)
        union = np.zeros(size, dtype=bool)
        arrays = []
        for p in rec.mask_paths:
            arr = load_mask_array(p)
            if arr.shape[:2] != size:
                raise DatasetError(f"mask {p} is {arr.shape[1]}x{arr.shape[0]} pixels but its "
                                   f"image {rec.path} is {size[1]}x{size[0]}")
            arrays.append(arr)
            union |= arr > 0
        out = {"size": size, "mask": union}
        out.update(self._extra_ground_truth(rec, arrays))
        return out

    def _extra_ground_truth(self, rec: Record, arrays: list) -> dict:
        return {}

    def _union_mask(self, rec: Record) -> torch.Tensor:
        h, w = self.image_size
        mask = torch.zeros(h, w)
        for p in rec.mask_paths:
            mask = torch.maximum(mask, binary_mask(load_mask_array(p), self.image_size))
        return mask

    def _extra(self, rec: Record, item: dict) -> dict:
        return {}

    def __repr__(self) -> str:
        n_anom = sum(r.label == 1 for r in self.records)
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, "
                f"anomalous={n_anom}, skipped={len(self.skipped)}, image_size={self.image_size})")


def category_dir(root, category: str) -> Path:
    root = require_dir(Path(root), "dataset root")
    cat = root / category
    if not cat.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DatasetError(f"category {category!r} not found in {root}; "
                           f"categories present: {', '.join(present) or '(none)'}")
    return cat


def good_records(folder: Path, what: str) -> list[Record]:
    require_dir(folder, what)
    files = list_images(folder)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {what} folder {folder}")
    return [Record(p, 0, "good", []) for p in files]


def mvtec_mask_owner(mask: Path) -> str:
    stem = mask.stem
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def test_records(cat: Path, find_masks, loco: bool = False) -> list[Record]:
    """Test records of an MVTec (AD or LOCO) category, with cross-checks both ways
    between images and ground truth."""
    test = require_dir(cat / "test", "test")
    gt = cat / "ground_truth"
    records: list[Record] = []
    defects = sorted(p.name for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
    for defect in defects:
        images = list_images(test / defect)
        if defect == "good":
            records += [Record(p, 0, "good", []) for p in images]
            continue
        for p in images:
            masks = find_masks(gt / defect, p)
            if not masks:
                where = gt / defect / (f"{p.stem}/" if loco else f"{p.stem}_mask.png")
                raise DatasetError(f"anomalous test image {p} has no ground truth mask "
                                   f"(expected {where})")
            records.append(Record(p, 1, defect, masks))
    if not records:
        raise DatasetError(f"no test images in {test}")
    # ground truth without an image is a layout error (usually a renamed or deleted file)
    if gt.is_dir():
        stems = {(r.defect, r.path.stem) for r in records}
        for gdir in sorted(p for p in gt.iterdir() if p.is_dir()):
            entries = sorted(p for p in gdir.iterdir() if (p.is_dir() if loco else is_image(p)))
            for entry in entries:
                owner = entry.name if loco else mvtec_mask_owner(entry)
                if (gdir.name, owner) not in stems:
                    raise DatasetError(f"ground truth {entry} has no matching test image "
                                       f"(expected {test / gdir.name / owner}.*)")
    return records
