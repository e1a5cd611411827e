"""Heatmap overlays and raw anomaly-map files."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from dadf_fast.utils.io import atomic_open


def colorize(amap: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """``[H, W]`` map -> ``[H, W, 3]`` uint8 with the 'jet' colormap."""
    from matplotlib import colormaps

    span = max(vmax - vmin, 1e-12)
    norm = np.clip((amap - vmin) / span, 0.0, 1.0)
    return (colormaps["jet"](norm)[..., :3] * 255).astype(np.uint8)


def overlay_panel(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None, vmin: float = 0.0,
                  vmax: float = 1.0, alpha: float = 0.5) -> np.ndarray:
    """Side by side: the image, the map blended over it, and the ground truth (when known).

    image ``[H, W, 3]`` uint8, amap ``[H, W]`` float, mask ``[H, W]`` {0,1} or None.
    """
    heat = colorize(amap, vmin, vmax)
    blend = (alpha * heat + (1 - alpha) * image).astype(np.uint8)
    panels = [image, blend]
    if mask is not None:
        gt = image.copy()
        edge = mask.astype(bool)
        gt[edge] = (0.5 * gt[edge] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
        panels.append(gt)
    sep = np.full((image.shape[0], 4, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [sep, p]
    return np.concatenate(out, axis=1)


def save_png(path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")


def save_tiff(path, amap: np.ndarray) -> None:
    """Raw float32 map, readable by the official MVTec evaluation scripts."""
    import io

    import tifffile

    buf = io.BytesIO()  # tifffile wants a named file; write to memory, then atomically to disk
    tifffile.imwrite(buf, amap.astype(np.float32))
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


def map_path(out_dir, category: str, defect: str, image_path: str, ext: str, stem: str | None = None) -> str:
    """``<out>/<category>/test/<defect>/<name>.<ext>`` (the MVTec evaluation layout); ``stem``
    replaces the image's file stem as ``<name>`` (e.g. one of ``_io.unique_output_stems``)."""
    if stem is None:
        stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(out_dir, category, "test", defect, f"{stem}.{ext}")
