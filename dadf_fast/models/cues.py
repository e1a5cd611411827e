"""DADF's score cues beside the flows' likelihood, and their calibration on normal images.

A cue is a per-pixel map ``[B, 1, S, S]``, larger = more anomalous:

* ``flow``: the flows' likelihood map (:func:`dadf_fast.ops.multiscale_score`);
* ``recon``: the dual-attention reconstruction error, ``mean_c (F - R_l)^2 + mean_c (F - R_g)^2``
  per scale, upsampled and averaged over the three scales;
* ``knn``: the distance of each patch embedding (:func:`patch_embedding`) to its nearest
  neighbour among the training images' patches (PatchCore's cue).

The cues live on different scales, so they are combined after a calibration on normal
images: each smoothed map minus its mean pixel value on those images, divided by the
spread of their maxima above that mean (``mean_i max m_i - mean``).  A normal image then
peaks near 1 in every cue, whatever the cue's units, and the combined map is their sum.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from dadf_fast import ops
from dadf_fast.models.inputs import model_input
from dadf_fast.models.postprocess import gaussian_smooth
from dadf_fast.reference.nearest_distances import nearest_distances
from dadf_fast.utils.checks import check_number
from dadf_fast.utils.precision import autocast_off

CUES = ("flow", "recon", "knn")


def check_cues(cues) -> tuple:
    """``cues`` as a tuple in :data:`CUES` order; raise unless a non-empty subset of :data:`CUES`."""
    if isinstance(cues, str) or not hasattr(cues, "__iter__"):
        raise ValueError(f"score_cues must be a non-empty subset of {CUES}, got {cues!r}")
    items = list(cues)
    if not items or any(c not in CUES for c in items) or len(set(items)) != len(items):
        raise ValueError(f"score_cues must be a non-empty subset of {CUES}, got {cues!r}")
    return tuple(c for c in CUES if c in items)


def check_weights(weights, cues) -> tuple:
    """``weights`` (None: 1 per cue) as a tuple of floats, one finite number > 0 per cue."""
    if weights is None:
        return (1.0,) * len(cues)
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__") or len(list(weights)) != len(cues):
        raise ValueError(f"cue_weights must be {len(cues)} numbers > 0 (one per cue of {cues}), got {weights!r}")
    return tuple(check_number("DADF", "cue_weights", w, positive=True) for w in weights)


def upsample(m: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)


def recon_error_map(feats, local, glob, size: int) -> torch.Tensor:
    """Mean over scales of the upsampled reconstruction errors ``[B, 1, S, S]`` (float32)."""
    maps = []
    for f, rl, rg in zip(feats, local, glob):
        f, rl, rg = f.float(), rl.float(), rg.float()
        err = ((f - rl) ** 2).mean(1, keepdim=True) + ((f - rg) ** 2).mean(1, keepdim=True)
        maps.append(upsample(err, size))
    return torch.stack(maps).mean(0)


def patch_embedding(feats) -> torch.Tensor:
    """Patch embeddings ``[B, C_8 + C_16, S/8, S/8]``: the stride-8 and stride-16 maps, each
    3x3 average-pooled, the stride-16 one upsampled to the stride-8 grid (PatchCore's local
    neighbourhood aggregation; the same embedding as :class:`~dadf_fast.models.knn.KNNDetector`)."""
    f8 = F.avg_pool2d(feats[1].float(), 3, stride=1, padding=1)
    f16 = F.avg_pool2d(feats[2].float(), 3, stride=1, padding=1)
    f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat((f8, f16), dim=1)


def flatten_patches(emb: torch.Tensor) -> torch.Tensor:
    """``[B, D, h, w]`` -> ``[B * h * w, D]`` (row-major over images, then positions)."""
    return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])


def knn_map(emb: torch.Tensor, memory: torch.Tensor, size: int, backend: str = "torch") -> torch.Tensor:
    """Nearest-memory distance of every patch of ``emb [B, D, h, w]``, upsampled: ``[B, 1, S, S]``
    (the search: :func:`dadf_fast.ops.nearest_distances` on ``backend``)."""
    b, _, h, w = emb.shape
    dist = ops.nearest_distances(flatten_patches(emb), memory, backend=backend).view(b, 1, h, w)
    return upsample(dist, size)


def knn_leave_one_out(emb: torch.Tensor, size: int) -> torch.Tensor:
    """kNN maps ``[N, 1, S, S]`` of the memory's own images, each against the other images'
    patches only (against a memory that holds its own patches every distance would be 0).
    Always the reference search: each image has its own memory, which the ``cpp`` search
    would index anew (once per image, more than the search saves)."""
    n, _, h, w = emb.shape
    if n < 2:
        raise ValueError("the kNN cue's calibration needs at least 2 normal images (each is scored against the others)")
    flat = flatten_patches(emb).view(n, h * w, -1)
    maps = []
    for i in range(n):
        others = torch.cat((flat[:i], flat[i + 1:])).flatten(0, 1)
        maps.append(nearest_distances(flat[i], others).view(1, 1, h, w))
    return upsample(torch.cat(maps), size)


def calibration(maps: torch.Tensor) -> tuple[float, float]:
    """``(mean, spread)`` of a cue's smoothed maps ``[N, 1, S, S]`` on normal images: the mean
    pixel value, and the mean per-image maximum above it (floored so it never divides by 0)."""
    m = maps.double()
    mean = m.mean()
    spread = (m.flatten(1).amax(1).mean() - mean).clamp_min(1e-12)
    return float(mean), float(spread)


def cue_maps(model, zs, feats, local, glob, sigma, knn_maps=None) -> dict:
    """The smoothed, uncalibrated maps ``[B, 1, S, S]`` of ``model``'s ``score_cues`` from its
    latents ``zs``, features and reconstructions (``knn_maps`` replaces the kNN cue's map: the
    leave-one-out maps of the calibration)."""
    out = {}
    size = model.input_size
    for cue in model.config["score_cues"]:
        if cue == "flow":
            m = ops.multiscale_score(zs, size, backend=ops.module_backend("multiscale_score", model.backend))[0]
        elif cue == "recon":
            m = recon_error_map(feats, local, glob, size)
        elif knn_maps is not None:
            m = knn_maps
        else:
            if model.cue_memory.shape[0] == 0:
                raise RuntimeError("DADF's kNN cue has an empty memory: fit() (or calibrate()) the model first")
            # the search is the reference under backend="torch", else the fastest that runs
            # (the cpp search is CPU-only; a cpp/triton model on CUDA searches with the reference)
            m = knn_map(patch_embedding(feats), model.cue_memory, size,
                        backend="torch" if model.backend == "torch" else "auto")
        out[cue] = gaussian_smooth(m.float(), sigma) if sigma else m.float()
    return out


@torch.no_grad()
def calibrate(model, images: torch.Tensor, batch_size: int = 16, held_out: torch.Tensor | None = None) -> dict:
    """Fill ``model``'s kNN memory with the patches of the normal ``images`` (model-ready
    ``[N, 3, S, S]``) and set each cue's ``(mean, spread)`` (:func:`calibration`) from its maps
    on them; the kNN cue scores each image against the other images' patches.  Returns
    ``{cue: (mean, spread)}`` (empty for the flow cue alone).

    ``held_out [M, 3, S, S]``: normal images the flows did not train on (``fit``'s hold-out for
    the decision thresholds).  The kNN cue needs no training, so their patches join the memory
    (rows after ``images``'s, in order) and the kNN cue's leave-one-out calibration: a model
    trained on 32 of 40 images searches all 40, like a kNN detector given the 40.  The other
    cues are calibrated on ``images`` only.  Score them with :func:`predict_leaving_self_out`."""
    if model.config["score_cues"] == ["flow"]:
        return {}
    was_training = model.training
    model.eval()
    try:
        parts = []
        with model.autocast(images.device.type):
            for chunk in torch.split(images, batch_size):
                feats = model.features(chunk)
                local, glob = model.reconstruct(feats)
                parts.append((feats, local, glob, model.latents(feats, local, glob)))
            extra = [] if held_out is None or "knn" not in model.config["score_cues"] else \
                [patch_embedding(model.features(c)) for c in torch.split(held_out, batch_size)]
        knn = None
        if "knn" in model.config["score_cues"]:
            emb = torch.cat([patch_embedding(p[0]) for p in parts] + extra)
            model.cue_memory = flatten_patches(emb).contiguous()
            knn = knn_leave_one_out(emb, model.input_size)
        maps, start, sigma = {}, 0, model.config["smooth_sigma"]
        with autocast_off(images.device):
            for feats, local, glob, zs in parts:
                n = feats[0].shape[0]
                got = cue_maps(model, zs, feats, local, glob, sigma,
                               knn_maps=None if knn is None else knn[start:start + n])
                for cue, m in got.items():
                    maps.setdefault(cue, []).append(m)
                start += n
            if knn is not None and start < knn.shape[0]:  # the held-out images' leave-one-out maps
                tail = knn[start:].float()
                maps["knn"].append(gaussian_smooth(tail, sigma) if sigma else tail)
        stats = {cue: calibration(torch.cat(m)) for cue, m in maps.items()}
        for i, (mean, spread) in enumerate(stats.values()):
            model.cue_mean[i], model.cue_spread[i] = mean, spread
    finally:
        model.train(was_training)
    return stats


@torch.no_grad()
def predict_leaving_self_out(model, images: torch.Tensor, sources, n_held: int, batch_size: int = 8):
    """``(score [B], anomaly_map [B, 1, S, S])`` (float32, CPU) of ``model.predict`` on
    ``images [B, 3, S, S]``, the kNN cue of each image searching the memory without the
    patches of held-out image ``sources[b]``: the memory's last ``n_held`` images are the
    held-out ones (:func:`calibrate`'s ``held_out``), and ``images[b]`` is, or is a defective
    copy of, held-out image ``sources[b]``.  Each is then scored as a test image is: against
    every normal image but itself (a copy found in the memory would score 0 where it is
    intact)."""
    sources = torch.as_tensor(sources).flatten()
    if "knn" not in model.config["score_cues"] or n_held == 0:
        out = model.predict(images, batch_size=batch_size)
        return out["score"].float().cpu(), out["anomaly_map"].float().cpu()
    full = model.cue_memory
    with model.autocast(images.device.type):
        per_image = patch_embedding(model.features(model_input(images[:1], model.backbone))).shape[-2:].numel()
    first = full.shape[0] - n_held * per_image
    if first < per_image or sources.numel() != images.shape[0] or not bool(((sources >= 0) & (sources < n_held)).all()):
        raise ValueError(f"sources must give, for each of the {images.shape[0]} images, which of the memory's last "
                         f"{n_held} images it comes from (the memory holds {full.shape[0] // per_image})")
    scores = torch.empty(images.shape[0])
    maps = torch.empty(images.shape[0], 1, *images.shape[-2:])
    try:
        for src in sources.unique().tolist():
            rows = slice(first + src * per_image, first + (src + 1) * per_image)
            model.cue_memory = torch.cat((full[:rows.start], full[rows.stop:]))
            idx = (sources == src).nonzero().flatten()
            out = model.predict(images[idx.to(images.device)], batch_size=batch_size)
            scores[idx], maps[idx] = out["score"].float().cpu(), out["anomaly_map"].float().cpu()
    finally:
        model.cue_memory = full
    return scores, maps


def fit_calibration(model, normal: torch.Tensor, val, held_out: bool, seed: int, log) -> None:
    """``fit``'s last step: calibrate the cues on the ``normal`` training images, then the
    thresholds on ``val = (images, labels, masks)`` (None: no thresholds).  ``held_out``: ``val``
    is fit's own hold-out of normal images; they join the kNN memory (the kNN cue needs no
    training) and each is scored without its own patches for the thresholds."""
    model.calibrate_cues(normal, held_out=val[0].to(normal.device) if held_out else None)
    if val is not None:
        images, labels, masks = val
        predict = functools.partial(predict_leaving_self_out, model, n_held=images.shape[0]) if held_out else None
        model.calibrate(images.to(normal.device, normal.dtype), labels, masks, seed=seed, log=log, predict=predict)


__all__ = ["CUES", "cue_maps", "calibrate", "check_cues", "check_weights", "nearest_distances", "recon_error_map", "patch_embedding", "flatten_patches", "knn_map",
           "knn_leave_one_out", "calibration", "predict_leaving_self_out", "fit_calibration"]
