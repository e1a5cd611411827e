"""Evaluation metrics: image/pixel AUROC, AUPRO (MVTec AD) and sPRO (MVTec LOCO AD)."""
from dadf_fast.metrics.core import aupro, auroc, pixel_auroc, saturation_area, saturation_thresholds, spro

__all__ = ["auroc", "pixel_auroc", "aupro", "spro", "saturation_area", "saturation_thresholds"]
