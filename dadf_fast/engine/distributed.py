"""torch.distributed for the commands: which process this is, and the few collectives the
category-parallel commands need (gloo on CPU; launched by ``torchrun``, which sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``)."""
from __future__ import annotations

import os

import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` outside torchrun)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def start() -> bool:
    """Join the process group of a torchrun launch (gloo: category parallelism exchanges
    only small Python objects, on any device); False outside torchrun."""
    _, size = world()
    if size <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` outside torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(error: str | None) -> str | None:
    """The first non-empty ``error`` of any rank (every rank gets it): ranks that checked
    something stop together instead of leaving the others waiting in a collective."""
    errors = [e for e in gather(error) if e]
    return errors[0] if errors else None
