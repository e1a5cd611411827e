"""torch.distributed for the commands and for training: which process this is, the process
group of a ``torchrun`` launch, and the few collectives the package needs (launched by
``torchrun``, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``).

Every collective here moves small Python objects or CPU tensors through gloo, also when the
models run on GPUs: the group is started as ``cpu:gloo,cuda:nccl`` there, so DDP's gradient
all-reduce of CUDA tensors goes through NCCL and the rest through gloo.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` outside torchrun)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device) -> str:
    """The device this process should use for ``device``: under torchrun, a bare ``cuda``
    becomes ``cuda:<LOCAL_RANK>`` (one GPU per process on each machine); anything else, and
    any device outside torchrun, is returned as given."""
    device = str(device)
    if device == "cuda" and world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def start(device="cpu") -> bool:
    """Join the process group of a torchrun launch; False outside torchrun.  gloo on CPU;
    with a CUDA ``device``, NCCL for CUDA tensors beside gloo for the CPU objects."""
    _, size = world()
    if size <= 1:
        return False
    if not dist.is_initialized():
        dev = torch.device(local_device(device))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")
    return True


def stop(finished: bool = True) -> None:
    """Leave the process group. ``finished``: every rank got here without an error, so they
    first wait for each other (a rank that tore its connections down while a peer still
    finished the last collective made that peer abort in gloo); after an error no rank waits
    (the others may be inside another collective: torchrun ends them)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised group (``(0, 1)`` without one)."""
    if not active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def resolve(distributed: bool | None, what: str = "distributed") -> tuple[int, int]:
    """``(rank, world_size)`` for an API's ``distributed=`` argument: ``None`` follows the
    process group (work split over it inside one of 2+ processes), ``False`` works alone,
    ``True`` insists on a group."""
    if distributed is None:
        return rank_size()
    if not isinstance(distributed, bool):
        raise ValueError(f"{what} must be None, True or False, got {distributed!r}")
    if distributed and not active():
        raise ValueError(f"{what}=True needs an initialised torch.distributed process group of 2 or more "
                         "processes (launch with torchrun and call torch.distributed.init_process_group)")
    return rank_size() if distributed else (0, 1)


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` outside a group)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself outside a group)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree(error: str | None) -> str | None:
    """The first non-empty ``error`` of any rank (every rank gets it): ranks that checked
    something stop together instead of leaving the others waiting in a collective."""
    errors = [e for e in gather(error) if e]
    return errors[0] if errors else None


def all_ranks(fn, what: str = "a rank"):
    """Run ``fn()`` on every rank and return its result; when it raises on any rank, raise on
    every rank (the same exception type where this rank failed, else ``RuntimeError`` naming the
    failed rank), so no rank is left waiting in the next collective."""
    try:
        value, problem = fn(), None
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        value, problem = None, exc
    if not active():
        if problem is not None:
            raise problem
        return value
    errors = gather(None if problem is None else f"{type(problem).__name__}: {problem}")
    if problem is not None:
        raise problem
    for r, err in enumerate(errors):
        if err:
            raise RuntimeError(f"{what} failed on rank {r}: {err}")
    return value


def shard(n: int, rank: int, size: int) -> range:
    """The contiguous part ``rank`` of ``size`` of ``range(n)`` (sizes differ by at most one)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return range(lo, lo + base + (rank < extra))


def shard_batches(n: int, batch: int, rank: int, size: int) -> range:
    """The items of rank ``rank``'s contiguous share of the batches of ``batch`` items that one
    process makes of ``range(n)``: every rank's batches are exactly one process's (empty for a
    rank when there are fewer batches than ranks)."""
    mine = shard(-(-n // batch), rank, size)
    return range(min(mine.start * batch, n), min(mine.stop * batch, n))
