"""Two-stage training of DADF (stage 1: reconstruction transformer; stage 2: flows).

The backbone is frozen, so its features of the (few) training images are computed once and
cached; stage 2 also caches the flow inputs ``cat(F, R_l, R_g)`` once the transformer is
frozen.  A training step then costs only the trainable part, which on a 2-core CPU is the
difference between minutes and an hour.  Caching is exact: the frozen parts are
deterministic in eval mode.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time

import torch
from torch.utils.data import DataLoader, Dataset

RECIPES = ("paper", "lite")
LITE_FLOW_ITERS = 432  # 144 epochs of 40 images at batch 16 (docs/accuracy.md)


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
    train_flow_norm: bool = True  # False freezes the flows' [C,H,W] LayerNorm affine (docs/accuracy.md)
    # fraction of the normal images held out in stage 2; the flow weights of the epoch with
    # the lowest held-out NLL are kept (0 disables early stopping)
    val_fraction: float = 0.0
    hflip: bool = False
    vflip: bool = False
    seed: int = 0

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

    @classmethod
    def for_recipe(cls, recipe: str = "paper", **overrides) -> "FitConfig":
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        base = {}
        if recipe == "lite":
            # few images, few CPU minutes: a short reconstruction stage, a fixed number of flow
            # optimiser steps at twice the official flow learning rate, gradient clipping
            # (docs/accuracy.md)
            base = dict(epochs_recon=4, iters_flow=LITE_FLOW_ITERS, lr_flow=2e-3, grad_clip=1.0)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "epochs_flow" in overrides and "iters_flow" not in overrides:
            base.pop("iters_flow", None)  # an explicit epoch count wins over the recipe's steps
        base.update(overrides)
        return cls(recipe=recipe, **base)


def _images_of(data) -> torch.Tensor:
    """``[N, 3, S, S]`` images from a tensor or a dataset of dicts / tensors."""
    if isinstance(data, torch.Tensor):
        return data
    if not isinstance(data, Dataset) and not hasattr(data, "__getitem__"):
        raise TypeError("train_data must be a tensor [N, 3, S, S] or a dataset of images")
    if len(data) == 0:
        raise ValueError("train_data is empty: at least one normal image is needed")
    items = [data[i] for i in range(len(data))]
    imgs = [it["image"] if isinstance(it, dict) else (it[0] if isinstance(it, (tuple, list)) else it) for it in items]
    return torch.stack(imgs)


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
                  progress: bool, gen: torch.Generator, log, checkpoint, val_fn=None, module=None):
    """Run ``epochs`` epochs of ``loss_fn(batch indices)``; with ``val_fn``, keep the state of
    ``module`` at the epoch with the lowest validation loss."""
    history, best = [], (float("inf"), None, -1)
    bar = _progress(range(epochs), f"stage {stage}", progress)
    for epoch in bar:
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for idx in torch.split(order, batch):
            loss = loss_fn(idx)
            _check_finite(loss, stage, epoch, checkpoint)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
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
        device=None, progress: bool = True, log=print, **overrides) -> dict:
    """Train ``model`` (a :class:`dadf_fast.DADF`) on normal images.

    Args:
        train_data: tensor ``[N, 3, S, S]`` or a dataset whose items have an ``image``.
        config: a :class:`FitConfig` (default: ``FitConfig.for_recipe(**overrides)``).
        out_dir: where ``stage1.pt`` and ``model.pt`` are written (atomically) at the end of
            each stage.  resume: continue from the last completed stage found in ``out_dir``.
    Returns:
        ``{"loss_recon": [per-epoch], "loss_flow": [per-epoch], "seconds": {...}}``.
    """
    if config is None:
        config = FitConfig.for_recipe(overrides.pop("recipe", "paper"), **overrides)
    elif overrides:
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    cfg = config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    stage1_path = os.path.join(out_dir, "stage1.pt") if out_dir else None
    final_path = os.path.join(out_dir, "model.pt") if out_dir else None
    result = {"loss_recon": [], "loss_flow": [], "seconds": {}, "resumed_from": None}

    done = 0
    if resume:
        if not out_dir:
            raise ValueError("resume=True needs out_dir (where the checkpoints of the interrupted run are)")
        for stage, path in ((2, final_path), (1, stage1_path)):
            if path and os.path.exists(path):
                payload = model.read_checkpoint(path)
                model.load_state_dict(payload["state_dict"])
                done = int(payload.get("stage_done", stage))
                result["resumed_from"] = path
                log(f"resuming from {path} (stage {done} complete)")
                break
    if done >= 2:
        return result

    images = _images_of(train_data)
    model.check_images(images[:1])
    images = _variants(images, cfg)
    n = images.shape[0]
    model.eval()
    t0 = time.perf_counter()
    amp = model.autocast if hasattr(model, "autocast") else (lambda _: contextlib.nullcontext())
    with amp(device.type):
        feats = _batched(lambda x: model.features(x), images, 16, device)
    result["seconds"]["features"] = time.perf_counter() - t0

    if done < 1:
        t0 = time.perf_counter()
        params = [p for p in model.reconstructor.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr_recon, betas=(0.9, 0.95))
        from .nn import reconstruction_loss

        def recon_loss(idx):
            f = [t[idx] for t in feats]
            with amp(device.type):  # the forward in mixed precision, the backward outside
                local, glob = model.reconstructor(f)
                return reconstruction_loss(f, local, glob)

        model.reconstructor.train()
        result["loss_recon"] = _train_epochs(params, recon_loss, n, cfg.batch_size_recon, cfg.epochs_recon, opt, cfg,
                                             1, progress, gen, log, stage1_path)
        model.eval()
        result["seconds"]["stage1"] = time.perf_counter() - t0
        if stage1_path:
            model.save(stage1_path, extra={"stage_done": 1})

    t0 = time.perf_counter()
    with torch.no_grad(), amp(device.type):
        inputs = []
        for idx in torch.split(torch.arange(n), 16):
            f = [t[idx] for t in feats]
            local, glob = model.reconstructor(f)
            inputs.append(model.flow_inputs(f, local, glob))
        inputs = [torch.cat([b[s] for b in inputs]) for s in range(len(feats))]
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
    result["loss_flow"] = _train_epochs(params, flow_loss,
                                        len(train_idx), cfg.batch_size_flow, epochs_flow, opt, cfg, 2, progress,
                                        gen, log, stage1_path, val_fn=val_fn, module=model.flows)
    model.eval()
    result["seconds"]["stage2"] = time.perf_counter() - t0
    if final_path:
        model.save(final_path, extra={"stage_done": 2})
    return result


__all__ = ["FitConfig", "fit", "TrainingDiverged", "RECIPES"]
