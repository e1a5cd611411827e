"""The exportable inference graph of a :class:`~dadf_fast.models.DADF`.

:class:`InferenceGraph` wraps a float32, ``backend="torch"`` copy of a model and computes what
``DADF.predict`` returns, from the same model-ready images, as one traceable function:

backbone -> dual-attention transformer -> flows (hard permutation as a gather, no log-det)
-> cue maps -> Gaussian smoothing -> cue calibration and weights -> score -> verdicts.

The model's own stage methods run (``features``, ``reconstruct``, ``latents``, and
:func:`dadf_fast.models.cues.cue_maps` for the unsmoothed cue maps).  Two steps are computed
here instead, each giving predict's numbers:

* the kNN cue's nearest-memory search (:func:`nearest_distances_graph`): the model's
  ``nearest_distances`` splits the queries into blocks whose size depends on the batch (a
  data-dependent ``torch.split`` the ONNX optimiser cannot fold) and calls ``cdist``; here
  the memory is cut into blocks of static size, the nearest row chosen by the matmul form
  ``|m - mu|^2 - 2 (q - mu).(m - mu)`` (the same centring as the model's cdist, without
  the ``|q - mu|^2`` term that does not change the argmin), and the distance to that row
  recomputed directly as ``|q - m|``, as the model does.  A query with two memory rows at a
  distance equal to float rounding may pick the other one; its distance is then the same to
  rounding.
* the smoothing of the cue maps (:func:`smooth_channels`): all cue maps stacked as channels
  of one ``[B, n_cues, S, S]`` tensor and blurred by one grouped convolution pair, which is
  bit-identical to :func:`dadf_fast.models.postprocess.gaussian_smooth` map by map.  The
  per-map form, exported, is computed wrongly by OpenVINO 2026.4's CPU plugin at batch
  sizes below 7 when two blurred maps are added (a fusion of the reflect-padded
  convolutions into the sum; measured: errors of 0.2 to 18 in the map), while the stacked
  form runs right at every batch size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dadf_fast.models import cues, thresholds

# distance-matrix block per image (4M floats): the graph's kNN temporaries grow with the
# batch, not with the memory's length
KNN_BLOCK_ELEMENTS = 1 << 22


def nearest_distances_graph(queries: torch.Tensor, memory: torch.Tensor, block_rows: int) -> torch.Tensor:
    """Euclidean distance of each row of ``queries [Q, D]`` to its nearest row of ``memory
    [M, D]`` (see the module docstring), with the memory cut into blocks of ``block_rows``."""
    mu = memory.mean(0, keepdim=True)
    qc = queries - mu
    best = best_idx = None
    for start in range(0, memory.shape[0], block_rows):
        mc = memory[start:start + block_rows] - mu
        d, i = ((mc * mc).sum(1)[None] - 2.0 * (qc @ mc.t())).min(dim=1)
        i = i + start
        if best is None:
            best, best_idx = d, i
        else:
            better = d < best  # strict: a tie keeps the earlier row, as the model's blocks do
            best = torch.where(better, d, best)
            best_idx = torch.where(better, i, best_idx)
    return torch.linalg.vector_norm(queries - memory[best_idx], dim=1)


def smooth_channels(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`~dadf_fast.models.postprocess.gaussian_smooth` of every channel of ``maps [B, C,
    H, W]`` at once (a grouped convolution: the same kernel, padding and sums per channel)."""
    if not sigma:
        return maps
    c = maps.shape[1]
    radius = min(int(4 * sigma + 0.5), maps.shape[-1] - 1, maps.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                   groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


class InferenceGraph(nn.Module):
    """``forward(images [B, 3, S, S]) -> (anomaly_map, score[, pred_score, pred_label, pred_mask])``,
    the outputs of ``model.predict`` in :attr:`output_names` order (the verdicts only for a
    calibrated model).  ``model`` must already be a float32 ``backend="torch"`` copy in eval
    mode (:func:`dadf_fast.deploy.export.exportable_copy`): it is used, not copied."""

    def __init__(self, model, calibration: dict | None):
        super().__init__()
        self.model = model
        self.calibration = None if calibration is None else dict(calibration)
        self.output_names = ("anomaly_map", "score") + (thresholds.VERDICT_KEYS if calibration else ())
        size = model.input_size
        self.knn_block_rows = max(1, KNN_BLOCK_ELEMENTS // ((size // 8) * (size // 8)))

    def knn_map(self, feats) -> torch.Tensor:
        """The kNN cue's unsmoothed map ``[B, 1, S, S]`` (:func:`dadf_fast.models.cues.knn_map`'s)."""
        emb = cues.patch_embedding(feats)
        h, w = emb.shape[-2:]
        dist = nearest_distances_graph(cues.flatten_patches(emb), self.model.cue_memory, self.knn_block_rows)
        return cues.upsample(dist.view(-1, 1, h, w), self.model.input_size)

    def forward(self, images):
        m = self.model
        feats = m.features(images)
        local, glob = m.reconstruct(feats)
        zs = m.latents(feats, local, glob)
        names = m.config["score_cues"]
        knn = self.knn_map(feats) if "knn" in names else None
        raw = cues.cue_maps(m, zs, feats, local, glob, 0.0, knn_maps=knn)  # sigma 0: unsmoothed
        maps = smooth_channels(torch.cat([raw[c] for c in names], dim=1), m.config["smooth_sigma"])
        if names == ["flow"]:
            amap = maps
        else:  # DADF.score's combination of the calibrated cues
            w = m.config["cue_weights"]
            amap = sum(w[i] * (maps[:, i:i + 1] - m.cue_mean[i]) / m.cue_spread[i] for i in range(len(names)))
        score = amap.flatten(1).amax(1)
        if self.calibration is None:
            return amap, score
        v = thresholds.verdicts(amap, score, self.calibration)
        return (amap, score, *(v[k] for k in thresholds.VERDICT_KEYS))


__all__ = ["InferenceGraph", "nearest_distances_graph", "smooth_channels", "KNN_BLOCK_ELEMENTS"]
