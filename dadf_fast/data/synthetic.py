"""Small MVTec-layout datasets made from real photographs that ship with scikit-image.

No download is ever needed: the sources are the images bundled inside the
scikit-image wheel (``skimage.data``), or any image file / array the caller passes.

For each category (one source photo):

* the photo is split into a TRAIN REGION (the first 60 % along its longer axis) and a
  disjoint TEST REGION (the remaining 40 %);
* every sample is a random square crop from its region (random position, scale jitter
  0.85-1.0 of the test region's short side, brightness jitter +-5 %), resized to
  ``image_size`` x ``image_size``; so test normals are unseen crops from the same
  distribution as the training crops;
* anomalous test samples get one defect drawn on the resized crop:

  - ``scratch``: a thin bright or dark random polyline,
  - ``patch``: foreign material, a hard-edged irregular polygon filled with a crop of a
    *different* photo,
  - ``spot``: a dark or coloured rotated ellipse blended over the texture.

Ground truth masks are exact: the mask is the drawn shape, every masked pixel differs
from the clean crop by at least ``MIN_CONTRAST`` grey levels (max over channels; pixels
where the rendering happened to be too close are pushed away) and no pixel outside the
mask is touched. Every defect covers at least ``MIN_AREA_FRAC`` of the image.

Layout written (as in MVTec AD)::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...   (0 / 255)
    <root>/<category>/SYNTHETIC.json                           (source, regions, crops)
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DEMO_CATEGORIES",
    "DEFECT_TYPES",
    "PATCH_SOURCES",
    "MIN_CONTRAST",
    "MIN_AREA_FRAC",
    "available_sources",
    "load_source",
    "split_regions",
    "make_sample",
    "make_defect",
    "make_dataset",
]

# Grey-level textures: stationary, so any crop is a plausible "normal" sample.
DEMO_CATEGORIES = ("brick", "grass", "gravel")
DEFECT_TYPES = ("scratch", "patch", "spot")
# Photos that foreign-material patches are cut from (the category's own source excluded).
PATCH_SOURCES = ("coffee", "astronaut", "rocket", "chelsea", "immunohistochemistry")

MIN_CONTRAST = 40          # every masked pixel changes by >= this (uint8, max over RGB)
MIN_AREA_FRAC = 0.003      # a defect covers at least 0.3 % of the image
MAX_AREA_FRAC = 0.06       # ... and at most 6 %
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
        source: a ``skimage.data`` name (e.g. ``"brick"``), a path to an image file, or
            an array (``[H, W]``, ``[H, W, 1|3|4]``; grayscale becomes RGB).
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


# ----------------------------------------------------------------------------- defects

def _shape_mask(size: int, draw_fn) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(img))
    return np.asarray(img) > 127


def _scratch_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    width = int(rng.integers(max(2, size // 128), max(3, size // 64) + 1))
    pts = [rng.uniform(0.15, 0.85, 2) * size]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(3, 7))):
        angle += rng.normal(0, 0.5)  # gently bending polyline
        step = rng.uniform(0.06, 0.16) * size
        pts.append(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    xy = [tuple(map(float, p)) for p in pts]
    return _shape_mask(size, lambda d: d.line(xy, fill=255, width=width, joint="curve"))


def _blob_polygon(size: int, rng: np.random.Generator, r_lo: float, r_hi: float, irregular: bool):
    cx, cy = rng.uniform(0.15, 0.85, 2) * size
    if irregular:
        n = int(rng.integers(7, 13))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(r_lo, r_hi) * size * rng.uniform(0.55, 1.0, n)
        return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radius)]
    a = rng.uniform(r_lo, r_hi) * size
    b = a * rng.uniform(0.45, 1.0)
    rot = rng.uniform(0, np.pi)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    return [(float(cx + xi * np.cos(rot) - yi * np.sin(rot)),
             float(cy + xi * np.sin(rot) + yi * np.cos(rot))) for xi, yi in zip(x, y)]


_SPOT_COLOURS = np.array([
    [25, 20, 18], [45, 35, 30],          # dark stains
    [170, 85, 30], [150, 40, 35],        # rust, red
    [40, 90, 160], [60, 140, 60],        # blue, green
    [230, 215, 120],                     # pale yellow
], dtype=np.float32)


def _foreign_crop(foreign: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    fh, fw = foreign.shape[:2]
    side = int(min(fh, fw) * rng.uniform(0.3, 0.7))
    top = int(rng.integers(0, fh - side + 1))
    left = int(rng.integers(0, fw - side + 1))
    crop = Image.fromarray(foreign[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
    return np.asarray(crop, dtype=np.float32)


def _enforce_contrast(clean: np.ndarray, out: np.ndarray, mask: np.ndarray, delta: int) -> np.ndarray:
    """Push masked pixels whose change is below ``delta`` away from the clean value.

    For a pixel whose channel mean is < 128 every channel goes up by ``delta``, else down;
    at least one channel is on the right side of 128 so it cannot clip, hence the max
    channel change is >= ``delta`` for every masked pixel afterwards.
    """
    c = clean.astype(np.int16)
    o = out.astype(np.int16)
    weak = mask & (np.abs(o - c).max(axis=-1) < delta)
    if weak.any():
        cw = c[weak]
        push = np.where(cw.mean(axis=-1, keepdims=True) < 128, delta, -delta)
        o[weak] = np.clip(cw + push, 0, 255)
    return o.astype(np.uint8)


def make_defect(clean: np.ndarray, defect: str, rng: np.random.Generator,
                foreign: np.ndarray | None = None):
    """Draw one defect on a clean image.

    Args:
        clean: uint8 ``[S, S, 3]``.
        defect: one of :data:`DEFECT_TYPES`.
        rng: numpy generator (all randomness comes from it).
        foreign: uint8 ``[H, W, 3]`` photo that ``patch`` cuts material from (required
            for ``patch``).
    Returns:
        ``(defective, mask)``: uint8 ``[S, S, 3]`` and bool ``[S, S]``; ``defective``
        equals ``clean`` exactly outside ``mask`` and differs by >= ``MIN_CONTRAST``
        (max over channels) at every pixel inside it.
    """
    size = clean.shape[0]
    area = size * clean.shape[1]
    lo, hi = MIN_AREA_FRAC * area, MAX_AREA_FRAC * area
    for _ in range(50):  # resample until the area is in range (shapes may leave the image)
        if defect == "scratch":
            mask = _scratch_mask(size, rng)
        elif defect == "spot":
            poly = _blob_polygon(size, rng, 0.04, 0.10, irregular=False)
            mask = _shape_mask(size, lambda d: d.polygon(poly, fill=255))
        elif defect == "patch":
            poly = _blob_polygon(size, rng, 0.06, 0.14, irregular=True)
            mask = _shape_mask(size, lambda d: d.polygon(poly, fill=255))
        else:
            raise ValueError(f"unknown defect {defect!r}; choose from {DEFECT_TYPES}")
        if lo <= mask.sum() <= hi:
            break
    else:  # pragma: no cover - practically unreachable with the ranges above
        raise RuntimeError(f"could not draw a {defect} of area in [{lo:.0f}, {hi:.0f}]")

    out = clean.astype(np.float32)
    if defect == "scratch":
        bright = rng.random() < 0.5
        level = 235.0 if bright else 25.0
        out[mask] = level + rng.normal(0, 6, (int(mask.sum()), 1))
    elif defect == "spot":
        colour = _SPOT_COLOURS[int(rng.integers(len(_SPOT_COLOURS)))]
        alpha = rng.uniform(0.65, 0.85)  # keep a little of the texture under the stain
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    else:
        if foreign is None:
            raise ValueError("a patch defect needs a foreign source image")
        out[mask] = _foreign_crop(foreign, size, rng)[mask]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out = _enforce_contrast(clean, out, mask, MIN_CONTRAST)
    return out, mask


def make_sample(source: np.ndarray, box, rng: np.random.Generator, image_size: int = 256,
                defect: str | None = None, foreign: np.ndarray | None = None, base: int | None = None):
    """One sample: a random crop of ``source`` inside ``box``, optionally with a defect.

    Args:
        source: uint8 RGB ``[H, W, 3]``.
        box: ``(top, left, bottom, right)`` region the crop must lie in.
        rng: numpy generator.
        image_size: output side ``S``.
        defect: None for a normal sample, else one of :data:`DEFECT_TYPES`.
        foreign: photo for ``patch`` defects.
        base: nominal crop side in source pixels (default: the test region's short side).
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
    defective, mask = make_defect(clean, defect, rng, foreign)
    return clean, defective, mask, crop_box


# ----------------------------------------------------------------------------- dataset

def _category_items(categories) -> list[tuple[str, object]]:
    if categories is None:
        categories = DEMO_CATEGORIES
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


def make_dataset(root, categories: Sequence | Mapping | None = None, n_train: int = 40,
                 n_test_good: int = 10, n_test_defect: int = 20, image_size: int = 256,
                 seed: int = 0, defects: Sequence[str] = DEFECT_TYPES,
                 patch_sources: Sequence | None = None) -> Path:
    """Write a small MVTec-AD-layout dataset and return ``root`` (as a Path).

    Args:
        root: output folder (created).
        categories: source names from :func:`available_sources`, image file paths
            (category = file stem), or a mapping ``{category: source}`` where a source is a
            name, a path or an array. Default :data:`DEMO_CATEGORIES`.
        n_train: normal training crops per category.
        n_test_good: normal test crops per category.
        n_test_defect: anomalous test crops per category, defect types taken in turn
            from ``defects``.
        image_size: side of the written square PNGs.
        seed: everything is a deterministic function of ``seed`` and the category name.
        defects: defect types to use (subset of :data:`DEFECT_TYPES`).
        patch_sources: photos the ``patch`` defect cuts material from (default
            :data:`PATCH_SOURCES`, without the category's own source).

    A category folder that already exists is replaced only if it was generated by this
    function (it holds ``SYNTHETIC.json``); otherwise ``FileExistsError``.
    """
    root = Path(root)
    defects = tuple(defects)
    for d in defects:
        if d not in DEFECT_TYPES:
            raise ValueError(f"unknown defect {d!r}; choose from {DEFECT_TYPES}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ValueError("n_train must be >= 1 and the test counts >= 0")
    if n_test_defect and not defects:
        raise ValueError("n_test_defect > 0 needs at least one defect type")
    pool = list(PATCH_SOURCES if patch_sources is None else patch_sources)

    for category, src_spec in _category_items(categories):
        src = load_source(src_spec)
        train_box, test_box = split_regions(src.shape)
        base = _crop_side(test_box)
        if base < 32:
            raise ValueError(f"source for {category!r} is too small ({src.shape[1]}x{src.shape[0]})")
        # a stable per-category stream (crc32, not hash(), which is salted per process)
        rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
        foreign = [s for s in pool if not (isinstance(src_spec, str) and isinstance(s, str) and s == src_spec)]
        foreign = [load_source(s) for s in foreign] or [255 - src]  # inverted self as last resort

        cat = root / category
        if cat.exists():
            if not (cat / "SYNTHETIC.json").is_file():
                raise FileExistsError(f"{cat} exists and was not made by make_dataset; not overwriting")
            shutil.rmtree(cat)
        for sub in ["train/good", "test/good"] + [f"test/{d}" for d in defects] + \
                   [f"ground_truth/{d}" for d in defects]:
            (cat / sub).mkdir(parents=True, exist_ok=True)

        crops: dict[str, list[int]] = {}
        for i in range(n_train):
            clean, _, _, box = make_sample(src, train_box, rng, image_size, base=base)
            _save_png(clean, cat / "train" / "good" / f"{i:03d}.png")
            crops[f"train/good/{i:03d}.png"] = list(box)
        for i in range(n_test_good):
            clean, _, _, box = make_sample(src, test_box, rng, image_size, base=base)
            _save_png(clean, cat / "test" / "good" / f"{i:03d}.png")
            crops[f"test/good/{i:03d}.png"] = list(box)
        counters = {d: 0 for d in defects}
        for i in range(n_test_defect):
            d = defects[i % len(defects)]
            k = counters[d]
            counters[d] += 1
            fgn = foreign[int(rng.integers(len(foreign)))]
            _, defective, mask, box = make_sample(src, test_box, rng, image_size, defect=d,
                                                  foreign=fgn, base=base)
            _save_png(defective, cat / "test" / d / f"{k:03d}.png")
            _save_png((mask * 255).astype(np.uint8), cat / "ground_truth" / d / f"{k:03d}_mask.png")
            crops[f"test/{d}/{k:03d}.png"] = list(box)
        meta = {
            "source": src_spec if isinstance(src_spec, str) else "array",
            "source_shape": list(src.shape),
            "seed": seed,
            "image_size": image_size,
            "train_region": list(train_box),
            "test_region": list(test_box),
            "defects": list(defects),
            "crops": crops,
        }
        (cat / "SYNTHETIC.json").write_text(json.dumps(meta, indent=1))
    return root
