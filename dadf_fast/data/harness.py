"""The development / validation harness: which categories and defects the accuracy
harness uses, and the offline sources behind the categories that are not plain
``skimage.data`` photos.

A category name is one of:

* a photo source (``skimage.data`` name, image path, or an extra source below): random crops
  from disjoint train / test regions (see :mod:`dadf_fast.data.synthetic`);
* ``"<photo>@<scale>"``: the same photo cropped at ``scale`` (0 < scale <= 1) times the
  default crop side, i.e. zoomed in, so one photo can appear at two scales;
* a procedural texture (``fabric``, ``wood``, ``tile``, ``metal``) or an aligned object (``screw``,
  ``pill``, ``cap``, ``pcb``, ``coin``, ``hopper``), rendered per sample
  (:mod:`dadf_fast.data.procedural`).

:data:`HARNESS_DEV` is what tuning decisions may look at; :data:`HARNESS_VALIDATION` uses
sources that appear neither in DEV, nor in the demo (brick / grass / gravel), nor among the
foreign-material patch photos, and is only for confirming a decision once it is made.
"""
from __future__ import annotations

import re

import numpy as np

from dadf_fast.data import procedural
from dadf_fast.data.defects import ALL_DEFECT_TYPES

__all__ = ["HARNESS_DEV", "HARNESS_VALIDATION", "HARNESS_DEFECTS", "EXTRA_SOURCES", "harness_defects",
           "harness_categories", "parse_scale", "renderer", "category_kind", "category_source"]

# Each line: what the category is, and why its normal test samples look like its training
# samples (photos: the train region, first 60 %, and the test region show the same content).
HARNESS_DEV = (
    "coins",              # photo: a grid of old coins on a dark cloth, repeated objects everywhere
    "coins@0.5",          # the same photo zoomed in 2x: one or two coins per image, their relief
    "hubble_deep_field",  # photo: galaxies and stars on black, sparse colourful texture
    "retina",             # photo: fundus, vessels on red and the dark border of the eye
    "fabric",             # procedural: plain-weave denim, a strictly periodic texture
    "wood",               # procedural: planed wood grain, a directional texture
    "tile",               # procedural: terrazzo tiles, random chips (contamination look-alikes)
    "screw",              # aligned object: a screw lying horizontally on grey, pose jitter only
    "pill",               # aligned object: oval tablet with score line, mark, natural speckles
    "coin",               # aligned object: one coin of coins.png (same photo as "coins"), centred
)
# Left out: moon (the old harness' smooth surface; at both scales most crops are too flat
# for a blur or missing-texture defect of mean change >= 8 grey levels to exist at all).
HARNESS_VALIDATION = (
    "text",               # photo: handwritten maths on paper (skimage), both regions hold writing
    "terrain",            # real data: hill-shaded elevation model of the Jacksboro fault (matplotlib)
    "metal",              # procedural: brushed steel, fine streaks along one direction
    "cap",                # aligned object: red bottle cap from above, knurled rim and print
    "pcb",                # aligned object: circuit board, chip, traces, pads, vias, silkscreen
    "hopper",             # aligned object: the Grace Hopper portrait (matplotlib), centred
)
HARNESS_DEFECTS = ALL_DEFECT_TYPES

_SCALED = re.compile(r"^(?P<name>.+)@(?P<scale>[0-9]*\.?[0-9]+)$")


def harness_defects(category: str) -> tuple[str, ...]:
    """Defect types the harness draws on ``category``: all of :data:`HARNESS_DEFECTS` for
    every registered category (tests draw each of them on each category)."""
    if not isinstance(category, str) or not category:
        raise ValueError(f"category must be a non-empty name, got {category!r}")
    return HARNESS_DEFECTS


def harness_categories() -> list[str]:
    """Every registered harness category: DEV first, then VALIDATION."""
    return list(HARNESS_DEV + HARNESS_VALIDATION)


def parse_scale(spec: str) -> tuple[str, float]:
    """``"moon@0.5"`` -> ``("moon", 0.5)``; a name without ``@`` -> ``(name, 1.0)``."""
    m = _SCALED.match(spec)
    if m is None:
        return spec, 1.0
    scale = float(m["scale"])
    if not 0 < scale <= 1:
        raise ValueError(f"category {spec!r}: the crop scale must be in (0, 1], got {scale}")
    return m["name"], scale


