"""Data-parallel training of one model over the processes of a ``torchrun`` launch.

What :func:`dadf_fast.models.training.fit` does on ``W`` ranks (``distributed=None`` with an
initialised process group of more than one process, or ``distributed=True``):

- the frozen parts' caches (backbone features; in stage 2, the flow inputs) are computed
  sharded: rank ``r`` computes the ``r``-th contiguous share of the chunks of 16 images a
  single process computes, and the shares are gathered on every rank, so nothing is computed
  twice;
- every rank draws the same permutation (the same seeded generator), so the global batches
  are those of a single process; rank ``r`` takes the ``r``-th part of each global batch and
  scales its mean loss by ``len(part) * W / len(batch)``, so DDP's gradient average is the
  gradient of the global batch's mean loss, also when the parts differ in size (a global
  batch smaller than ``W`` leaves a rank an empty part: it contributes a zero loss that still
  touches every parameter, as DDP needs);
- gradient clipping and the optimiser step then see identical gradients on every rank and
  keep the replicas identical.
"""
from __future__ import annotations

import inspect

import torch

from dadf_fast.utils.distributed import broadcast, gather, shard_batches


@torch.no_grad()
def cached_map(fn, n: int, chunk: int, rank: int, size: int, device) -> list[torch.Tensor]:
    """``fn(index tensor)`` -> list of per-image tensors, over ``range(n)`` in chunks of
    ``chunk``; each rank computes its contiguous share of one process's chunks, every rank
    gets the concatenation in index order (on ``device``)."""
    part = shard_batches(n, chunk, rank, size)
    outs = [fn(idx) for idx in torch.split(torch.arange(part.start, part.stop), chunk)]
    local = [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))] if outs else None
    if size == 1:
        return local
    # gathered as CPU tensors inside Python objects: the caches are small (tens of images), and
    # this works on every backend and device; a rank without a chunk sends None
    shares = [s for s in gather(None if local is None else [t.cpu() for t in local]) if s is not None]
    return [torch.cat([s[i] for s in shares]).to(device) for i in range(len(shares[0]))]


class _Loss(torch.nn.Module):
    """A training loss as a module over ``owner``'s parameters, so that DDP can wrap it."""

    def __init__(self, owner: torch.nn.Module, fn):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if len(idx) == 0:
            return sum(p.sum() for p in self.owner.parameters() if p.requires_grad) * 0.0
        return self.fn(idx)


def data_parallel(owner: torch.nn.Module, fn, size: int, device):
    """``fn`` (batch indices -> mean loss over ``owner``'s parameters) as a DDP module on
    ``size`` > 1 ranks; ``fn`` itself on one."""
    if size == 1:
        return fn
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    # the buffers (positional embeddings, permutations) never change in training: no per-step
    # broadcast of them (the argument's name changed in torch 2.14)
    params = inspect.signature(DistributedDataParallel).parameters
    quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(_Loss(owner, fn), device_ids=[device] if device.type == "cuda" else None, **quiet)


def global_batch_loss(step, idx: torch.Tensor, rank: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss to backpropagate, the global batch's mean loss)`` of global batch ``idx``."""
    if size == 1:
        loss = step(idx)
        return loss, loss.detach()
    local = idx.tensor_split(size)[rank]
    loss = step(local) * (len(local) * size / len(idx))
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)
    return loss, total / size


def check_same_data(digest: str, n: int, size: int) -> None:
    """Raise ``ValueError`` on every rank when the ranks hold different training images or
    there are fewer images than processes."""
    digests = gather(digest)
    if len(set(digests)) > 1:
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        raise ValueError(f"the ranks hold different training images (rank 0 and rank(s) {odd} differ): every "
                         "process must read the same data")
    if n < size:
        raise ValueError(f"{size} processes for {n} training images: start at most {n} (--nproc-per-node)")


def share_state(model, rank: int, size: int) -> None:
    """Rank 0's weights, buffers and calibration on every rank (after rank 0 alone calibrated)."""
    if size == 1:
        return
    state = broadcast(({k: v.cpu() for k, v in model.state_dict().items()}, getattr(model, "calibration", None))
                      if rank == 0 else None)
    if rank != 0:
        model.load_state_dict(state[0])
        if hasattr(model, "calibration"):
            model.calibration = state[1]


__all__ = ["cached_map", "data_parallel", "global_batch_loss", "check_same_data", "share_state"]
