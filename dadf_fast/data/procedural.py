"""Procedural harness categories: textures and aligned objects drawn with numpy alone.

Every sample is a pure function of the random generator passed in (no files, no global
state), so a category is reproducible from the dataset seed. All geometry lives in
normalised coordinates (the image spans ``[-0.5, 0.5)`` on both axes), so a category looks
the same at every ``image_size``; shapes are signed distance functions, which gives
anti-aliased edges without a rasteriser.

Renderers share one signature, ``render(rng, size) -> (image, where, info)``:

* ``image``: uint8 ``[S, S, 3]``;
* ``where``: bool ``[S, S]``, the object's silhouette (defect placement prefers it), or
  None for textures;
* ``info``: JSON-able dict; for objects the pose ``{"dx", "dy", "angle", "gain"}`` (shift
  as a fraction of the side, rotation in degrees, brightness gain).

Aligned objects sit at nearly the same place in every image, as in MVTec AD's object
categories: the pose jitter is at most :data:`MAX_SHIFT` of the side, :data:`MAX_ANGLE`
degrees and :data:`MAX_GAIN` brightness; the background is redrawn for every sample.
"""
from __future__ import annotations

import numpy as np

MAX_SHIFT = 0.03     # object centre moves by at most 3 % of the side along each axis
MAX_ANGLE = 5.0      # degrees
MAX_GAIN = 0.05      # brightness +-5 %


# ----------------------------------------------------------------------------- helpers

def coords(size: int):
    """Pixel centres ``(x, y)``, each float64 ``[S, S]`` in ``[-0.5, 0.5)``; y points down."""
    t = (np.arange(size) + 0.5) / size - 0.5
    return np.meshgrid(t, t)


def random_pose(rng: np.random.Generator) -> dict:
    """A pose within the jitter limits: ``{"dx", "dy", "angle", "gain"}``."""
    dx, dy = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
    return {"dx": float(dx), "dy": float(dy), "angle": float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)),
            "gain": float(rng.uniform(1 - MAX_GAIN, 1 + MAX_GAIN))}


def object_coords(size: int, pose: dict):
    """Image pixel centres mapped into the object's frame (inverse of shift + rotation about
    the shifted centre): ``(X, Y)`` float64 ``[S, S]``."""
    x, y = coords(size)
    x, y = x - pose["dx"], y - pose["dy"]
    a = np.deg2rad(pose["angle"])
    c, s = np.cos(a), np.sin(a)
    return c * x + s * y, -s * x + c * y


def cover(sd: np.ndarray, size: int, soft: float = 0.0) -> np.ndarray:
    """Coverage in [0, 1] of the shape with signed distance ``sd`` (normalised units, < 0
    inside): a one-pixel anti-aliased ramp, widened by ``soft`` (normalised) for shadows."""
    width = 1.0 / size + soft
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def sd_circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r


def sd_box(x, y, cx, cy, hw, hh, rad=0.0):
    """Rounded box: half sizes ``hw, hh`` include the corner radius."""
    qx = np.abs(x - cx) - (hw - rad)
    qy = np.abs(y - cy) - (hh - rad)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - rad


def sd_segment(x, y, ax, ay, bx, by, r):
    """Capsule of radius ``r`` around the segment a-b."""
    px, py, vx, vy = x - ax, y - ay, bx - ax, by - ay
    h = np.clip((px * vx + py * vy) / (vx * vx + vy * vy), 0, 1)
    return np.hypot(px - h * vx, py - h * vy) - r


def sd_ellipse(x, y, cx, cy, a, b):
    # not an exact distance, but exact on the boundary and smooth: enough for 1-px anti-aliasing
    k = np.hypot((x - cx) / a, (y - cy) / b)
    return (k - 1) * min(a, b)


def union(sd_fn, x, y, params) -> np.ndarray:
    """Signed distance to the union of many shapes of one kind: ``params`` is ``[n, k]``, one
    row of ``sd_fn``'s parameters per shape."""
    out = np.full(np.shape(x), np.inf)
    for row in np.asarray(params, np.float64):   # a loop: broadcasting [n, S, S] is slower
        out = np.minimum(out, sd_fn(x, y, *row))
    return out


