"""anomalib's FastFlow as a baseline for the accuracy harness (issue #17's definition).

The model is anomalib 2.7's own torch model,
:class:`anomalib.models.image.fastflow.torch_model.FastflowModel`, unchanged: 8 flow steps of
anomalib's ``AllInOneBlock`` (affine clamping 2, hard permutation) with subnets alternating
3x3 / 1x1 (``conv3x3_only=False``), hidden ratio 1.0, one LayerNorm ``[C, S/r, S/r]`` per
scale (elementwise affine, trained with the flows), anomaly map = minus the mean over scales
of ``exp(-0.5 * mean_c z^2)`` bilinearly upsampled to the input (values in [-1, 0]); image
score = max of the map (anomalib's ``pred_score``).

Its features are timm's ``efficientnet_lite0`` (``features_only``, ``out_indices=[1, 2, 3]``:
strides 4 / 8 / 16, channels 24 / 40 / 112) with the same offline ImageNet weights DADF uses
(:func:`dadf_fast.models.backbone.lite0_state_dict`).  ``FastflowModel`` only accepts four
backbone names, so it is built as ``"resnet18"`` while ``timm.create_model`` is redirected to
``efficientnet_lite0``; everything else (feature_info channels and reductions, the norms'
shapes, the flows) is what anomalib builds from that extractor.  Inputs are ImageNet-normalised
``[B, 3, S, S]`` tensors, as DADF's datasets give and as anomalib's default pre-processor
produces.

Training is anomalib's: ``FastflowLoss`` (per scale, the batch mean of
``0.5 * sum z^2 - log|det J|``, summed over scales), Adam(lr 1e-3, weight decay 1e-5) over the
model's parameters, no gradient clipping, batch 8 with a reshuffle every epoch (the last
batch may be short), no augmentation, 75 epochs by default.  anomalib freezes the extractor
(``requires_grad=False``) and keeps it in eval mode inside ``forward``, so its features of a
training image never change: :meth:`FastFlowBaseline.fit` computes them once and trains the
norms and flows on the cache (``cache_features=False`` runs anomalib's full forward every step;
the test checks both give the same losses and maps).

    from fastflow_baseline import FastFlowBaseline      # benchmarks/ on sys.path
    model = FastFlowBaseline(input_size=256, seed=0)
    model.fit(train_dataset)                              # MVTecAD(..., "train") or [N, 3, S, S]
    out = model.predict(images)                           # {"anomaly_map": [B,1,S,S], "score": [B]}
"""
from __future__ import annotations

import contextlib
import math
import numbers
import time

import torch
import torch.nn as nn
from anomalib.models.image.fastflow.loss import FastflowLoss
from anomalib.models.image.fastflow.torch_model import FastflowModel

from dadf_fast.models.backbone import lite0_state_dict
from dadf_fast.models.inputs import (
    check_finite_output,
    check_input_size,
    check_predict_batch,
    model_input,
    stack_train_images,
)
from dadf_fast.models.postprocess import gaussian_smooth
from dadf_fast.utils.checks import check_number

BACKBONE = "efficientnet_lite0"
OUT_INDICES = [1, 2, 3]   # anomalib's choice for its CNN backbones; lite0: strides 4/8/16
STRIDES = [4, 8, 16]
CHANNELS = [24, 40, 112]


@contextlib.contextmanager
def _timm_builds(name: str):
    """Inside the block, ``timm.create_model`` builds ``name`` whatever name it is given, always
    without a hub download; anomalib looks the function up on the module at call time."""
    import timm

    real = timm.create_model

    def create(_requested, *args, **kwargs):
        kwargs["pretrained"] = False
        return real(name, *args, **kwargs)

    timm.create_model = create
    try:
        yield
    finally:
        timm.create_model = real


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def build_fastflow(input_size: int, flow_steps: int = 8, hidden_ratio: float = 1.0, conv3x3_only: bool = False,
                   pretrained: bool = True) -> nn.Module:
    """anomalib's ``FastflowModel`` on efficientnet_lite0 features (ImageNet weights from the
    offline package unless ``pretrained=False``: random extractor weights, for tests)."""
    with _timm_builds(BACKBONE):
        model = FastflowModel((input_size, input_size), "resnet18", pre_trained=False, flow_steps=flow_steps,
                              conv3x3_only=conv3x3_only, hidden_ratio=hidden_ratio)
    fe = model.feature_extractor
    if fe.feature_info.reduction() != STRIDES or fe.feature_info.channels() != CHANNELS:
        # a timm release that numbers lite0's stages differently would silently change the baseline
        raise RuntimeError(f"timm's {BACKBONE} out_indices {OUT_INDICES} give strides "
                           f"{fe.feature_info.reduction()} and channels {fe.feature_info.channels()}, "
                           f"not {STRIDES} and {CHANNELS}")
    if pretrained:
        weights = lite0_state_dict()
        fe.load_state_dict({k: weights[k] for k in fe.state_dict()})
    return model


