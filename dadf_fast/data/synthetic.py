"""Small MVTec-layout datasets made from real photographs that ship with scikit-image.

No download is ever needed: the sources are the images bundled inside the
scikit-image wheel (``skimage.data``), or any image file / array the caller passes.

For each photo category (one source photo):

* the photo is split into a TRAIN REGION (the first 60 % along its longer axis) and a
  disjoint TEST REGION (the remaining 40 %); with validation images (``n_val``), a band of
  one crop side at the far end of the train region's longer axis becomes a third, disjoint
  VALIDATION REGION (:func:`validation_region`);
* every sample is a random square crop from its region (random position, scale jitter
  0.85-1.0 of the test region's short side, times the category's crop scale for
  ``"<photo>@<scale>"`` names; brightness jitter +-5 %), resized to ``image_size`` x
  ``image_size``; so test normals are unseen crops from the same distribution as the
  training crops. That only holds for photos whose two regions show the same kind of
  content: ``camera`` is left out of the harness (the train region shows the cameraman,
  the test region only buildings and grass), ``cell`` (its one cell lies on the region
  cut), ``clock`` (mostly flat grey), ``cat`` (the same photo as ``chelsea``, a patch source).

Procedural categories (textures and aligned objects, :mod:`dadf_fast.data.procedural`, named
in :mod:`dadf_fast.data.harness`) render every sample afresh from the random stream; objects
come with a silhouette that defect placement prefers.

Anomalous test samples get one defect drawn on the resized crop (:mod:`dadf_fast.data.defects`):
``scratch``, ``patch`` (foreign material from a *different* photo), ``spot`` (the default
:data:`DEFECT_TYPES`) and ``colour``, ``blur``, ``missing``, ``contamination``, ``crack``
(:data:`EXTRA_DEFECT_TYPES`). Ground truth masks are exact: no pixel outside the mask is
touched; inside, every pixel differs from the clean crop by at least the type's minimum
contrast (``MIN_CONTRAST`` = 40 for the default types) or, for texture changes, the mean
difference is bounded below. Every defect covers at least ``MIN_AREA_FRAC`` of the image
(contamination a third of that).

Layout written (as in MVTec AD)::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...   (0 / 255)
    <root>/<category>/val/good/000.png ...                     (only with n_val > 0)
    <root>/<category>/SYNTHETIC.json                           (source, regions, crops)
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from dadf_fast.data import harness
from dadf_fast.data.defects import (ALL_DEFECT_TYPES, DEFECT_TYPES, EXTRA_DEFECT_TYPES, MAX_AREA_FRAC,
                                    MIN_AREA_FRAC, MIN_CONTRAST, make_defect)

__all__ = [
    "DEMO_CATEGORIES",
    "DEFECT_TYPES",
    "EXTRA_DEFECT_TYPES",
    "ALL_DEFECT_TYPES",
    "PATCH_SOURCES",
    "MIN_CONTRAST",
    "MIN_AREA_FRAC",
    "MAX_AREA_FRAC",
    "available_sources",
    "load_source",
    "split_regions",
    "validation_region",
    "make_sample",
    "make_defect",
    "make_dataset",
]

# Grey-level textures: stationary, so any crop is a plausible "normal" sample.
DEMO_CATEGORIES = ("brick", "grass", "gravel")
# Photos that foreign-material patches are cut from (the category's own source excluded).
PATCH_SOURCES = ("coffee", "astronaut", "rocket", "chelsea", "immunohistochemistry")

TRAIN_FRAC = 0.6

# skimage.data loaders whose image is inside the wheel (checked offline with 0.26) and is
# a photograph at least 256 px on its short side. Others (eagle, lily, skin, ...) need
# pooch and a network; horse/checkerboard/colorwheel/logo are drawings, not photos.
_SKIMAGE_CANDIDATES = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "retina",
    "rocket",
)
_CACHE: dict[str, np.ndarray] = {}


# ----------------------------------------------------------------------------- sources

def _as_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        if np.issubdtype(arr.dtype, np.floating) and a.min() >= 0 and a.max() <= 1:
            a = a * 255
        elif a.max() > 255:
            a = a / 257.0
        arr = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"cannot use an array of shape {arr.shape} as an RGB source")
    return np.ascontiguousarray(arr)


def load_source(source) -> np.ndarray:
    """A source photo as uint8 RGB ``[H, W, 3]``.

    Args:
        source: a ``skimage.data`` name (e.g. ``"brick"``), a name of
            :data:`dadf_fast.data.harness.EXTRA_SOURCES` (``"terrain"``, ``"grace_hopper"``),
            a path to an image file, or an array (``[H, W]``, ``[H, W, 1|3|4]``; grayscale
            becomes RGB).
    """
    if isinstance(source, np.ndarray):
        return _as_rgb_uint8(source)
    key = str(source)
    if key in _CACHE:
        return _CACHE[key]
    path = Path(key)
    if path.suffix and path.is_file():
        with Image.open(path) as img:
            arr = _as_rgb_uint8(np.asarray(img.convert("RGB")))
    elif key in harness.EXTRA_SOURCES:
        arr = _as_rgb_uint8(harness.EXTRA_SOURCES[key]())
    else:
        import skimage.data

        loader = getattr(skimage.data, key, None)
        if loader is None or not callable(loader):
            raise ValueError(f"unknown source {key!r}: not an image file and not in skimage.data; "
                             f"offline sources: {', '.join(available_sources())}")
        try:
            arr = _as_rgb_uint8(loader())
        except Exception as err:  # noqa: BLE001 - pooch / network failures
            raise ValueError(f"skimage.data.{key}() is not available offline ({err}); "
                             f"offline sources: {', '.join(available_sources())}") from err
    _CACHE[key] = arr
    return arr


def available_sources(min_side: int = 256) -> list[str]:
    """``skimage.data`` photographs that load without a network and whose short side is at
    least ``min_side`` pixels (names usable in ``make_dataset(categories=...)``)."""
    names = []
    for name in _SKIMAGE_CANDIDATES:
        try:
            arr = load_source(name)
        except Exception:  # noqa: BLE001
            continue
        if min(arr.shape[:2]) >= min_side:
            names.append(name)
    return names


def split_regions(shape, train_frac: float = TRAIN_FRAC):
    """Disjoint train / test regions of a source of ``shape`` ``(H, W, ...)``.

    The split runs along the longer axis: the first ``train_frac`` is the train region.
    Returns ``(train_box, test_box)``, boxes as ``(top, left, bottom, right)`` with
    exclusive bottom/right.
    """
    h, w = int(shape[0]), int(shape[1])
    if w >= h:
        cut = int(round(w * train_frac))
        return (0, 0, h, cut), (0, cut, h, w)
    cut = int(round(h * train_frac))
    return (0, 0, cut, w), (cut, 0, h, w)


def validation_region(train_box, base: int):
    """``(train_box, val_box)``: ``train_box`` less a band of ``base`` (one crop side) at the
    far end of its longer axis, and that band.

    Why a region of its own: random crops of one photo share pixels, so an image held out of
    the training crops at random is a near-copy of training content and scores far lower
    than a crop of pixels the model never saw (measured on the demo photos: median image
    score 1.3-1.5 against 3.1-4.6, docs/accuracy.md "Decisions"); thresholds calibrated on
    such images flag every new normal image. Validation crops from their own region are as
    new to the model as the test crops, as the images of distinct parts are on a real line.
    """
    top, left, bottom, right = (int(v) for v in train_box)
    along_rows = bottom - top >= right - left
    start, end = (top, bottom) if along_rows else (left, right)
    cut = end - int(base)
    if cut - start < base:
        raise ValueError(f"the train region {tuple(train_box)} is too small to give a validation band of {base} px "
                         f"and keep a crop of {base} px for training")
    if along_rows:
        return (top, left, cut, right), (cut, left, bottom, right)
    return (top, left, bottom, cut), (top, cut, bottom, right)


def _crop_side(test_box) -> int:
    # Crops of the same size distribution in both regions: based on the (smaller)
    # test region's short side, so every crop fits in either region.
    return min(test_box[2] - test_box[0], test_box[3] - test_box[1])


def _random_crop(src: np.ndarray, box, base: int, rng: np.random.Generator, image_size: int):
    side = max(8, int(round(base * rng.uniform(0.85, 1.0))))
    top = int(rng.integers(box[0], box[2] - side + 1))
    left = int(rng.integers(box[1], box[3] - side + 1))
    crop = Image.fromarray(src[top:top + side, left:left + side])
    crop = crop.resize((image_size, image_size), Image.BILINEAR)
    gain = rng.uniform(0.95, 1.05)
    out = np.clip(np.asarray(crop, dtype=np.float32) * gain, 0, 255).round().astype(np.uint8)
    return out, (top, left, top + side, left + side)


def make_sample(source: np.ndarray, box, rng: np.random.Generator, image_size: int = 256,
                defect: str | None = None, foreign: np.ndarray | None = None, base: int | None = None,
                where: np.ndarray | None = None):
    """One sample: a random crop of ``source`` inside ``box``, optionally with a defect.

    Args:
        source: uint8 RGB ``[H, W, 3]``.
        box: ``(top, left, bottom, right)`` region the crop must lie in.
        rng: numpy generator.
        image_size: output side ``S``.
        defect: None for a normal sample, else one of :data:`ALL_DEFECT_TYPES`.
        foreign: photo for ``patch`` defects.
        base: nominal crop side in source pixels (default: the test region's short side).
        where: optional bool ``[S, S]`` area the defect should mostly hit.
    Returns:
        ``(clean, defective, mask, crop_box)``: uint8 ``[S, S, 3]`` twice (identical when
        ``defect`` is None), bool ``[S, S]`` (all False for normal samples), and the crop
        ``(top, left, bottom, right)`` in source coordinates.
    """
    if base is None:
        base = _crop_side(split_regions(source.shape)[1])
    clean, crop_box = _random_crop(source, box, base, rng, image_size)
    if defect is None:
        return clean, clean.copy(), np.zeros(clean.shape[:2], bool), crop_box
    defective, mask = make_defect(clean, defect, rng, foreign, where=where)
    return clean, defective, mask, crop_box


# ----------------------------------------------------------------------------- dataset


def _category_items(categories) -> list[tuple[str, object]]:
    if categories is None:
        categories = DEMO_CATEGORIES
    if isinstance(categories, str):
        raise ValueError(f"categories must be a list or a mapping; write [{categories!r}] for one category")
    if isinstance(categories, np.ndarray):
        raise ValueError("pass arrays as a mapping {category_name: array}")
    if isinstance(categories, Mapping):
        return [(str(k), v) for k, v in categories.items()]
    items = []
    for src in categories:
        if isinstance(src, np.ndarray):
            raise ValueError("pass arrays as a mapping {category_name: array}")
        p = Path(str(src))
        items.append((p.stem if p.suffix and p.is_file() else str(src), src))
    return items


def _save_png(arr: np.ndarray, path: Path) -> None:
    # compress_level=1: these files are rewritten often; size matters less than speed
    Image.fromarray(arr).save(path, compress_level=1)


def _photo_category(category: str, spec, image_size: int, with_val: bool = False):
    """``(sample, meta, source)`` of a photo category: ``sample(split, rng) -> (clean, None,
    crop box)`` draws exactly what :func:`make_sample` draws (datasets stay reproducible);
    ``with_val``: the train region gives up its :func:`validation_region` (split ``"val"``)."""
    name, scale = spec, 1.0
    if isinstance(spec, str) and not (Path(spec).suffix and Path(spec).is_file()):
        name, scale = harness.parse_scale(spec)
    src = load_source(name)
    train_box, test_box = split_regions(src.shape)
    base = _crop_side(test_box)
    if scale != 1.0:
        base = int(round(base * scale))
    if base < 32:
        raise ValueError(f"source for {category!r} is too small ({src.shape[1]}x{src.shape[0]}"
                         f"{f' at crop scale {scale}' if scale != 1.0 else ''})")
    boxes = {"train": train_box, "test": test_box}
    if with_val:
        boxes["train"], boxes["val"] = validation_region(train_box, base)

    def sample(split, rng):
        clean, box = _random_crop(src, boxes[split], base, rng, image_size)
        return clean, None, list(box)

    meta = {"source": name if isinstance(name, str) else "array", "source_shape": list(src.shape),
            "train_region": list(boxes["train"]), "test_region": list(test_box)}
    if with_val:
        meta["val_region"] = list(boxes["val"])
    if scale != 1.0:
        meta["scale"] = scale
    return sample, meta, src


def _procedural_category(name: str, render, image_size: int):
    """``(sample, meta, None)`` of a procedural / aligned-object category;
    train and test samples are independent renderings (the same distribution by construction)."""
    def sample(split, rng):
        return render(rng, image_size)

    kind = harness.category_kind(name)
    meta = {"source": f"procedural:{name}", "kind": kind}
    if kind == "object":
        from dadf_fast.data.procedural import MAX_ANGLE, MAX_GAIN, MAX_SHIFT

        meta["jitter"] = {"shift": MAX_SHIFT, "angle": MAX_ANGLE, "gain": MAX_GAIN}
    return sample, meta, None


def make_dataset(root, categories: Sequence | Mapping | None = None, n_train: int = 40,
                 n_test_good: int = 10, n_test_defect: int = 20, image_size: int = 256,
                 seed: int = 0, defects: Sequence[str] = DEFECT_TYPES,
                 patch_sources: Sequence | None = None, n_val: int = 0) -> Path:
    """Write a small MVTec-AD-layout dataset and return ``root`` (as a Path).

    Args:
        root: output folder (created).
        categories: source names from :func:`available_sources`, harness category names
            (:func:`dadf_fast.data.harness.harness_categories`: procedural textures, aligned
            objects, ``"<photo>@<scale>"``), image file paths (category = file stem), or a
            mapping ``{category: source}`` where a source is any of those or an array.
            Default :data:`DEMO_CATEGORIES`.
        n_train: normal training images per category.
        n_test_good: normal test images per category.
        n_test_defect: anomalous test images per category, defect types taken in turn
            from ``defects``.
        image_size: side of the written square PNGs.
        seed: everything is a deterministic function of ``seed`` and the category name.
        defects: defect types to use (subset of :data:`ALL_DEFECT_TYPES`).
        patch_sources: photos the ``patch`` defect cuts material from (default
            :data:`PATCH_SOURCES`, without the category's own source).
        n_val: normal validation images per category, written to ``val/good`` (for
            ``fit(val_images=...)`` / ``dadf-fast train --val-dir``): crops of a photo's
            :func:`validation_region` (the train region gives it up), fresh renderings of a
            procedural category. 0 (the default) writes none and leaves the regions as they were.

    A category folder that already exists is replaced only if it was generated by this
    function (it holds ``SYNTHETIC.json``); otherwise ``FileExistsError``.
    """
    root = Path(root)
    if isinstance(defects, str):
        raise ValueError(f"defects must be a list of names, got the string {defects!r}")
    defects = tuple(defects)
    for d in defects:
        if d not in ALL_DEFECT_TYPES:
            raise ValueError(f"unknown defect {d!r} in defects; choose from {ALL_DEFECT_TYPES}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ValueError("n_train must be >= 1 and the test counts >= 0")
    if int(n_val) != n_val or n_val < 0:
        raise ValueError(f"n_val must be an integer >= 0, got {n_val!r}")
    if n_test_defect and not defects:
        raise ValueError("n_test_defect > 0 needs at least one defect type")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    pool = list(PATCH_SOURCES if patch_sources is None else patch_sources)

    for category, src_spec in _category_items(categories):
        render = harness.renderer(src_spec) if isinstance(src_spec, str) else None
        if render is not None and not (Path(src_spec).suffix and Path(src_spec).is_file()):
            sample, meta, own = _procedural_category(src_spec, render, image_size)
            own_name = None
        else:
            sample, meta, own = _photo_category(category, src_spec, image_size, with_val=n_val > 0)
            own_name = meta["source"] if isinstance(src_spec, str) else None
        # a stable per-category stream (crc32, not hash(), which is salted per process)
        rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
        foreign = [s for s in pool if not (own_name is not None and isinstance(s, str) and s == own_name)]
        foreign = [load_source(s) for s in foreign]
        if not foreign:  # inverted self as last resort
            foreign = [255 - (own if own is not None else render(np.random.default_rng(seed), 256)[0])]

        cat = root / category
        if cat.exists():
            if not (cat / "SYNTHETIC.json").is_file():
                raise FileExistsError(f"{cat} exists and was not made by make_dataset; not overwriting")
            shutil.rmtree(cat)
        for sub in ["train/good", "test/good"] + [f"test/{d}" for d in defects] + \
                   [f"ground_truth/{d}" for d in defects] + (["val/good"] if n_val else []):
            (cat / sub).mkdir(parents=True, exist_ok=True)

        records: dict[str, object] = {}
        for i in range(n_train):
            clean, _, rec = sample("train", rng)
            _save_png(clean, cat / "train" / "good" / f"{i:03d}.png")
            records[f"train/good/{i:03d}.png"] = rec
        for i in range(n_test_good):
            clean, _, rec = sample("test", rng)
            _save_png(clean, cat / "test" / "good" / f"{i:03d}.png")
            records[f"test/good/{i:03d}.png"] = rec
        counters = {d: 0 for d in defects}
        for i in range(n_test_defect):
            d = defects[i % len(defects)]
            k = counters[d]
            counters[d] += 1
            fgn = foreign[int(rng.integers(len(foreign)))]
            clean, where, rec = sample("test", rng)
            defective, mask = make_defect(clean, d, rng, fgn, where=where)
            _save_png(defective, cat / "test" / d / f"{k:03d}.png")
            _save_png((mask * 255).astype(np.uint8), cat / "ground_truth" / d / f"{k:03d}_mask.png")
            records[f"test/{d}/{k:03d}.png"] = rec
        # their own stream: the validation images never change what the other splits draw
        vrng = np.random.default_rng([seed, zlib.crc32(category.encode()), 1])
        for i in range(n_val):
            clean, _, rec = sample("val", vrng)
            _save_png(clean, cat / "val" / "good" / f"{i:03d}.png")
            records[f"val/good/{i:03d}.png"] = rec
        head = {"source": meta.pop("source")}
        if "source_shape" in meta:   # photo categories keep the original key order
            head["source_shape"] = meta.pop("source_shape")
        head.update(seed=seed, image_size=image_size)
        head.update({k: meta.pop(k) for k in ("train_region", "test_region", "val_region") if k in meta})
        head["defects"] = list(defects)
        head["crops" if "train_region" in head else "samples"] = records
        head.update(meta)
        (cat / "SYNTHETIC.json").write_text(json.dumps(head, indent=1))
    return root
