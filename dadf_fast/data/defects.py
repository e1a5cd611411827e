"""Synthetic defects with exact ground-truth masks, drawn on a clean uint8 RGB image.

Types (all sizes scale with the image side ``S``):

* :data:`DEFECT_TYPES` (the original three; their random draws are frozen so that datasets
  written before the extra types existed are reproduced byte for byte):

  - ``scratch``: a thin bright or dark random polyline;
  - ``patch``: foreign material, a hard-edged irregular polygon filled with a crop of a
    *different* photo;
  - ``spot``: a dark or coloured rotated ellipse blended over the texture;

* :data:`EXTRA_DEFECT_TYPES`:

  - ``colour``: a subtle brightness or hue shift of a soft irregular region (12 grey levels
    at its edge, up to 28 inside);
  - ``blur``: a Gaussian blur (sigma 2-4 px at S = 256) of an irregular region;
  - ``missing``: missing texture, a region replaced by its mean colour or a heavily blurred
    copy (sigma 8 % of the side), so that its structure disappears;
  - ``contamination``: 1-4 tiny dark or coloured specks close together (smaller than the
    other types: at least ``MIN_AREA_FRAC / 3`` of the image);
  - ``crack``: a structural break, a jagged hairline gap along which one side is shifted
    by 3-8 px (at S = 256), mostly along the crack, partly opening it; the shift fades out
    over a band of 3-5 % of the side and towards the crack's ends.

Ground truth: no pixel outside the mask changes, ever. Types with a per-pixel contrast
(:data:`MIN_CONTRAST_BY_TYPE`) change every masked pixel by at least that many grey levels
(max over channels); pixels the rendering left too close are pushed away. ``blur``,
``missing`` and ``crack`` change texture, which cannot be measured per pixel (a blurred
flat pixel stays flat): their mask is the affected region and the *mean* change inside it
is at least :data:`MIN_MEAN_CHANGE` grey levels. They are placed where the image has detail
(a blur of a flat area changes nothing), a drawing below the bound is redrawn, after a third
of the tries with 1.5x, then 2x the strength (sigma, shift); an image too flat even for that
(a uniform surface) raises ``ValueError`` rather than getting an invisible defect. The crack's
mask is the set of pixels that changed by >= 3 grey levels, dilated by one pixel (smaller
resampling changes are undone, so nothing outside it differs).

Placement: with a ``where`` mask (an aligned object's silhouette) defects are centred on it
most of the time (90 %, or 10x the weight of the background for the detail-seeking types),
since on objects the anomalies that matter are on the part, not the table it lies on.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dadf_fast.data.procedural import sample_bilinear

__all__ = ["DEFECT_TYPES", "EXTRA_DEFECT_TYPES", "ALL_DEFECT_TYPES", "MIN_CONTRAST", "MIN_CONTRAST_BY_TYPE",
           "MIN_MEAN_CHANGE", "MIN_AREA_FRAC", "MAX_AREA_FRAC", "make_defect", "change_map", "gaussian_blur"]

DEFECT_TYPES = ("scratch", "patch", "spot")
EXTRA_DEFECT_TYPES = ("colour", "blur", "missing", "contamination", "crack")
ALL_DEFECT_TYPES = DEFECT_TYPES + EXTRA_DEFECT_TYPES

MIN_CONTRAST = 40          # every masked pixel changes by >= this (uint8, max over RGB), old types
MIN_AREA_FRAC = 0.003      # a defect covers at least 0.3 % of the image
MAX_AREA_FRAC = 0.06       # ... and at most 6 %
# Per-pixel minimum change by type; types absent here are bounded by MIN_MEAN_CHANGE instead.
MIN_CONTRAST_BY_TYPE = {"scratch": MIN_CONTRAST, "patch": MIN_CONTRAST, "spot": MIN_CONTRAST,
                        "colour": 12, "contamination": 30}
MIN_MEAN_CHANGE = 8.0      # blur / missing / crack: mean (max-over-RGB) change inside the mask
_TRIES = 50


# ----------------------------------------------------------------------------- shapes

def _shape_mask(size: int, draw_fn) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(img))
    return np.asarray(img) > 127


def _centre(size: int, rng: np.random.Generator, where: np.ndarray | None) -> np.ndarray:
    """A defect centre ``(x, y)``; with ``where`` (bool ``[S, S]``) it lies on it 90 % of the
    time, so defects on aligned objects mostly hit the object, not the background."""
    if where is None:
        return rng.uniform(0.15, 0.85, 2) * size   # the original draw: old datasets stay identical
    ys, xs = np.nonzero(where)
    if len(ys) == 0 or rng.random() < 0.1:
        return rng.uniform(0.15, 0.85, 2) * size
    k = int(rng.integers(len(ys)))
    return np.array([xs[k], ys[k]], np.float64) + rng.uniform(0, 1, 2)


def _scratch_mask(size: int, rng: np.random.Generator, where=None) -> np.ndarray:
    width = int(rng.integers(max(2, size // 128), max(3, size // 64) + 1))
    pts = [_centre(size, rng, where)]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(3, 7))):
        angle += rng.normal(0, 0.5)  # gently bending polyline
        step = rng.uniform(0.06, 0.16) * size
        pts.append(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    xy = [tuple(map(float, p)) for p in pts]
    return _shape_mask(size, lambda d: d.line(xy, fill=255, width=width, joint="curve"))


def _blob_polygon(size: int, rng: np.random.Generator, r_lo: float, r_hi: float, irregular: bool,
                  where=None, centre=None):
    cx, cy = _centre(size, rng, where) if centre is None else centre
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


def _polygon_mask(size, poly):
    return _shape_mask(size, lambda d: d.polygon(poly, fill=255))


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


def change_map(clean: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per-pixel change, max over RGB: int ``[S, S]``."""
    return np.abs(out.astype(np.int16) - clean.astype(np.int16)).max(axis=-1)