# ----------------------------------------------------------------------------- extra sources

def _terrain() -> np.ndarray:
    """Hill shading of a real elevation model (matplotlib sample data, 1/1200 degree grid),
    uint8 ``[344, 340]``: ridges and valleys lit from the north-west. Cropped a little
    narrower than tall so that the train / test cut is horizontal: both regions then hold
    the rugged west and the smoother east of the fault (a vertical cut would not)."""
    from matplotlib import cbook

    with cbook.get_sample_data("jacksboro_fault_dem.npz") as dem:
        z = dem["elevation"].astype(np.float64)
        step = float(dem["dx"]) * 111_000           # grid step in metres (degrees of latitude)
    gy, gx = np.gradient(z, step)
    slope = np.arctan(np.hypot(gx, gy))
    aspect = np.arctan2(-gx, gy)
    az, alt = np.deg2rad(315), np.deg2rad(45)
    shade = np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect)
    return np.clip(128 + 400 * (shade - 0.69), 0, 255).astype(np.uint8)[:, 32:372]


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
        return np.asarray(img.convert("RGB"))


# Named photo sources outside skimage.data, all shipped with core dependencies (offline).
EXTRA_SOURCES = {"terrain": _terrain, "grace_hopper": _grace_hopper}


# ----------------------------------------------------------------------------- photo objects

def _coin():
    import skimage.data

    # coin no. 17 of coins.png (third row, the facing head), found once by Otsu threshold +
    # labelling: centre (212.5, 193.3), radius 23 px; the view is 2.8 radii wide
    r = 23.0
    side = 2.8 * r
    return procedural.photo_object(skimage.data.coins(), (212.5, 193.3), side,
                                   lambda X, Y: np.hypot(X, Y) - (r + 1) / side)


def _hopper():
    # head and shoulders, the view centred on the face. The silhouette is the head ellipse plus
    # the uniform below the collar (the background is a flag and blue sky), kept inside the
    # frame under any jitter so that its centre follows the pose
    side = 500.0

    def silhouette(X, Y):
        head = procedural.sd_ellipse(X, Y, 0.0, -0.15, 0.24, 0.29)
        body = procedural.sd_box(X, Y, 0.0, 0.29, 0.38, 0.11)
        return np.minimum(head, body)

    return procedural.photo_object(_grace_hopper(), (262.0, 280.0), side, silhouette)


_PHOTO_OBJECTS = {"coin": _coin, "hopper": _hopper}
_RENDERERS: dict = {}


def renderer(name: str):
    """The per-sample renderer ``(rng, size) -> (image, where, info)`` of a procedural or
    aligned-object category, or None when ``name`` is not one (then it is a photo)."""
    if name in procedural.TEXTURES:
        return procedural.TEXTURES[name]
    if name in procedural.OBJECTS:
        return procedural.OBJECTS[name]
    if name in _PHOTO_OBJECTS:
        if name not in _RENDERERS:
            _RENDERERS[name] = _PHOTO_OBJECTS[name]()
        return _RENDERERS[name]
    return None


_PHOTO_OBJECT_SOURCES = {"coin": "coins", "hopper": "grace_hopper"}


def category_source(name: str) -> str:
    """What a category is made from: the photo's name (``"coins"`` for ``coins@0.5`` and for
    the ``coin`` object) or ``"procedural:<name>"``; two categories with the same source share
    pixels, so DEV and VALIDATION must not."""
    if name in procedural.TEXTURES or name in procedural.OBJECTS:
        return f"procedural:{name}"
    return _PHOTO_OBJECT_SOURCES.get(name, parse_scale(name)[0])


def category_kind(name: str) -> str:
    """``"texture"``, ``"object"`` or ``"photo"`` (anything else, incl. ``name@scale``)."""
    if name in procedural.TEXTURES:
        return "texture"
    if name in procedural.OBJECTS or name in _PHOTO_OBJECTS:
        return "object"
    return "photo"