class FastFlowBaseline(nn.Module):
    """anomalib's FastFlow on DADF's lite backbone, with DADF's detector interface.

    Args:
        input_size: square input side ``S`` (a multiple of 16, >= 32).
        flow_steps: coupling blocks per scale (anomalib default 8).
        hidden_ratio: subnet hidden channels / input channels (anomalib default 1.0).
        conv3x3_only: all subnets 3x3 instead of alternating 3x3 / 1x1.
        seed: seeds the flows' initialisation (torch's generator, forked for the build: the
            global random state is left as it was) and the training data order.
        pretrained: ImageNet extractor weights (``False``: random weights, for tests).

    ``self.model`` is the anomalib ``FastflowModel``; ``predict`` returns
    ``{"anomaly_map": [B, 1, S, S], "score": [B]}`` (larger = more anomalous), so
    :func:`dadf_fast.engine.evaluation.evaluate` takes it as it takes DADF.
    """

    def __init__(self, input_size: int = 256, flow_steps: int = 8, hidden_ratio: float = 1.0,
                 conv3x3_only: bool = False, seed: int = 0, pretrained: bool = True):
        super().__init__()
        input_size = check_input_size(input_size)
        flow_steps = _positive_int("flow_steps", flow_steps)
        hidden_ratio = check_number("FastFlowBaseline", "hidden_ratio", hidden_ratio, nonnegative=True)
        narrowest = min(-(-c // 2) for c in CHANNELS)  # a subnet sees the first ceil(C / 2) channels
        if int(hidden_ratio * narrowest) < 1:
            # anomalib's subnet has int(in_channels * hidden_ratio) hidden channels
            raise ValueError(f"hidden_ratio must give every subnet a hidden channel (>= 1/{narrowest}), "
                             f"got {hidden_ratio!r}")
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.config = dict(input_size=input_size, flow_steps=flow_steps, hidden_ratio=hidden_ratio,
                           conv3x3_only=bool(conv3x3_only), seed=int(seed), pretrained=bool(pretrained))
        # the flows' permutations come from torch's global generator: seed it for the build only
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.model = build_fastflow(input_size, flow_steps, hidden_ratio, bool(conv3x3_only), pretrained)
        self.eval()  # a detector: eval mode except inside fit

    @property
    def input_size(self) -> int:
        return self.config["input_size"]

    # ------------------------------------------------------------------ pieces of anomalib's forward
    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen extractor's maps ``[B, 24, S/4, S/4]``, ``[B, 40, S/8, S/8]``,
        ``[B, 112, S/16, S/16]`` (before the trainable norms), in eval mode as anomalib runs it."""
        fe = self.model.feature_extractor
        fe.eval()
        return list(fe(model_input(images, fe)))

    def flow(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Norms and flows of ``FastflowModel.forward`` on extractor ``features``: the hidden
        variables ``z`` (shaped as the features) and log-Jacobians ``[B]`` per scale."""
        normed = [norm(f) for norm, f in zip(self.model.norms, features, strict=True)]
        out = [block(f) for block, f in zip(self.model.fast_flow_blocks, normed, strict=True)]
        return [z for z, _ in out], [j for _, j in out]

    # ------------------------------------------------------------------ training
    def fit(self, train_data, epochs: int = 75, batch_size: int = 8, lr: float = 1e-3, weight_decay: float = 1e-5,
            progress: bool = False, log=print, cache_features: bool = True, **ignored) -> dict:
        """Train the norms and flows on normal images, as anomalib's Lightning module does.

        Args:
            train_data: a dataset whose items are dicts with an ImageNet-normalised ``image``
                ``[3, S, S]`` (as :class:`dadf_fast.data.MVTecAD` gives), or a tensor ``[N, 3, S, S]``.
            epochs, batch_size: passes over the data and images per Adam step (the order is
                reshuffled every epoch from ``seed``; ``ceil(N / batch_size)`` steps an epoch).
            lr, weight_decay: anomalib's Adam settings.
            cache_features: compute the frozen extractor's features once (same maths, faster).
            ignored: other detectors' training arguments (``out_dir``, ``recipe``, ...).

        Returns ``{"loss": [mean loss per epoch], "steps": int, "seconds": float}``.
        """
        epochs = _positive_int("epochs", epochs)
        batch_size = _positive_int("batch_size", batch_size)
        lr = check_number("FastFlowBaseline.fit", "lr", lr, nonnegative=True)
        weight_decay = check_number("FastFlowBaseline.fit", "weight_decay", weight_decay, nonnegative=True)
        log = log or (lambda *a: None)
        images = stack_train_images(train_data, self.input_size, "train_data")
        device = next(self.model.feature_extractor.parameters()).device
        t0 = time.perf_counter()
        cache = None
        if cache_features:
            feats = [self.features(c.to(device)) for c in torch.split(images, batch_size)]
            cache = [torch.cat(level) for level in zip(*feats)]
        criterion = FastflowLoss()
        # anomalib hands Adam all parameters; the frozen ones never get a gradient
        optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        order = torch.Generator().manual_seed(self.config["seed"])
        n = images.shape[0]
        history, steps = [], 0
        epoch_iter = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            epoch_iter = tqdm(epoch_iter, desc="fastflow", leave=False, dynamic_ncols=True)
        self.train()
        try:
            for _ in epoch_iter:
                total = 0.0
                for idx in torch.randperm(n, generator=order).split(batch_size):
                    if cache is not None:
                        hidden, jacobians = self.flow([f[idx.to(f.device)] for f in cache])
                    else:
                        hidden, jacobians = self.model(model_input(images[idx].to(device), self.model))
                    loss = criterion(hidden, jacobians)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * idx.numel()
                    steps += 1
                history.append(total / n)
                if not math.isfinite(history[-1]):
                    raise FloatingPointError(f"FastFlow training diverged (loss {history[-1]}) in epoch "
                                             f"{len(history)}; lower lr")
        finally:
            self.eval()
        seconds = time.perf_counter() - t0
        log(f"fastflow: {epochs} epochs, {steps} steps on {n} images, final loss {history[-1]:.4g} "
            f"({seconds:.1f} s)")
        return {"loss": history, "steps": steps, "seconds": seconds}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images, smooth_sigma: float | None = None, batch_size: int | None = None) -> dict:
        """Anomaly maps and scores of ImageNet-normalised ``images [B, 3, S, S]``.

        ``smooth_sigma=None``: anomalib's raw map and ``pred_score`` (its max); a number:
        the map Gaussian-smoothed with that sigma (:func:`dadf_fast.models.postprocess.gaussian_smooth`)
        and the max of the result.  Returns ``{"anomaly_map": [B, 1, S, S], "score": [B]}``;
        raises rather than return NaN or Inf.
        """
        check_predict_batch(images, self.input_size, batch_size)
        if smooth_sigma is not None:
            smooth_sigma = check_number("FastFlowBaseline.predict", "smooth_sigma", smooth_sigma, nonnegative=True)
        was_training = self.training
        self.eval()
        try:
            outs, start = [], 0
            for chunk in ([images] if batch_size is None else torch.split(images, batch_size)):
                pred = self.model(model_input(chunk, self.model))
                amap, score = pred.anomaly_map, pred.pred_score.reshape(-1)
                if smooth_sigma is not None:
                    amap = gaussian_smooth(amap, smooth_sigma)
                    score = amap.flatten(1).amax(1)
                outs.append({"anomaly_map": amap, "score": score})
                check_finite_output(outs[-1], "FastFlowBaseline", offset=start)
                start += chunk.shape[0]
        finally:
            self.train(was_training)
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


__all__ = ["FastFlowBaseline", "build_fastflow"]
