"""Tests for dadf_fast.metrics against independent brute-force implementations.

The brute-force references below loop over every distinct threshold, compute FPR and
the per-region overlaps explicitly, label regions with their own flood fill (not
scipy), and integrate by walking the curve's segments. They share no code with
dadf_fast.metrics.
"""
from collections import deque

import numpy as np
import pytest
import torch

from dadf_fast.metrics import aupro, auroc, pixel_auroc, saturation_area, saturation_thresholds, spro

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ----------------------------------------------------------------------------------------
# brute-force references
# ----------------------------------------------------------------------------------------
def flood_regions(mask, diagonal=True):
    """List of boolean masks, one per connected component (flood fill)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if not diagonal:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    regions = []
    for y0 in range(h):
        for x0 in range(w):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            reg = np.zeros_like(mask, dtype=bool)
            queue = deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                reg[y, x] = True
                for dy, dx in steps:
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        queue.append((yy, xx))
            regions.append(reg)
    return regions


def walk_area(points, limit):
    """Area under a polyline [(fpr, y), ...] (fpr non-decreasing) from 0 to limit."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_at) / 2
            break
    return area


def bf_overlap_area(maps, normal_masks, regions, limit):
    """regions: list of (image index, bool mask, saturation or None)."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    normals = np.concatenate([m[nm] for m, nm in zip(maps, normal_masks)])
    values = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    points = [(0.0, 0.0)]
    for t in values:
        fpr = np.count_nonzero(normals >= t) / normals.size
        per_region = []
        for i, reg, sat in regions:
            hits = np.count_nonzero(maps[i][reg] >= t)
            if sat is None:
                per_region.append(hits / np.count_nonzero(reg))
            else:
                per_region.append(min(1.0, hits / sat))
        points.append((fpr, float(np.mean(per_region))))
    return walk_area(points, limit) / limit


def bf_aupro(maps, masks, limit, diagonal=True):
    regions = []
    for i, mk in enumerate(masks):
        regions += [(i, r, None) for r in flood_regions(mk, diagonal)]
    return bf_overlap_area(maps, [~mk for mk in masks], regions, limit)


def bf_spro(maps, masks_per_image, sats, limit):
    regions, normal_masks = [], []
    for i, masks in enumerate(masks_per_image):
        inside = np.zeros(maps[i].shape, dtype=bool)
        for j, mk in enumerate(masks):
            inside |= mk
            regions.append((i, mk, sats[i][j]))
        normal_masks.append(~inside)
    return bf_overlap_area(maps, normal_masks, regions, limit)


# ----------------------------------------------------------------------------------------
# random data
# ----------------------------------------------------------------------------------------
def random_masks(rng, n=4, size=24):
    """Masks with several regions per image, incl. diagonal-only contacts; image 0 good."""
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(1, n):
        for _ in range(rng.integers(2, 5)):
            y, x = rng.integers(0, size - 5, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, y:y + h, x:x + w] = True
        # a diagonal staircase (one 8-connected region, several 4-connected ones)
        y, x = rng.integers(0, size - 4, 2)
        for d in range(3):
            masks[i, y + d, x + d] = True
        # isolated single pixel
        masks[i, rng.integers(0, size), rng.integers(0, size)] = True
    return masks


def random_maps(rng, masks, quantize=None):
    maps = rng.random(masks.shape) + 0.6 * masks  # anomalies score higher on average
    if quantize:
        maps = np.round(maps * quantize) / quantize  # many ties, incl. normal/anomalous
    return maps


def blob(rng, size, k=None):
    m = np.zeros((size, size), dtype=bool)
    for _ in range(k or rng.integers(1, 3)):  # 1-2 rectangles: possibly disconnected
        y, x = rng.integers(0, size - 4, 2)
        h, w = rng.integers(1, 6, 2)
        m[y:y + h, x:x + w] = True
    return m


# ----------------------------------------------------------------------------------------
# AUROC
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(ties):
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(2, 300))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        s = rng.integers(0, 5, n).astype(float) if ties else rng.normal(size=n) + y
        assert auroc(s, y) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)


def test_auroc_dtypes_and_tensors():
    rng = np.random.default_rng(2)
    s = rng.normal(size=(7, 9)).astype(np.float32)
    y = rng.random((7, 9)) < 0.3
    ref = sklearn_metrics.roc_auc_score(y.ravel(), s.ravel())
    assert auroc(s, y) == pytest.approx(ref, abs=1e-12)
    assert auroc(torch.from_numpy(s), torch.from_numpy(y)) == pytest.approx(ref, abs=1e-12)
    assert auroc(s.astype(np.float64), y.astype(np.int64)) == pytest.approx(ref, abs=1e-12)
    assert auroc(torch.from_numpy(s).bfloat16(), y.astype(np.float32)) == pytest.approx(
        sklearn_metrics.roc_auc_score(y.ravel(),
                                      torch.from_numpy(s).bfloat16().float().numpy().ravel()),
        abs=1e-12)
    # extremes
    assert auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([1.0, 1.0, 1.0], [0, 1, 1]) == 0.5


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(3)
    masks = random_masks(rng)
    maps = random_maps(rng, masks, quantize=20).astype(np.float32)
    ref = sklearn_metrics.roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(ref, abs=1e-12)
    assert pixel_auroc(torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None]) \
        == pytest.approx(ref, abs=1e-12)


def test_auroc_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="labels.*binary"):
        auroc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="same shape"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="scores contains NaN"):
        auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="masks.*binary"):
        pixel_auroc(np.zeros((1, 2, 2)), np.full((1, 2, 2), 255))


# ----------------------------------------------------------------------------------------
# AUPRO
# ----------------------------------------------------------------------------------------
def test_aupro_hand_example():
    # normals 0.7, 0.3, 0.1; one region of two pixels 0.9, 0.5.
    # curve (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1)
    maps = np.array([[0.9, 0.5, 0.7, 0.3, 0.1]])
    masks = np.array([[1, 1, 0, 0, 0]])
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(5 / 6, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.5) == pytest.approx(2 / 3, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.2) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("quantize", [None, 20])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(quantize, limit):
    rng = np.random.default_rng(10 + (quantize or 0))
    masks = random_masks(rng)
    maps = random_maps(rng, masks, quantize)
    ref = bf_aupro(maps, masks, limit)
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(ref, abs=1e-10)


def test_aupro_limit_on_a_curve_point_and_float32():
    # a limit that is exactly one of the curve's FPR values, and a [N,1,H,W] float32 input
    rng = np.random.default_rng(11)
    masks = random_masks(rng)
    maps = random_maps(rng, masks, quantize=10).astype(np.float32)
    n_normal = np.count_nonzero(~masks)
    normals = np.sort(maps[~masks])[::-1]
    t = normals[n_normal // 4]
    limit = np.count_nonzero(normals >= t) / n_normal
    ref = bf_aupro(maps, masks, limit)
    got = aupro(torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None], limit)
    assert got == pytest.approx(ref, abs=1e-10)


def test_aupro_uses_8_connectivity():
    # (0,0) and (1,1) touch only diagonally; (1,1)-(1,2) touch by an edge.
    # 8-connected: one region of 3 pixels; 4-connected: {(0,0)} and {(1,1),(1,2)}.
    rng = np.random.default_rng(12)
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    maps = rng.random((1, 6, 6)) * 0.5 + 0.2
    maps[0, 0, 0] = 0.95  # only this region pixel is above every normal pixel
    maps[0, 1, 1] = maps[0, 1, 2] = 0.1
    got = aupro(maps, masks, 0.3)
    assert got == pytest.approx(bf_aupro(maps, masks, 0.3, diagonal=True), abs=1e-12)
    assert got != pytest.approx(bf_aupro(maps, masks, 0.3, diagonal=False), abs=1e-3)
    assert len(flood_regions(masks[0])) == 1


def test_aupro_never_exceeds_one():
    # perfect maps with many regions of awkward sizes (1/size sums are not exact floats)
    masks = np.zeros((3, 40, 40), dtype=bool)
    for i in range(3):
        for k, size in enumerate([1, 3, 7, 11, 13, 17, 19, 23]):
            masks[i, 4 * k + i % 2, 1:1 + size] = True
    for maps in (masks.astype(np.float64), masks * 0.7 + 0.1):
        for limit in (0.3, 1.0, 1e-6):
            v = aupro(maps, masks, limit)
            assert v <= 1.0
            assert v == pytest.approx(1.0, abs=1e-12)
    # the worst map scores 0
    assert aupro(1.0 - masks, masks, 0.3) == 0.0


def test_aupro_errors():
    maps = np.random.default_rng(0).random((2, 8, 8))
    masks = np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="anomalous region"):
        aupro(maps, masks)
    masks[0, 2, 2] = True
    with pytest.raises(ValueError, match="same shape"):
        aupro(maps[:, :7], masks)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=1.5)
    with pytest.raises(ValueError, match="masks.*binary"):
        aupro(maps, masks * 0.5)
    with pytest.raises(ValueError, match=r"maps must have shape \[N,H,W\]"):
        aupro(maps[None, None], masks[None, None])
    with pytest.raises(ValueError, match="normal pixels"):
        aupro(maps, np.ones((2, 8, 8)))


# ----------------------------------------------------------------------------------------
# sPRO
# ----------------------------------------------------------------------------------------
DEFECTS_CONFIG = [
    {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 40,
     "relative_saturation": False},
    {"defect_name": "wrong_colour", "pixel_value": 254, "saturation_threshold": 0.5,
     "relative_saturation": True},
    {"defect_name": "extra_part", "pixel_value": 253, "saturation_threshold": 3,
     "relative_saturation": False},
]


def random_loco(rng, n=4, size=24):
    """Maps and per-image mask lists (overlapping, disconnected masks), with defect names."""
    masks_per_image, names = [], []
    for i in range(n):
        k = 0 if i == 0 else int(rng.integers(1, 4))
        masks_per_image.append([blob(rng, size) for _ in range(k)])
        names.append([DEFECTS_CONFIG[int(rng.integers(0, 3))]["defect_name"]
                      for _ in range(k)])
    union = np.stack([np.any(ms, axis=0) if ms else np.zeros((size, size), bool)
                      for ms in masks_per_image])
    maps = rng.random((n, size, size)) + 0.5 * union
    return maps, masks_per_image, names


def test_spro_hand_example():
    maps = np.array([[0.9, 0.5, 0.7, 0.3, 0.1]])
    region = np.array([[1, 1, 0, 0, 0]], dtype=bool)
    # saturation 1: the region is saturated at the first threshold
    assert spro(maps, [[region]], [[1.0]], fpr_limit=0.5) == pytest.approx(1.0)
    # saturation = area: plain PRO, as in test_aupro_hand_example
    assert spro(maps, [[region]], [[2.0]], fpr_limit=0.5) == pytest.approx(2 / 3)
    assert spro(maps, [[region]], None, fpr_limit=0.5) == pytest.approx(2 / 3)
    # saturation above the area: at most 2/4 overlap
    assert spro(maps, [[region]], [[4.0]], fpr_limit=1.0) == pytest.approx(5 / 12)


@pytest.mark.parametrize("seed", [20, 21, 22])
@pytest.mark.parametrize("limit", [0.05, 0.3])
def test_spro_matches_brute_force(seed, limit):
    rng = np.random.default_rng(seed)
    maps, masks_per_image, names = random_loco(rng)
    if seed == 22:
        maps = np.round(maps * 10) / 10  # ties
    sats = saturation_thresholds(masks_per_image, names, DEFECTS_CONFIG)
    ref = bf_spro(maps, masks_per_image, sats, limit)
    assert spro(maps, masks_per_image, sats, fpr_limit=limit) == pytest.approx(ref, abs=1e-10)
    # list-of-tensors input, float32
    maps32 = [torch.from_numpy(m.astype(np.float32)) for m in maps]
    ref32 = bf_spro([m.numpy() for m in maps32], masks_per_image, sats, limit)
    assert spro(maps32, masks_per_image, sats, limit) == pytest.approx(ref32, abs=1e-10)


def test_spro_without_saturation_equals_aupro():
    # non-overlapping, connected masks, one per region: sPRO(no saturation) == AUPRO
    rng = np.random.default_rng(23)
    masks = random_masks(rng)
    maps = random_maps(rng, masks)
    masks_per_image = [flood_regions(m) for m in masks]
    for limit in (0.05, 0.3):
        assert spro(maps, masks_per_image, None, limit) == pytest.approx(
            aupro(maps, masks, limit), abs=1e-12)


def test_saturation_thresholds():
    a = np.zeros((10, 10), dtype=np.uint8)
    a[:5, :6] = 255            # missing_part, area 30 < 40 -> capped to 30
    b = np.zeros((10, 10), dtype=np.uint8)
    b[:2, :3] = 254            # wrong_colour, area 6, relative 0.5 -> 3
    c = np.zeros((10, 10), dtype=np.uint8)
    c[5:, 5:] = 253            # extra_part, area 25, absolute 3 -> 3
    masks = [[a, b], [], [c]]
    expect = [[30.0, 3.0], [], [3.0]]
    assert saturation_thresholds(masks, [["missing_part", "wrong_colour"], [], ["extra_part"]],
                                 DEFECTS_CONFIG) == expect
    assert saturation_thresholds(masks, [[255, 254], [], 253], DEFECTS_CONFIG) == expect
    assert saturation_thresholds(masks, None, DEFECTS_CONFIG) == expect   # from pixel values
    bin_masks = [[a > 0, b > 0], [], [torch.from_numpy(c > 0)]]
    assert saturation_thresholds(bin_masks, [["missing_part", "wrong_colour"], [], "extra_part"],
                                 DEFECTS_CONFIG) == expect  # binary masks; one name broadcast
    with pytest.raises(ValueError, match="not in defects_config"):
        saturation_thresholds([[a]], [["nope"]], DEFECTS_CONFIG)
    with pytest.raises(ValueError, match="pixel value 1 .*defect_names_per_image"):
        saturation_thresholds([[a > 0]], None, DEFECTS_CONFIG)
    with pytest.raises(ValueError, match="cannot read the defect's pixel value"):
        saturation_thresholds([[a.astype(int) + (b > 0)]], None, DEFECTS_CONFIG)
    with pytest.raises(ValueError, match="defect_names_per_image"):
        saturation_thresholds([[a]], [["missing_part"], []], DEFECTS_CONFIG)


def test_spro_errors():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 8, 8))
    m = np.zeros((8, 8), dtype=bool)
    m[1:3, 1:3] = True
    with pytest.raises(ValueError, match="at least one ground-truth region"):
        spro(maps, [[], []], [[], []])
    with pytest.raises(ValueError, match="masks_per_image must be a list"):
        spro(maps, [[m]], [[1.0]])
    with pytest.raises(ValueError, match=r"saturation\[1\] has 0 values"):
        spro(maps, [[], [m]], [[], []])
    with pytest.raises(ValueError, match=r"masks_per_image\[1\]\[0\] has shape"):
        spro(maps, [[], [m[:7]]], [[], [1.0]])
    with pytest.raises(ValueError, match=r"masks_per_image\[1\]\[0\] is empty"):
        spro(maps, [[], [np.zeros((8, 8), bool)]], [[], [1.0]])
    with pytest.raises(ValueError, match=r"masks_per_image\[1\]\[0\] must be binary"):
        spro(maps, [[], [m * 255]], [[], [1.0]])
    with pytest.raises(ValueError, match=r"saturation\[1\]\[0\] must be a finite number"):
        spro(maps, [[], [m]], [[], [0.0]])
    with pytest.raises(ValueError, match="fpr_limit"):
        spro(maps, [[], [m]], [[], [1.0]], fpr_limit=-0.1)


def test_relative_saturation_is_truncated_to_whole_pixels():
    # the official rule: int(t * area) for relative thresholds, min(t, area) for absolute
    cfg = [{"defect_name": "rel", "pixel_value": 1, "saturation_threshold": 0.5,
            "relative_saturation": True},
           {"defect_name": "abs", "pixel_value": 2, "saturation_threshold": 40,
            "relative_saturation": False},
           {"defect_name": "tiny", "pixel_value": 3, "saturation_threshold": 0.29,
            "relative_saturation": True}]
    seven = np.zeros((10, 10), bool)
    seven[0, :7] = True
    four = np.zeros((10, 10), bool)
    four[5:7, 5:7] = True
    hundred = np.ones((10, 10), bool)
    got = saturation_thresholds([[seven, four, hundred, four]], [["rel", "abs", "tiny", "tiny"]], cfg)
    # 0.29 * 100 is 28.999999999999996 in floats: truncated to 28, as the official code does;
    # 0.29 * 4 truncates to 0, which becomes 1 pixel (officially a division by zero)
    assert got == [[3.0, 4.0, 28.0, 1.0]]
    assert saturation_area(7, 0.5, True) == 3.0 and saturation_area(4, 40, False) == 4.0
    assert saturation_area(400, 40, False) == 40.0
    with pytest.raises(ValueError, match="area must be a pixel count >= 1"):
        saturation_area(0, 0.5, True)
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        saturation_area(5, float("nan"), False)
    with pytest.raises(ValueError, match=r"masks_per_image\[0\]\[0\] is empty"):
        saturation_thresholds([[np.zeros((3, 3), bool)]], [["rel"]], cfg)


def test_pixel_metrics_on_lists_of_maps_of_different_sizes():
    rng = np.random.default_rng(31)
    shapes = [(9, 13), (14, 7), (11, 11)]
    masks = [np.zeros(s, bool) for s in shapes]
    for m in masks[1:]:
        m[2:5, 1:4] = True
        m[-2, -3:] = True       # a second region
    maps = [rng.random(s) + 0.5 * m for s, m in zip(shapes, masks)]
    flat_m = np.concatenate([m.ravel() for m in maps])
    flat_g = np.concatenate([g.ravel() for g in masks])
    assert pixel_auroc(maps, masks) == pytest.approx(
        sklearn_metrics.roc_auc_score(flat_g, flat_m), abs=1e-12)
    for limit in (0.05, 0.3):
        assert aupro(maps, masks, limit) == pytest.approx(bf_aupro(maps, masks, limit), abs=1e-12)
    # float32 maps and torch tensors work the same way
    maps32 = [torch.from_numpy(m.astype(np.float32)) for m in maps]
    assert aupro(maps32, masks, 0.3) == pytest.approx(
        bf_aupro([m.numpy() for m in maps32], masks, 0.3), abs=1e-12)
    with pytest.raises(ValueError, match=r"masks\[1\] has shape \(9, 13\), maps\[1\] has \(14, 7\)"):
        aupro(maps, [masks[0], masks[0], masks[2]])
    with pytest.raises(ValueError, match="one \\[H,W\\] mask per map \\(3\\), got 2"):
        pixel_auroc(maps, masks[:2])
