"""A plain folder dataset: normal images, test images and optional masks."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from dadf_fast.data.base import ImageDataset, Record, good_records, mvtec_mask_owner
from dadf_fast.data.errors import DatasetError, ImageReadError
from dadf_fast.data.images import IMAGE_EXTENSIONS, list_images, load_mask_array, require_dir


class FolderDataset(ImageDataset):
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
        super().__init__(split, ("train", "test"), image_size, augment, skip_unreadable, bit_depth)
        self.normal_dir = Path(normal_dir) if normal_dir is not None else None
        self.test_dir = Path(test_dir) if test_dir is not None else None
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        if split == "train":
            if self.normal_dir is None:
                raise ValueError("the train split needs normal_dir")
            records = good_records(self.normal_dir, "normal images")
        else:
            if self.test_dir is None:
                raise ValueError("the test split needs test_dir")
            records = self._test_records()
        self._finish(records)

    def _test_records(self) -> list[Record]:
        test = require_dir(self.test_dir, "test images")
        images = list_images(test)
        if not images:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in test folder {test}")
        if self.mask_dir is None:
            return [Record(p, -1, "unknown", []) for p in images]
        stems = {p.stem for p in images}
        if len(stems) != len(images):
            raise DatasetError(f"{test} holds images that share a stem (e.g. a.png and a.jpg); "
                               "masks are matched by stem, so stems must be unique")
        by_stem: dict[str, Path] = {}
        for m in list_images(require_dir(self.mask_dir, "mask")):
            # "<stem>_mask.*" first, then "<stem>.*" (so an image really named "x_mask"
            # still finds its mask "x_mask.png")
            key = next((k for k in (mvtec_mask_owner(m), m.stem) if k in stems), None)
            if key is None:
                raise DatasetError(f"mask {m} has no matching test image in {test}")
            if key in by_stem:
                raise DatasetError(f"two masks for test image stem {key!r}: {by_stem[key]} and {m}")
            by_stem[key] = m
        records = []
        for p in images:
            m = by_stem.get(p.stem)
            if m is None:
                records.append(Record(p, 0, "good", []))
                continue
            # decide the label now: an all-zero mask means a good image. An unreadable
            # mask stays on the record, so the skip / error policy applies to it like to
            # an unreadable image.
            try:
                anomalous = bool((load_mask_array(m) > 0).any())
            except ImageReadError:
                anomalous = True
            records.append(Record(p, 1, "anomalous", [m]) if anomalous
                           else Record(p, 0, "good", []))
        return records
