"""MVTec LOCO AD: several masks per image and the sPRO saturation of each."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dadf_fast.data.base import ImageDataset, Record, category_dir, collate, good_records, test_records
from dadf_fast.data.errors import DatasetError
from dadf_fast.data.images import binary_mask, list_images, load_mask_array
from dadf_fast.utils.saturation import saturation_area


def _loco_masks(gt_defect: Path, image: Path) -> list[Path]:
    folder = gt_defect / image.stem
    if not folder.is_dir():
        return []
    masks = list_images(folder)
    if not masks:
        raise DatasetError(f"ground truth folder {folder} holds no mask images")
    return masks


class MVTecLOCO(ImageDataset):
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
        super().__init__(split, ("train", "validation", "test"), image_size, augment, skip_unreadable, bit_depth)
        self.root, self.category = Path(root), category
        cat = category_dir(root, category)
        self.category_dir = cat
        self.defects_config = self._read_config(cat / "defects_config.json")
        if split in ("train", "validation"):
            records = good_records(cat / split / "good", split)
        else:
            records = test_records(cat, _loco_masks, loco=True)
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
        return self._entry_for(np.asarray(load_mask_array(Path(mask_path))), Path(mask_path))

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

    def _extra_ground_truth(self, rec: Record, arrays: list) -> dict:
        return {"masks": [a > 0 for a in arrays],
                "saturation": np.array([self._saturation(a, p)
                                        for a, p in zip(arrays, rec.mask_paths)], dtype=np.float64)}

    def _extra(self, rec: Record, item: dict) -> dict:
        h, w = self.image_size
        masks, sat = [], []
        for p in rec.mask_paths:
            arr = load_mask_array(p)
            m = binary_mask(arr, self.image_size)
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
