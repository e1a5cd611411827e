"""Two-stage training of DADF (stage 1: reconstruction transformer; stage 2: flows).

The backbone is frozen, so its features of the (few) training images are computed once and
cached; stage 2 also caches the flow inputs ``cat(F, R_l, R_g)`` once the transformer is
frozen.  A training step then costs only the trainable part (the frozen backbone is most
of a forward pass).  Caching is exact: the frozen parts are
deterministic in eval mode.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import time
import uuid

import torch

from dadf_fast.models.inputs import stack_train_images
from dadf_fast.models.thresholds import CALIBRATION_FRACTION

RECIPES = ("paper", "lite")
LITE_FLOW_ITERS = 375  # 75 epochs of 40 images at batch 8, anomalib FastFlow's budget (docs/accuracy.md)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


@dataclasses.dataclass
class FitConfig:
    """Training hyper-parameters.  ``recipe="paper"`` is the official DADF recipe
    (AdamW 1e-4 betas (0.9, 0.95) batch 8 for stage 1; Adam 1e-3 wd 1e-5 batch 16 for
    stage 2).  ``recipe="lite"`` is the small-data recipe (see docs/accuracy.md)."""

    recipe: str = "paper"
    epochs_recon: int = 200
    epochs_flow: int = 15
    # stage-2 optimiser steps; when set it replaces epochs_flow (epochs = ceil(iters / batches
    # per epoch)), so the flow schedule does not depend on how many normal images there are
    iters_flow: int | None = None
    batch_size_recon: int = 8
    batch_size_flow: int = 16
    lr_recon: float = 1e-4
    lr_flow: float = 1e-3
    weight_decay_flow: float = 1e-5
    grad_clip: float | None = None
    train_flow_norm: bool = True  # False freezes the flows' [C,H,W] LayerNorm affine (docs/accuracy_history.md)
    # fraction of the normal images held out in stage 2; the flow weights of the epoch with
    # the lowest held-out NLL are kept (0 disables early stopping)
    val_fraction: float = 0.0
    # train both stages on the images and their mirror images too (the lite recipe: robustness to
    # normal content the training images show in another orientation, docs/accuracy.md); the
    # calibration of the score cues and the thresholds see the images as given. epochs_recon
    # counts passes over the given images: stage 1 takes as many steps with the flips as without
    hflip: bool = False
    vflip: bool = False
    seed: int = 0
    # fraction of the normal images held out of training to set the decision thresholds on
    # (with synthetic defects; dadf_fast.models.thresholds); 0, or validation images given to
    # fit, holds nothing out
    calibration_fraction: float = CALIBRATION_FRACTION

    def __post_init__(self):
        def bad(name, want):
            raise ValueError(f"FitConfig.{name} must be {want}, got {getattr(self, name)!r}")

        for name in ("epochs_recon", "epochs_flow"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "an int >= 0")
        if self.iters_flow is not None and (not isinstance(self.iters_flow, int) or self.iters_flow < 0):
            bad("iters_flow", "None or an int >= 0")
        for name in ("batch_size_recon", "batch_size_flow"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an int >= 1")
        for name in ("lr_recon", "lr_flow"):
            if not getattr(self, name) > 0:
                bad(name, "> 0")
        if not self.weight_decay_flow >= 0:
            bad("weight_decay_flow", ">= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad("grad_clip", "None or > 0")
        if not 0 <= self.val_fraction < 1:
            bad("val_fraction", "in [0, 1)")
        if not 0 <= self.calibration_fraction < 1:
            bad("calibration_fraction", "in [0, 1)")

    @classmethod
    def for_recipe(cls, recipe: str = "paper", **overrides) -> "FitConfig":
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        base = {}
        if recipe == "lite":
            # few images, few CPU minutes: a short reconstruction stage, then the flows with
            # anomalib FastFlow's optimiser and budget (Adam 1e-3, weight decay 1e-5, batch 8,
            # a fixed number of steps whatever the number of images), gradient-norm clipping
            # (docs/accuracy.md)
            base = dict(epochs_recon=4, iters_flow=LITE_FLOW_ITERS, batch_size_flow=8, lr_flow=1e-3, grad_clip=1.0,
                        hflip=True, vflip=True)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "epochs_flow" in overrides and "iters_flow" not in overrides:
            base.pop("iters_flow", None)  # an explicit epoch count wins over the recipe's steps
        base.update(overrides)
        return cls(recipe=recipe, **base)


def _variants(images: torch.Tensor, cfg: FitConfig) -> torch.Tensor:
    out = [images]
    if cfg.hflip:
        out.append(images.flip(-1))
    if cfg.vflip:
        out += [t.flip(-2) for t in list(out)]
    return torch.cat(out)


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch: int, device) -> list:
    """Apply ``fn`` (returning a list of tensors) to ``x`` in chunks; concatenate per output."""
    outs = [fn(chunk.to(device)) for chunk in torch.split(x, batch)]
    return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]


def _progress(iterable, desc: str, enabled: bool, total=None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _check_finite(loss: torch.Tensor, stage: int, epoch: int, checkpoint: str | None) -> None:
    if not torch.isfinite(loss):
        kept = f"; the last good checkpoint is {checkpoint!r}" if checkpoint and os.path.exists(checkpoint) else ""
        raise TrainingDiverged(
            f"stage {stage} loss became {loss.item()} at epoch {epoch + 1}; training stopped (try a lower learning "
            f"rate or gradient clipping){kept}"
        )


def _train_epochs(params, loss_fn, n: int, batch: int, epochs: int, opt, cfg: FitConfig, stage: int,
                  progress: bool, gen: torch.Generator, log, checkpoint, val_fn=None, module=None, ranks=(0, 1)):
    """Run ``epochs`` epochs of ``loss_fn(batch indices)``; with ``val_fn``, keep the state of
    ``module`` at the epoch with the lowest validation loss.  On ``ranks = (rank, size)`` with
    ``size > 1``, ``loss_fn`` is the DDP module and each rank runs its part of every global
    batch (:func:`dadf_fast.models.parallel.global_batch_loss`)."""
    from dadf_fast.models.parallel import global_batch_loss

    history, best = [], (float("inf"), None, -1)
    bar = _progress(range(epochs), f"stage {stage}", progress)
    for epoch in bar:
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for idx in torch.split(order, batch):
            loss, value = global_batch_loss(loss_fn, idx, *ranks)
            _check_finite(value, stage, epoch, checkpoint)  # the global loss: every rank stops together
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            total += value.item() * len(idx)
            count += len(idx)
        history.append(total / count)
        if val_fn is not None:
            with torch.no_grad():
                val = float(val_fn())
            if val < best[0]:
                best = (val, copy.deepcopy(module.state_dict()), epoch)
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{history[-1]:.4g}")
    log(f"stage {stage}: {epochs} epochs, final loss {history[-1] if history else float('nan'):.5g}")
    if best[1] is not None:
        module.load_state_dict(best[1])
        log(f"stage {stage}: kept epoch {best[2] + 1} (lowest held-out loss {best[0]:.5g})")
    return history


def fit(model, train_data, config: FitConfig | None = None, out_dir: str | None = None, resume: bool = False,
        device=None, progress: bool = True, log=print, overwrite: bool = False, val_images=None, val_labels=None,
        val_masks=None, distributed: bool | None = None, **overrides) -> dict:
    """Train ``model`` (a :class:`dadf_fast.DADF`) on normal images.

    Args:
        train_data: tensor ``[N, 3, S, S]`` or a dataset whose items have an ``image``.
        config: a :class:`FitConfig` (default: ``FitConfig.for_recipe(**overrides)``).
        out_dir: where ``stage1.pt`` and ``model.pt`` are written (atomically) at the end of
            each stage.  It is checked before any training (see
            :func:`dadf_fast.utils.io.prepare_output_dir`) and locked while training runs; a folder
            that already holds files is refused unless ``overwrite`` (the previous run's
            ``stage1.pt``/``model.pt`` are removed first, so they can never be mistaken for
            this run's) or ``resume``.
        resume: continue from the last completed stage found in ``out_dir``; only a
            checkpoint of this run is taken (same training config, model config and training
            images, recorded in the checkpoint), anything else raises ``ValueError``.
        val_images, val_labels, val_masks: validation images ``[M, 3, S, S]`` (model-ready),
            their labels ``[M]`` (0 normal / 1 anomalous; None: all normal) and masks
            ``[M, S, S]`` for the decision thresholds (``model.calibrate``).  Without them,
            ``config.calibration_fraction`` of the normal images is held out of training for
            it (none when that leaves too few; the model then has no thresholds).
        distributed: data-parallel training over the processes of a ``torchrun`` launch
            (:mod:`dadf_fast.models.parallel`: DDP, sharded feature caches, the same global
            batches as one process; rank 0 alone checks and writes ``out_dir`` and logs).
            ``None`` (default): when ``torch.distributed`` is initialised with 2+ processes;
            ``False``: this process trains alone. Every rank must pass the same images.
    Returns:
        ``{"loss_recon": [per-epoch], "loss_flow": [per-epoch], "seconds": {...},
        "resumed_from": path or None, "run_id": str, "calibration": dict or None}``.
    """
    if config is None:
        config = FitConfig.for_recipe(overrides.pop("recipe", "paper"), **overrides)
    elif overrides:
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if resume and not out_dir:
        raise ValueError("resume=True needs out_dir (where the checkpoints of the interrupted run are)")
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other: continue the run in out_dir, "
                         "or start a new one over it")
    from dadf_fast.models.parallel import check_same_data
    from dadf_fast.utils.distributed import all_ranks, resolve

    ranks = resolve(distributed)

    def read():  # checked once, here, before an output folder is touched (on every rank: a rank that
        # cannot read its images stops them all)
        images = stack_train_images(train_data, model.input_size, "train_data")
        if "knn" in getattr(model, "config", {}).get("score_cues", ()) and images.shape[0] < 2:
            raise ValueError(f"train_data holds {images.shape[0]} image; the model's kNN score cue (score_cues) needs "
                             "at least 2 normal images (each is calibrated against the others): pass more images, or "
                             "build the model with score_cues=('flow', 'recon')")
        val = None
        if val_images is not None:
            val = (stack_train_images(val_images, model.input_size, "val_images"), val_labels, val_masks)
        return images, val

    images, val = all_ranks(read, "reading the training images") if ranks[1] > 1 else read()
    if ranks[1] > 1:
        check_same_data(_data_digest(images), images.shape[0], ranks[1])
        if ranks[0] != 0:
            progress, log = False, None
    if not out_dir:
        return _fit(model, images, config, None, False, False, device, progress, log, val, ranks)
    from dadf_fast.utils.io import prepare_output_dir

    with contextlib.ExitStack() as stack:
        def prepare():  # one rank checks, locks and writes out_dir; the others wait for its verdict
            if ranks[0] == 0:
                stack.enter_context(prepare_output_dir(out_dir, overwrite=overwrite, resume=resume, what="out_dir"))

        all_ranks(prepare, "checking out_dir") if ranks[1] > 1 else prepare()
        return _fit(model, images, config, os.fspath(out_dir), resume, overwrite, device, progress, log, val, ranks)


CHECKPOINT_NAMES = ("stage1.pt", "model.pt")


def clear_checkpoints(out_dir) -> None:
    """Remove the training checkpoints (:data:`CHECKPOINT_NAMES`) of an earlier run from
    ``out_dir``, refusing (``OutputPathError``) any that is a protected input file."""
    from dadf_fast.utils.io import check_not_input

    for name in CHECKPOINT_NAMES:
        path = os.path.join(out_dir, name)
        if os.path.lexists(path):
            check_not_input(path)
            os.remove(path)


def _data_digest(images: torch.Tensor) -> str:
    """sha256 of the training images ``[N, 3, S, S]`` (shape and float32 values)."""
    h = hashlib.sha256(repr(tuple(images.shape)).encode())
    h.update(images.detach().to("cpu", torch.float32).contiguous().numpy())
    return h.hexdigest()


def _check_same_run(payload: dict, path: str, model, run: dict) -> None:
    """Raise ``ValueError`` unless checkpoint ``payload`` was written by a run with the same
    training config, model config and training images as ``run``."""
    saved = payload.get("run")
    if not isinstance(saved, dict) or not saved.get("id"):
        raise ValueError(f"cannot resume from {path}: it records no training run (written by DADF.save or an "
                         "older dadf-fast); start a new run in this folder with overwrite, or use another folder")
    diffs = []
    then_cfg = saved.get("fit_config") or {}
    for key, now in run["fit_config"].items():
        if then_cfg.get(key, "(unset)") != now:
            diffs.append(f"{key} {then_cfg.get(key, '(unset)')!r} then, {now!r} now")
    then_model = payload.get("config") or {}
    for key in sorted(set(then_model) | set(model.config)):
        if then_model.get(key) != model.config.get(key):
            diffs.append(f"model {key} {then_model.get(key)!r} then, {model.config.get(key)!r} now")
    if saved.get("data_sha256") != run["data_sha256"]:
        diffs.append("the training images differ")
    if diffs:
        raise ValueError(f"cannot resume from {path}: it comes from a different training run ({'; '.join(diffs)}); "
                         "resume with the same settings, or start a new run with overwrite")


def _hold_out(images: torch.Tensor, cfg: FitConfig, min_train: int, log):
    """``(train, held_out or None)``: ``cfg.calibration_fraction`` of ``images`` (seeded draw),
    unless that holds out none or leaves fewer than ``min_train`` to train on."""
    n = images.shape[0]
    n_hold = round(cfg.calibration_fraction * n)
    if cfg.calibration_fraction == 0:
        return images, None
    if n_hold < 1 or n - n_hold < min_train:
        log(f"calibration: {n} normal image(s) are too few to hold {cfg.calibration_fraction:.0%} out "
            "(pass validation images); the model gets no decision thresholds")
        return images, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919))
    return images[order[n_hold:]], images[order[:n_hold]]


def _resume(model, run: dict, stage1_path: str, final_path: str, out_dir: str, result: dict, log) -> int:
    """Load the last completed stage of this run found in ``out_dir``; the stage done (0: none)."""
    found = {}
    for stage, path in ((1, stage1_path), (2, final_path)):
        if os.path.exists(path):
            found[stage] = model.read_checkpoint(path)
            _check_same_run(found[stage], path, model, run)
    if len(found) == 2 and found[1]["run"]["id"] != found[2]["run"]["id"]:
        raise ValueError(f"cannot resume in {out_dir}: stage1.pt and model.pt come from two different runs; "
                         "start a new run with overwrite")
    if not found:
        log(f"nothing to resume in {out_dir} (no stage1.pt or model.pt): training from the start")
        return 0
    stage = max(found)
    payload, path = found[stage], (stage1_path, final_path)[stage - 1]
    model.load_state_dict(payload["state_dict"])
    if payload.get("calibration") is not None:
        from dadf_fast.models.thresholds import check_calibration

        model.calibration = check_calibration(payload["calibration"], f"{path}'s calibration")
    run["id"] = result["run_id"] = payload["run"]["id"]
    result["resumed_from"] = path
    log(f"resuming from {path} (stage {int(payload.get('stage_done', stage))} complete)")
    return int(payload.get("stage_done", stage))


def _resume_all_ranks(model, run, stage1_path, final_path, out_dir, result, log, ranks) -> int:
    """:func:`_resume` on rank 0 (it alone reads ``out_dir``), its outcome on every rank."""
    from dadf_fast.models.parallel import share_state
    from dadf_fast.utils.distributed import all_ranks, broadcast

    rank, size = ranks
    if size == 1:
        return _resume(model, run, stage1_path, final_path, out_dir, result, log)
    done = all_ranks(lambda: _resume(model, run, stage1_path, final_path, out_dir, result, log) if rank == 0 else 0,
                     "resuming")
    done, run["id"], result["resumed_from"] = broadcast((done, run["id"], result["resumed_from"]))
    result["run_id"] = run["id"]
    if done:
        share_state(model, rank, size)
    return done


def _fit(model, images, cfg: FitConfig, out_dir, resume: bool, overwrite: bool, device, progress, log,
         val=None, ranks=(0, 1)) -> dict:
    from dadf_fast.models.cues import fit_calibration
    from dadf_fast.models.parallel import cached_map, data_parallel, share_state
    from dadf_fast.utils.distributed import all_ranks

    rank, size = ranks
    writer = rank == 0  # the rank that writes checkpoints (every rank, alone)
    log = log or (lambda *a, **k: None)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    stage1_path = os.path.join(out_dir, "stage1.pt") if out_dir else None
    final_path = os.path.join(out_dir, "model.pt") if out_dir else None
    run = {"id": uuid.uuid4().hex, "fit_config": dataclasses.asdict(cfg), "data_sha256": None}
    if size > 1:
        from dadf_fast.utils.distributed import broadcast

        run["id"] = broadcast(run["id"])
    result = {"loss_recon": [], "loss_flow": [], "seconds": {}, "resumed_from": None, "run_id": run["id"],
              "calibration": None}

    images = images.to(next(model.backbone.parameters()).dtype)
    if out_dir:
        run["data_sha256"] = _data_digest(images)
    if out_dir and overwrite and writer:
        # the previous run's checkpoints go now: should this run stop early, an older model.pt
        # must not sit beside its stage1.pt looking like its result
        clear_checkpoints(out_dir)

    done = 0
    if resume:
        done = _resume_all_ranks(model, run, stage1_path, final_path, out_dir, result, log, ranks)
    if done >= 2:
        result["calibration"] = getattr(model, "calibration", None)
        return result

    if hasattr(model, "calibration"):
        model.calibration = None  # thresholds of earlier weights never pass for this run's
    held = None
    if val is None and hasattr(model, "calibrate_cues"):
        min_train = 2 if "knn" in model.config.get("score_cues", ()) else 1
        images, held = _hold_out(images, cfg, min_train, log)
        val = None if held is None else (held, None, None)
    normal = images  # the calibration of the score cues sees the images as given, not their flips
    images = _variants(images, cfg)
    n = images.shape[0]
    if n < size:
        raise ValueError(f"{size} processes for {n} training images (after the held-out ones): start at most {n}")
    model.eval()
    t0 = time.perf_counter()
    amp = model.autocast if hasattr(model, "autocast") else (lambda _: contextlib.nullcontext())
    with amp(device.type):
        feats = cached_map(lambda idx: model.features(images[idx].to(device)), n, 16, rank, size, device)
    result["seconds"]["features"] = time.perf_counter() - t0

    if done < 1:
        t0 = time.perf_counter()
        params = [p for p in model.reconstructor.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr_recon, betas=(0.9, 0.95))
        from dadf_fast.nn import reconstruction_loss

        def recon_loss(idx):
            f = [t[idx] for t in feats]
            with amp(device.type):  # the forward in mixed precision, the backward outside
                local, glob = model.reconstructor(f)
                return reconstruction_loss(f, local, glob)

        model.reconstructor.train()
        step = data_parallel(model.reconstructor, recon_loss, size, device)
        epochs_recon = math.ceil(cfg.epochs_recon * normal.shape[0] / n)  # passes over the given images
        result["loss_recon"] = _train_epochs(params, step, n, cfg.batch_size_recon, epochs_recon, opt, cfg,
                                             1, progress, gen, log, stage1_path, ranks=ranks)
        model.eval()
        result["seconds"]["stage1"] = time.perf_counter() - t0
        if stage1_path and writer:
            model.save(stage1_path, extra={"stage_done": 1, "run": run})

    t0 = time.perf_counter()

    def flow_inputs(idx):
        f = [t[idx] for t in feats]
        with amp(device.type):
            local, glob = model.reconstructor(f)
            return model.flow_inputs(f, local, glob)

    features_only = getattr(model, "config", {}).get("flow_input") == "features"  # no reconstruction pass
    inputs = feats if features_only else cached_map(flow_inputs, n, 16, rank, size, device)
    params = [p for name, p in model.flows.named_parameters() if p.requires_grad
              and (cfg.train_flow_norm or ".norm." not in f".{name}")]
    opt = torch.optim.Adam(params, lr=cfg.lr_flow, weight_decay=cfg.weight_decay_flow)
    model.flows.train()
    train_idx, val_fn = torch.arange(n), None
    if cfg.val_fraction > 0 and n >= 5:
        order = torch.randperm(n, generator=gen)
        n_val = max(1, round(cfg.val_fraction * n))
        val_idx, train_idx = order[:n_val], order[n_val:]

        def val_fn():
            with amp(device.type):
                parts = [model.flow_loss([t[i] for t in inputs]) * len(i) for i in torch.split(val_idx, 16)]
            return sum(parts) / len(val_idx)

    def flow_loss(idx):
        with amp(device.type):
            return model.flow_loss([t[train_idx[idx]] for t in inputs])

    epochs_flow = cfg.epochs_flow
    if cfg.iters_flow is not None:
        epochs_flow = math.ceil(cfg.iters_flow / math.ceil(len(train_idx) / cfg.batch_size_flow))
    # DDP over the scored scales' flows only: the loss never reaches the others, and DDP needs
    # every parameter it wraps to get a gradient
    scored = torch.nn.ModuleList([model.flows[s] for s in model.config["score_scales"]]) \
        if hasattr(model, "config") else model.flows
    step = data_parallel(scored, flow_loss, size, device)
    result["loss_flow"] = _train_epochs(params, step, len(train_idx), cfg.batch_size_flow, epochs_flow, opt, cfg, 2,
                                        progress, gen, log, stage1_path, val_fn=val_fn, module=model.flows,
                                        ranks=ranks)
    model.eval()
    result["seconds"]["stage2"] = time.perf_counter() - t0
    if hasattr(model, "calibrate_cues"):
        t0 = time.perf_counter()
        def calibrate():  # rank 0 calibrates, the other ranks receive its result
            if writer:
                fit_calibration(model, normal.to(device), val, held is not None, cfg.seed, log)

        all_ranks(calibrate, "calibrating") if size > 1 else calibrate()
        share_state(model, rank, size)
        result["calibration"] = model.calibration
        result["seconds"]["calibrate"] = time.perf_counter() - t0
    if final_path and writer:
        model.save(final_path, extra={"stage_done": 2, "run": run})
    return result


__all__ = ["FitConfig", "fit", "TrainingDiverged", "RECIPES", "CHECKPOINT_NAMES", "clear_checkpoints"]