# ----------------------------------------------------------------------------- image helpers

def _box(img: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Mean over a window of ``2 * radius + 1`` along ``axis``, edges replicated (cumulative sums)."""
    n = img.shape[axis]
    pad = [(0, 0)] * img.ndim
    pad[axis] = (radius + 1, radius)
    c = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis)
    hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / (2 * radius + 1)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur: float ``[S, S(, C)]`` -> float64 of the same shape.

    Up to sigma 5 an exact kernel with mirrored borders (the ``blur`` defect itself); wider
    blurs (smooth fills, detail maps) use three box passes of the same variance, whose cost
    does not grow with sigma.
    """
    out = np.asarray(img, np.float64)
    if sigma > 5:
        radius = max(1, int(round((np.sqrt(4 * sigma * sigma + 1) - 1) / 2)))  # 3 boxes: var = sigma^2
        for axis in (0, 1):
            for _ in range(3):
                out = _box(out, radius, axis)
        return out
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        out = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([p[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def _detail_centre(detail: np.ndarray, rng, where) -> np.ndarray:
    """A centre drawn with probability proportional to ``detail`` (float ``[S, S]``): texture
    defects go where they can be seen. ``where`` weights the preferred area 10x higher."""
    w = detail + 1e-3 * (detail.max() + 1e-6)
    if where is not None and where.any():
        w = w * np.where(where, 1.0, 0.1)
    p = (w / w.sum()).ravel()
    k = int(rng.choice(p.size, p=p))
    return np.array([k % detail.shape[1], k // detail.shape[1]], np.float64) + rng.uniform(0, 1, 2)


# ----------------------------------------------------------------------------- new types

_TINTS = np.array([[1.0, 0.55, -0.2], [-0.35, 0.1, 1.0], [-0.3, 1.0, -0.3], [1.0, 0.9, -0.45],
                   [0.9, -0.5, 0.6]])   # warm, cool, green, yellow, magenta; max |component| = 1


def _colour(clean, rng, where, lo, hi):
    size = clean.shape[0]
    for _ in range(_TRIES):
        mask = _polygon_mask(size, _blob_polygon(size, rng, 0.07, 0.15, True, where))
        if lo <= mask.sum() <= hi:
            break
    else:  # pragma: no cover - practically unreachable with the ranges above
        raise RuntimeError(f"could not draw a colour defect of area in [{lo:.0f}, {hi:.0f}]")
    # a soft ramp: 12 levels at the edge rising to the peak inside, a stain rather than a sticker
    ramp = np.clip(2 * gaussian_blur(mask.astype(np.float64), 0.02 * size) - 1, 0, 1)
    amp = 12.5 + (rng.uniform(18, 28) - 12.5) * ramp
    if rng.random() < 0.5:
        direction = np.full(3, 1.0 if rng.random() < 0.5 else -1.0)    # brightness
    else:
        direction = _TINTS[int(rng.integers(len(_TINTS)))]           # hue
    out = clean.astype(np.float64) + amp[..., None] * direction
    out[~mask] = clean[~mask]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


_ROUNDS = (1.0, 1.5, 2.0)   # strength multipliers when a texture is too flat for the nominal defect


def _region_by_detail(clean, rng, where, lo, hi, make):
    """An irregular region centred where the alteration shows: ``make(strength)`` returns
    ``(proxy, fill)``, ``proxy`` the image altered everywhere (uint8 ``[S, S, 3]``) and
    ``fill(mask)`` the altered image for a region. The first region with an area in
    ``[lo, hi]`` and a mean change >= MIN_MEAN_CHANGE wins; flat images get stronger rounds."""
    size = clean.shape[0]
    best = 0.0
    for strength in _ROUNDS:
        proxy, fill = make(strength)
        detail = gaussian_blur(change_map(clean, proxy).astype(np.float64), 0.04 * size)
        for _ in range(_TRIES // len(_ROUNDS) + 1):
            centre = _detail_centre(detail, rng, where)
            mask = _polygon_mask(size, _blob_polygon(size, rng, 0.07, 0.15, True, centre=centre))
            if not lo <= mask.sum() <= hi:
                continue
            out = clean.copy()
            out[mask] = fill(mask)[mask]
            mean = change_map(clean, out)[mask].mean()
            if mean >= MIN_MEAN_CHANGE:
                return out, mask
            best = max(best, mean)
    raise ValueError(f"the image has too little detail for this defect: best mean change {best:.1f} "
                     f"< MIN_MEAN_CHANGE={MIN_MEAN_CHANGE}")


def _u8(img) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _blur(clean, rng, where, lo, hi):
    sigma = rng.uniform(2, 4) * max(clean.shape[0] / 256, 0.5)

    def make(strength):
        blurred = _u8(gaussian_blur(clean, sigma * strength))
        return blurred, lambda mask: blurred

    return _region_by_detail(clean, rng, where, lo, hi, make)


def _missing(clean, rng, where, lo, hi):
    flat = rng.random() < 0.5

    def make(strength):
        # large-scale shading survives, texture not; or the region's own mean colour
        smooth = _u8(gaussian_blur(clean, 0.08 * strength * clean.shape[0]))
        if flat:
            return smooth, lambda mask: np.broadcast_to(_u8(clean[mask].mean(axis=0)), clean.shape)
        return smooth, lambda mask: smooth

    return _region_by_detail(clean, rng, where, lo, hi, make)


_SPECK_DARK = np.array([[22, 20, 18], [70, 45, 30], [95, 30, 25], [30, 40, 95]], np.float64)
_SPECK_LIGHT = np.array([[235, 228, 210], [225, 185, 60], [210, 70, 50], [90, 180, 230]], np.float64)


def _contamination(clean, rng, where, lo, hi):
    size = clean.shape[0]
    for _ in range(_TRIES):
        cx, cy = _centre(size, rng, where)
        specks = []
        for _ in range(int(rng.integers(1, 5))):
            ox, oy = rng.normal(0, 0.025 * size, 2)        # specks cluster within a few px
            rx = max(1.3, rng.uniform(0.008, 0.02) * size)
            ry = rx * rng.uniform(0.7, 1.0)
            specks.append((cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry))
        mask = _shape_mask(size, lambda d: [d.ellipse(b, fill=255) for b in specks])
        if lo / 3 <= mask.sum() <= hi:
            break
    else:  # pragma: no cover - practically unreachable with the ranges above
        raise RuntimeError(f"could not draw a contamination of area in [{lo / 3:.0f}, {hi:.0f}]")
    # dark dirt on bright surfaces, bright or coloured dirt on dark ones: always visible
    table = _SPECK_DARK if clean[mask].mean() > 110 else _SPECK_LIGHT
    colour = table[int(rng.integers(len(table)))]
    alpha = rng.uniform(0.85, 1.0)
    out = clean.astype(np.float64)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def _crack(clean, rng, where, lo, hi):
    size = clean.shape[0]
    k = size / 256
    src = clean.astype(np.float64)
    x, y = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    # a break shows where there is structure to break (and its gap where there is light)
    edges = change_map(clean, _u8(gaussian_blur(clean, max(1.0, 2 * k)))).astype(np.float64)
    detail = gaussian_blur(edges + 0.05 * clean.max(axis=-1), 0.04 * size)
    best = 0.0
    for attempt in range(_TRIES):
        strength = _ROUNDS[attempt * len(_ROUNDS) // _TRIES]
        cx, cy = _detail_centre(detail, rng, where)
        length = rng.uniform(0.25, 0.45) * size
        a = rng.uniform(0, np.pi)
        tx, ty = np.cos(a), np.sin(a)
        t = (x - cx) * tx + (y - cy) * ty               # along the crack
        s = -(x - cx) * ty + (y - cy) * tx              # across it
        knots = np.linspace(-length / 2, length / 2, 8)
        s = s - np.interp(t, knots, rng.normal(0, 0.008 * size, 8))   # a jagged, not ruled, line
        side = 1.0 if rng.random() < 0.5 else -1.0
        band = rng.uniform(0.03, 0.05) * size
        shift = rng.uniform(3, 8) * k * strength * (1.0 if rng.random() < 0.5 else -1.0)
        along = np.clip((length / 2 - np.abs(t)) / (0.2 * length), 0, 1)   # fades out at the ends
        across = np.clip(1 - side * s / band, 0, 1) * (side * s >= 0)
        d = shift * along * across
        phi = rng.uniform(-1.0, 1.0)                    # mostly sliding along the crack, partly opening
        ux, uy = np.cos(phi) * tx - np.sin(phi) * ty, np.cos(phi) * ty + np.sin(phi) * tx
        out = sample_bilinear(src, x - 0.5 - d * ux, y - 0.5 - d * uy)
        gap = (np.abs(s) < max(0.6, 0.7 * k)) & (along > 0.3)
        out[gap] *= rng.uniform(0.45, 0.7)              # a hairline, so the offset is what reads
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        changed = change_map(clean, out) >= 3            # sub-visible resampling noise is undone
        mask = _dilate(changed)
        out[~changed] = clean[~changed]
        if not lo <= mask.sum() <= hi:
            continue
        mean = change_map(clean, out)[mask].mean()
        if mean >= MIN_MEAN_CHANGE:
            return out, mask
        best = max(best, mean)
    raise ValueError(f"the image has too little detail for a crack: best mean change {best:.1f} "
                     f"< MIN_MEAN_CHANGE={MIN_MEAN_CHANGE}")


_EXTRA = {"colour": _colour, "blur": _blur, "missing": _missing, "contamination": _contamination,
          "crack": _crack}


# ----------------------------------------------------------------------------- entry point

def make_defect(clean: np.ndarray, defect: str, rng: np.random.Generator,
                foreign: np.ndarray | None = None, where: np.ndarray | None = None):
    """Draw one defect on a clean image.

    Args:
        clean: uint8 ``[S, S, 3]``.
        defect: one of :data:`ALL_DEFECT_TYPES`.
        rng: numpy generator (all randomness comes from it).
        foreign: uint8 ``[H, W, 3]`` photo that ``patch`` cuts material from (required
            for ``patch``).
        where: optional bool ``[S, S]``, the area defects should mostly hit (an aligned
            object's silhouette); None places them anywhere (and keeps the original draws).
    Returns:
        ``(defective, mask)``: uint8 ``[S, S, 3]`` and bool ``[S, S]``; ``defective``
        equals ``clean`` exactly outside ``mask``; inside it every pixel differs by at least
        ``MIN_CONTRAST_BY_TYPE[defect]`` (max over channels) or, for blur / missing /
        crack, the mean difference is at least :data:`MIN_MEAN_CHANGE`.
    Raises:
        ValueError: unknown ``defect``, a ``patch`` without ``foreign``, a bad ``where``, or an
            image too flat for a visible blur / missing / crack.
    """
    clean = np.asarray(clean)
    if clean.ndim != 3 or clean.shape[-1] != 3 or clean.shape[0] != clean.shape[1] or clean.dtype != np.uint8:
        raise ValueError(f"clean must be uint8 [S, S, 3], got {clean.dtype} {clean.shape}")
    if where is not None:
        where = np.asarray(where, bool)
        if where.shape != clean.shape[:2]:
            raise ValueError(f"where must be bool {clean.shape[:2]}, got shape {where.shape}")
    size = clean.shape[0]
    area = size * clean.shape[1]
    lo, hi = MIN_AREA_FRAC * area, MAX_AREA_FRAC * area
    if defect in _EXTRA:
        out, mask = _EXTRA[defect](clean, rng, where, lo, hi)
        if defect in MIN_CONTRAST_BY_TYPE:
            out = _enforce_contrast(clean, out, mask, MIN_CONTRAST_BY_TYPE[defect])
        return out, mask
    for _ in range(_TRIES):  # resample until the area is in range (shapes may leave the image)
        if defect == "scratch":
            mask = _scratch_mask(size, rng, where)
        elif defect == "spot":
            mask = _polygon_mask(size, _blob_polygon(size, rng, 0.04, 0.10, False, where))
        elif defect == "patch":
            mask = _polygon_mask(size, _blob_polygon(size, rng, 0.06, 0.14, True, where))
        else:
            raise ValueError(f"unknown defect {defect!r}; choose from {ALL_DEFECT_TYPES}")
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
