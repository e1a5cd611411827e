"""Evaluation metrics: image/pixel AUROC (:mod:`.auroc`), AUPRO for MVTec AD (:mod:`.pro`) and
sPRO for MVTec LOCO AD (:mod:`.spro`).

Pure functions of arrays: every function accepts numpy arrays or torch tensors (any
device; they are copied to host memory) and returns a Python ``float``. Nothing here
imports the model or ``dadf_fast.nn``.

All three metrics are computed *exactly*, over every distinct threshold, with one sort
of the scores (O(n log n)) instead of a fixed grid of thresholds, so they are both
faster and more accurate than the usual threshold loops.

Conventions
-----------
* Larger score = more anomalous.
* Labels and masks must be binary: ``bool`` or numbers that are all 0 or 1. Masks
  scaled to 0/255, or soft masks after interpolation, are rejected rather than
  guessed at; binarise them with ``mask > 0`` (or a threshold of your choice) first.
* float32 scores stay float32 (sorting them is faster and converting to float64 would
  not change any comparison); every other numeric dtype becomes float64. NaN scores
  raise ``ValueError``; +-inf are allowed and simply sort first/last.
* Invalid input raises ``ValueError`` naming the offending argument. In particular
  AUROC with only one class present raises (rather than returning nan), because a
  silent nan in a results table is easy to miss.

Curve integration (AUPRO, sPRO)
-------------------------------
The curve starts at (FPR, overlap) = (0, 0) (threshold above every score) and has one
point per distinct score value, for the threshold ``score >= t``. It is integrated with
the trapezoid rule from FPR 0 to ``fpr_limit``; the last segment is cut at exactly
``fpr_limit`` by linear interpolation. The area is divided by ``fpr_limit``, so a
perfect detector scores 1. Vertical segments (thresholds that only change the
overlap) have zero width and do not affect the area.
"""
from dadf_fast.metrics.auroc import auroc, pixel_auroc
from dadf_fast.metrics.pro import aupro
from dadf_fast.metrics.spro import saturation_thresholds, spro
from dadf_fast.utils.saturation import saturation_area

__all__ = ["auroc", "pixel_auroc", "aupro", "spro", "saturation_area", "saturation_thresholds"]