def value_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth random field, float64 ``[S, S]``, roughly unit standard deviation, with about
    ``cells_y`` x ``cells_x`` independent values across the image (anisotropic when they differ)."""
    grid = rng.normal(0, 1, (cells_y + 2, cells_x + 2))
    ty = (np.arange(size) + 0.5) / size * cells_y + 0.5
    tx = (np.arange(size) + 0.5) / size * cells_x + 0.5
    iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
    fy, fx = ty - iy, tx - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)   # smoothstep: no grid-line creases
    g00, g01 = grid[iy][:, ix], grid[iy][:, ix + 1]
    g10, g11 = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
    top = g00 + (g01 - g00) * fx[None, :]
    bottom = g10 + (g11 - g10) * fx[None, :]
    return (top + (bottom - top) * fy[:, None]) * 1.6   # bilinear blends shrink the std


def sample_bilinear(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """``img`` (float ``[H, W, C]``) at fractional pixel positions ``sx, sy`` (any equal
    shape ``[...]``; pixel centres at integers), edges clamped: float64 ``[..., C]``."""
    h, w = img.shape[:2]
    sx = np.clip(sx, 0, w - 1)
    sy = np.clip(sy, 0, h - 1)
    x0 = np.minimum(np.floor(sx).astype(int), w - 2) if w > 1 else np.zeros(sx.shape, int)
    y0 = np.minimum(np.floor(sy).astype(int), h - 2) if h > 1 else np.zeros(sy.shape, int)
    fx = (sx - x0)[..., None]
    fy = (sy - y0)[..., None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _finish(img: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip(np.rint(img * gain), 0, 255).astype(np.uint8)


def _paint(img: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    """Alpha-blend ``colour`` (RGB triple or ``[S, S, 3]``) over ``img`` with ``alpha`` ``[S, S]``."""
    a = alpha[..., None]
    return img * (1 - a) + np.asarray(colour, np.float64) * a


def _plain_background(rng, size, rgb, texture: float):
    """A plain surface: a colour with a faint smooth stain and sensor noise."""
    tone = 1 + texture * value_noise(rng, size, 4, 4)
    img = np.asarray(rgb, np.float64) * tone[..., None]
    return img + rng.normal(0, 2.0, (size, size, 1))


# ----------------------------------------------------------------------------- textures

def fabric(rng, size):
    """Plain-weave denim: blue warp over off-white weft, threads bending over and under."""
    x, y = coords(size)
    a = np.deg2rad(rng.uniform(-2, 2))
    x, y = np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y
    n = 14 * rng.uniform(0.98, 1.02)                  # threads across the image
    u = (x + 0.5) * n + rng.uniform(0, 2)
    v = (y + 0.5) * n + rng.uniform(0, 2)
    i, j = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - i, v - j
    warp_on_top = (i + j) % 2 == 0
    # a thread is brightest along its crown and darkens where it dives under its neighbour
    warp = np.sin(np.pi * fu) ** 0.6 * (0.7 + 0.3 * np.sin(np.pi * fv))
    weft = np.sin(np.pi * fv) ** 0.6 * (0.7 + 0.3 * np.sin(np.pi * fu))
    tone_w = 1 + rng.normal(0, 0.05, 64)[i % 64]     # yarn-to-yarn dye variation
    tone_f = 1 + rng.normal(0, 0.05, 64)[j % 64]
    fibre = rng.normal(0, 0.05, (size, size))
    warp_rgb = np.array([62, 88, 135.0])[None, None] * (tone_w * (0.35 + 0.8 * warp) + fibre)[..., None]
    weft_rgb = np.array([205, 202, 190.0])[None, None] * (tone_f * (0.35 + 0.75 * weft) + fibre)[..., None]
    img = np.where(warp_on_top[..., None], warp_rgb, weft_rgb)
    return _finish(img), None, {"threads": float(n)}


def wood(rng, size):
    """Planed wood: growth rings as wavy bands with dark late-wood edges and fine pores."""
    x, y = coords(size)
    rings = 7 * rng.uniform(0.95, 1.05)
    v = (y + 0.35 * x * x * rng.uniform(-1, 1)) * rings + 0.45 * value_noise(rng, size, 3, 2)
    v = v + rng.uniform(0, 1)
    r = v - np.floor(v)
    late = r ** 3                                    # light early wood fading into a dark edge
    pores = value_noise(rng, size, max(8, size // 3), 3)  # long, thin streaks along the grain
    t = np.clip(0.75 * late + 0.12 * pores + 0.1, 0, 1)[..., None]
    light, dark = np.array([214, 170, 118.0]), np.array([140, 92, 52.0])
    img = light * (1 - t) + dark * t + rng.normal(0, 2.0, (size, size, 1))
    return _finish(img), None, {"rings": float(rings)}


def metal(rng, size):
    """Brushed steel: fine streaks along x, a broad lighting gradient, sensor noise."""
    x, y = coords(size)
    streaks = value_noise(rng, size, max(8, size // 2), 3)
    coarse = value_noise(rng, size, max(4, size // 12), 2)
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    level = 150 * (1 + gx * x + gy * y) + 13 * streaks + 6 * coarse + rng.normal(0, 2.5, (size, size))
    img = level[..., None] * np.array([1.0, 1.01, 1.04])   # a cold, slightly blue cast
    return _finish(img), None, {}


def tile(rng, size):
    """Terrazzo floor tiles: cream tiles with dark and reddish stone chips, grey grout lines."""
    x, y = coords(size)
    n = 3.0                                             # tiles across the image
    u = (x + 0.5) * n + rng.uniform(0, 1)
    v = (y + 0.5) * n + rng.uniform(0, 1)
    fu, fv = u - np.floor(u), v - np.floor(v)
    tone = 1 + rng.normal(0, 0.03, (8, 8))[np.floor(v).astype(int) % 8, np.floor(u).astype(int) % 8]
    img = np.array([222, 214, 196.0]) * (tone + 0.03 * value_noise(rng, size, 6, 6))[..., None]
    cells = max(8, size // 6)
    dark = value_noise(rng, size, cells, cells) > 1.7        # chips: peaks of a fine random field
    red = value_noise(rng, size, cells, cells) > 1.9
    img[dark] = img[dark] * 0.45
    img[red] = img[red] * np.array([0.85, 0.6, 0.5])
    grout_sd = (np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) - 0.025) / n
    img = _paint(img, (150, 146, 140), cover(grout_sd, size))
    img = img + rng.normal(0, 2.0, (size, size, 1))
    return _finish(img), None, {}


# ----------------------------------------------------------------------------- objects

def screw(rng, size):
    """A machine screw lying horizontally: domed head on the left, threaded shank, pointed tip."""
    pose = random_pose(rng)
    X, Y = object_coords(size, pose)
    bg = _plain_background(rng, size, (192, 190, 186), 0.03)
    head = sd_box(X, Y, -0.29, 0, 0.065, 0.15, 0.035)
    h = np.where(X < 0.24, 0.058, 0.058 * np.clip((0.36 - X) / 0.12, 0, 1))
    shank = np.maximum(np.abs(Y) - h, np.maximum(-0.23 - X, X - 0.36))
    sd = np.minimum(head, shank)
    # a soft contact shadow makes the object lie on the surface instead of floating
    bg = bg * (1 - 0.3 * cover(sd - 0.01, size, soft=0.03))[..., None]
    # the cylinder's cross-section lights its centre line; threads are slanted ridges
    cyl = np.sqrt(np.clip(1 - (Y / 0.06) ** 2, 0, 1))
    phase = rng.uniform(0, 1)
    ridge = 0.5 + 0.5 * np.cos(2 * np.pi * (X * 30 + Y * 4 + phase))
    threads = np.where((X > -0.17) & (X < 0.34), 0.62 + 0.38 * ridge, 1.0)
    shank_l = (70 + 130 * cyl) * threads
    dome = np.sqrt(np.clip(1 - (Y / 0.15) ** 2, 0, 1)) * np.clip(1 - np.abs(X + 0.29) / 0.09, 0.3, 1)
    head_l = 80 + 120 * dome
    level = np.where(head < shank, head_l, shank_l) * rng.uniform(0.97, 1.03)
    obj = level[..., None] * np.array([1.0, 0.98, 0.95])
    alpha = cover(sd, size)
    img = _paint(bg, obj, alpha)
    return _finish(img, pose["gain"]), alpha > 0.5, pose


def pill(rng, size):
    """An oval tablet with a score line, a debossed mark and faint speckles, on dark slate."""
    pose = random_pose(rng)
    X, Y = object_coords(size, pose)
    bg = _plain_background(rng, size, (52, 56, 64), 0.05)
    sd = sd_ellipse(X, Y, 0, 0, 0.34, 0.22)
    bg = bg * (1 - 0.35 * cover(sd - 0.01, size, soft=0.03))[..., None]
    inside = np.clip(-sd / 0.035, 0, 1)                 # bevelled rim is darker than the face
    shade = (0.8 + 0.2 * inside) * (1 - 0.08 * (X + Y) / 0.5)
    obj = np.array([236, 229, 214.0]) * shade[..., None]
    groove = np.minimum(sd_segment(X, Y, 0, -0.17, 0, 0.17, 0.006),               # score line
                        sd_segment(X, Y, -0.22, 0.07, -0.17, -0.07, 0.007))       # a "V" mark
    groove = np.minimum(groove, sd_segment(X, Y, -0.17, -0.07, -0.12, 0.07, 0.007))
    ring = np.abs(sd_circle(X, Y, 0.16, 0, 0.05)) - 0.007
    obj = obj * (1 - 0.25 * cover(np.minimum(groove, ring), size))[..., None]
    n = int(rng.integers(6, 14))                        # natural speckles: low contrast on purpose
    specks = np.stack([rng.uniform(-0.28, 0.28, n), rng.uniform(-0.16, 0.16, n), rng.uniform(0.003, 0.006, n)], 1)
    obj = _paint(obj, (190, 150, 130), 0.3 * cover(union(sd_circle, X, Y, specks), size))
    alpha = cover(sd, size)
    img = _paint(bg, obj, alpha)
    return _finish(img, pose["gain"]), alpha > 0.5, pose


def cap(rng, size):
    """A red bottle cap seen from above: knurled rim, printed ring and star, on grey-blue."""
    pose = random_pose(rng)
    X, Y = object_coords(size, pose)
    bg = _plain_background(rng, size, (104, 114, 128), 0.05)
    r = np.hypot(X, Y)
    sd = r - 0.36
    bg = bg * (1 - 0.35 * cover(sd - 0.01, size, soft=0.03))[..., None]
    theta = np.arctan2(Y, X)
    knurl = np.where(r > 0.31, 0.72 + 0.28 * np.cos(theta * 72), 1.0)
    face = (0.82 + 0.18 * np.clip(1 - r / 0.31, 0, 1)) * knurl
    obj = np.array([178, 40, 36.0]) * face[..., None]
    highlight = np.exp(-((X + 0.1) ** 2 + (Y + 0.12) ** 2) / 0.004)
    obj = obj + 40 * highlight[..., None]
    ring = np.abs(r - 0.22) - 0.006
    frac = (theta / (2 * np.pi) * 14) % 1
    dashes = np.where(frac < 0.6, np.abs(r - 0.265) - 0.012, 1.0)   # a ring of "lettering"
    star = np.full_like(X, 1.0)
    for k in range(5):
        a = np.pi / 2 + k * 4 * np.pi / 5
        b = np.pi / 2 + (k + 1) * 4 * np.pi / 5
        star = np.minimum(star, sd_segment(X, Y, 0.1 * np.cos(a), -0.1 * np.sin(a),
                                           0.1 * np.cos(b), -0.1 * np.sin(b), 0.008))
    print_sd = np.minimum(np.minimum(ring, dashes), star)
    obj = _paint(obj, (240, 236, 228), cover(print_sd, size))
    alpha = cover(sd, size)
    img = _paint(bg, obj, alpha)
    return _finish(img, pose["gain"]), alpha > 0.5, pose


def _pcb_layout():
    """Fixed part list of the board (the same on every sample): lists of shapes as
    ``(kind, params)`` in the board frame."""
    pads, traces, vias = [], [], []
    pins = []
    for side in (-1, 1):
        for k in range(5):
            yp = -0.08 + 0.04 * k
            pins.append((side * 0.175, yp))
            ypad = -0.3 + 0.15 * k
            pads.append((side * 0.4, ypad))
            bend = (side * 0.25, yp)
            knee = (side * 0.33, ypad)
            traces += [(side * 0.19, yp, *bend), (*bend, *knee), (*knee, side * 0.4, ypad)]
            vias.append(knee)
    for sx in (-0.18, 0.0, 0.18):                       # rows of small resistors top and bottom
        for sy in (-0.36, 0.36):
            pads += [(sx - 0.035, sy), (sx + 0.035, sy)]
            traces.append((sx + 0.035, sy, sx + 0.035, sy * 0.55))
    return pins, pads, traces, vias


_PCB = _pcb_layout()


def pcb(rng, size):
    """A printed-circuit board: a chip with pins, traces under the solder mask, gold pads,
    vias, white silkscreen; the board fills the image."""
    pose = random_pose(rng)
    X, Y = object_coords(size, pose)
    weave = value_noise(rng, size, 24, 24)              # glass-fibre weave under the mask
    img = np.array([28, 96, 54.0]) * (1 + 0.04 * weave + rng.normal(0, 0.015, (size, size)))[..., None]
    pins, pads, traces, vias = _PCB
    trace_sd = union(sd_segment, X, Y, [(*t, 0.008) for t in traces])
    img = _paint(img, (70, 150, 80), cover(trace_sd, size))
    pad_sd = union(sd_box, X, Y, [(px, py, 0.022, 0.03, 0.004) for px, py in pads])
    via_sd = union(sd_circle, X, Y, [(vx, vy, 0.016) for vx, vy in vias])
    gold = np.array([212, 170, 80.0]) * (1 + 0.03 * weave)[..., None]
    img = _paint(img, gold, cover(np.minimum(pad_sd, via_sd), size))
    holes = union(sd_circle, X, Y, [(vx, vy, 0.006) for vx, vy in vias])
    img = _paint(img, (30, 30, 28), cover(holes, size))
    pin_sd = union(sd_box, X, Y, [(px, py, 0.02, 0.009, 0.0) for px, py in pins])
    img = _paint(img, (196, 196, 192), cover(pin_sd, size))
    chip = sd_box(X, Y, 0, 0, 0.16, 0.12, 0.008)
    img = _paint(img, (34, 34, 38), cover(chip, size))
    img = _paint(img, (80, 80, 86), cover(sd_circle(X, Y, -0.11, -0.07, 0.015), size))  # pin-1 dot
    silk = np.abs(sd_box(X, Y, 0, 0, 0.215, 0.15, 0.01)) - 0.003
    img = _paint(img, (235, 235, 228), cover(silk, size))
    parts = np.minimum(np.minimum(trace_sd, pad_sd), np.minimum(via_sd, np.minimum(pin_sd, chip)))
    where = cover(parts - 0.01, size) > 0.5            # components and copper, with a small margin
    return _finish(img, pose["gain"]), where, pose


# ----------------------------------------------------------------------------- photo objects

def photo_object(photo: np.ndarray, centre, side: float, silhouette):
    """An aligned-object renderer cut from a photograph.

    Args:
        photo: uint8 ``[H, W, 3]`` or ``[H, W]``.
        centre: ``(x, y)`` of the object in photo pixels.
        side: side of the square (photo pixels) that becomes the image.
        silhouette: function ``(X, Y) -> signed distance`` in the object frame (normalised
            to the image side), negative on the object.
    Returns:
        a renderer ``(rng, size) -> (image, where, pose)``.
    """
    src = np.asarray(photo, np.float64)
    if src.ndim == 2:
        src = np.repeat(src[..., None], 3, axis=-1)

    def render(rng, size):
        pose = random_pose(rng)
        X, Y = object_coords(size, pose)
        img = sample_bilinear(src, centre[0] + X * side - 0.5, centre[1] + Y * side - 0.5)
        where = cover(silhouette(X, Y), size) > 0.5
        return _finish(img, pose["gain"]), where, pose

    return render


TEXTURES = {"fabric": fabric, "wood": wood, "metal": metal, "tile": tile}
OBJECTS = {"screw": screw, "pill": pill, "cap": cap, "pcb": pcb}
