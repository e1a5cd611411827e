"""sPRO, the MVTec LOCO AD saturated per-region-overlap metric, and its saturation thresholds
from ``defects_config.json``."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dadf_fast.metrics.arrays import binary_array, check_fpr_limit, image_list, per_image_lists, to_numpy
from dadf_fast.metrics.overlap import integrated_overlap
from dadf_fast.utils.saturation import saturation_area


def spro(maps: Any, masks_per_image: Sequence[Sequence[Any]],
         saturation: Sequence[Sequence[float]] | None,
         fpr_limit: float = 0.05) -> float:
    """Normalised area under the saturated-PRO (sPRO) curve, MVTec LOCO AD definition.

    Args:
        maps: anomaly maps ``[N,H,W]`` array/tensor, or a list of N ``[H,W]`` maps.
        masks_per_image: list of N lists; image i's list holds its ground-truth masks,
            each binary ``[H,W]`` (same size as ``maps[i]``), one region per mask file
            (a mask may be disconnected; masks may overlap). An empty list = good image.
        saturation: list of N lists of floats, parallel to ``masks_per_image``: the
            absolute number of pixels at which each region's overlap saturates. Use
            :func:`saturation_thresholds` to get them from ``defects_config.json``.
            ``None`` means each region's area (no saturation: plain per-region overlap).
            Values are used as given (not capped at the region area).
        fpr_limit: upper FPR integration limit in (0, 1], default 0.05.

    Returns:
        A float in [0, 1]: integral of the mean sPRO over FPR in [0, fpr_limit], divided
        by fpr_limit. At threshold t a region's sPRO = min(1, hits / saturation), hits =
        its pixels with score >= t; the mean is over all regions of all images. FPR =
        fraction of normal pixels with score >= t, where the normal pixels are those of
        every image that lie inside none of that image's regions.

    Raises:
        ValueError: malformed or mismatched inputs, an empty mask, saturation <= 0,
            fpr_limit outside (0, 1], no region at all, or no normal pixel.
    """
    lim = check_fpr_limit(fpr_limit)
    imgs = image_list(maps)
    n = len(imgs)
    masks_per_image = per_image_lists(masks_per_image, n, "masks_per_image")
    if saturation is not None:
        saturation = per_image_lists(saturation, n, "saturation")

    normal_parts, region_parts, id_parts, sats = [], [], [], []
    for i, (m, masks) in enumerate(zip(imgs, masks_per_image)):
        if isinstance(masks, (torch.Tensor, np.ndarray)):
            masks = list(masks) if masks.ndim == 3 else [masks]
        if not isinstance(masks, Sequence):
            raise ValueError(f"masks_per_image[{i}] must be a list of [H,W] masks")
        if saturation is not None:
            sat_i = saturation[i]
            sat_i = to_numpy(sat_i, f"saturation[{i}]").reshape(-1)
            if sat_i.size != len(masks):
                raise ValueError(f"saturation[{i}] has {sat_i.size} values but image {i} "
                                 f"has {len(masks)} masks")
        inside_any = np.zeros(m.shape, dtype=bool)
        for j, mk in enumerate(masks):
            b = binary_array(mk, f"masks_per_image[{i}][{j}]")
            if b.shape != m.shape:
                raise ValueError(f"masks_per_image[{i}][{j}] has shape {tuple(b.shape)}, "
                                 f"maps[{i}] has {tuple(m.shape)}")
            area = int(b.sum())
            if area == 0:
                raise ValueError(f"masks_per_image[{i}][{j}] is empty (a region needs "
                                 f"at least one pixel)")
            s = float(area) if saturation is None else float(sat_i[j])
            if not (s > 0.0 and math.isfinite(s)):
                raise ValueError(f"saturation[{i}][{j}] must be a finite number > 0, got {s}")
            inside_any |= b
            region_parts.append(m[b])
            id_parts.append(np.full(area, len(sats), dtype=np.int64))
            sats.append(s)
        normal_parts.append(m[~inside_any])

    if not sats:
        raise ValueError("spro needs at least one ground-truth region (all images are good)")
    normal_scores = np.concatenate(normal_parts)
    if normal_scores.size == 0:
        raise ValueError("spro needs normal pixels (every pixel is inside a region)")
    # float32 and float64 maps in one list: compare everything in float64
    dtype = np.result_type(normal_scores, *region_parts)
    return integrated_overlap(normal_scores.astype(dtype, copy=False),
                               np.concatenate(region_parts).astype(dtype, copy=False),
                               np.concatenate(id_parts), np.asarray(sats, dtype=np.float64),
                               lim, saturate=True)


def saturation_thresholds(masks_per_image: Sequence[Sequence[Any]],
                          defect_names_per_image: Sequence[Any] | None,
                          defects_config: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """Absolute sPRO saturation thresholds from MVTec LOCO's ``defects_config.json``.

    Args:
        masks_per_image: as for :func:`spro`; a mask's area is its count of non-zero
            pixels, so raw LOCO mask files (0 / the defect's pixel value) work too.
        defect_names_per_image: list of N entries identifying the defect of each mask:
            either a list (one per mask) of defect names (``str``) or pixel values
            (``int``), or a single name / pixel value for all masks of that image.
            ``None``: read the pixel value from each (raw, non-binarised) mask, which
            must hold exactly one non-zero value.
        defects_config: the parsed JSON, a list of dicts with keys ``"defect_name"``,
            ``"pixel_value"``, ``"saturation_threshold"``, ``"relative_saturation"``.

    Returns:
        List of N lists of floats, parallel to ``masks_per_image``: for a relative
        defect ``int(saturation_threshold * area)``, for an absolute one
        ``min(saturation_threshold, area)`` (see :func:`saturation_area`). Areas are
        counted at the masks' resolution: pass full-size masks for the official metric.
    """
    by_key: dict[Any, Mapping[str, Any]] = {}
    for k, d in enumerate(defects_config):
        try:
            by_key[("name", str(d["defect_name"]))] = d
            by_key[("value", int(d["pixel_value"]))] = d
            float(d["saturation_threshold"]), bool(d["relative_saturation"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"defects_config[{k}] needs defect_name, pixel_value, "
                             f"saturation_threshold and relative_saturation ({e!r})") from None

    n = len(masks_per_image)
    if defect_names_per_image is not None:
        defect_names_per_image = per_image_lists(defect_names_per_image, n,
                                                  "defect_names_per_image")
    out: list[list[float]] = []
    for i, masks in enumerate(masks_per_image):
        if isinstance(masks, (torch.Tensor, np.ndarray)):
            masks = list(masks) if masks.ndim == 3 else [masks]
        ids = None
        if defect_names_per_image is not None:
            ids = defect_names_per_image[i]
            if isinstance(ids, (str, int, np.integer)):
                ids = [ids] * len(masks)
            if len(ids) != len(masks):
                raise ValueError(f"defect_names_per_image[{i}] has {len(ids)} entries but "
                                 f"image {i} has {len(masks)} masks")
        row = []
        for j, mk in enumerate(masks):
            a = to_numpy(mk, f"masks_per_image[{i}][{j}]")
            area = int(np.count_nonzero(a))
            if ids is None:
                values = np.unique(a[a != 0])
                if values.size != 1:
                    raise ValueError(f"masks_per_image[{i}][{j}]: cannot read the defect's "
                                     f"pixel value (found {values.size} non-zero values); "
                                     f"pass defect_names_per_image")
                key = ("value", int(values[0]))
            elif isinstance(ids[j], str):
                key = ("name", ids[j])
            else:
                key = ("value", int(ids[j]))
            if key not in by_key:
                what = "name" if key[0] == "name" else "pixel value"
                hint = ("; binary masks need defect_names_per_image"
                        if ids is None and key[1] == 1 else "")
                raise ValueError(f"defect {what} {key[1]!r} of masks_per_image[{i}][{j}] is "
                                 f"not in defects_config{hint}")
            d = by_key[key]
            if area == 0:
                raise ValueError(f"masks_per_image[{i}][{j}] is empty (a region needs "
                                 f"at least one pixel)")
            row.append(saturation_area(area, d["saturation_threshold"],
                                       bool(d["relative_saturation"])))
        out.append(row)
    return out
