"""MVTec AD."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from dadf_fast.data.base import ImageDataset, category_dir, good_records, test_records


class MVTecAD(ImageDataset):
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
        super().__init__(split, ("train", "test"), image_size, augment, skip_unreadable, bit_depth)
        self.root, self.category = Path(root), category
        cat = category_dir(root, category)
        self.category_dir = cat
        if split == "train":
            records = good_records(cat / "train" / "good", "train")
        else:
            records = test_records(cat, _mvtec_masks)
        self._finish(records)


def _mvtec_masks(gt_defect: Path, image: Path) -> list[Path]:
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (gt_defect / name).is_file():
            return [gt_defect / name]
    return []
