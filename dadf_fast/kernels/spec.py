"""How a backend declares what it can run.

Each backend package holds one :class:`Backend`: the device types it has kernels for, a
function saying why this machine cannot run it on a device type (Triton not importable,
extension not built, no GPU), and one :class:`OpSupport` per op it implements: where the
implementation lives (imported on first use) and its :class:`Limit` s.

A limit is data: a sentence for people (``dadf_fast.backends()[name]["limitations"]`` and
the docs list them) and a test on the actual call, a :class:`Call`, for the dispatcher in
:mod:`dadf_fast.ops`.  Both come from the same object, so what the docs say is what
dispatch does.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import torch


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend (or every candidate of ``"auto"``) cannot run the op
    for these inputs; the message says why."""


@dataclasses.dataclass(frozen=True)
class Call:
    """What the dispatcher knows of one op call.

    ``attrs`` holds ``(name, value)`` pairs the public op computes from its validated inputs
    (e.g. ``("head_dim", 180)`` for dual_attention), exactly those its backends' limits
    read.  A query that leaves an attribute out (``ops.selected_backend`` without sizes) is
    answered as if the inputs were within every limit that reads it.
    """

    op: str
    device: str  # device type: "cpu", "cuda", ...
    dtype: torch.dtype
    attrs: tuple = ()

    def get(self, name: str):
        if name == "device":
            return self.device
        if name == "dtype":
            return self.dtype
        return dict(self.attrs).get(name)

    def describe(self, names=None) -> str:
        names = ("device", "dtype") + tuple(n for n, _ in self.attrs) if names is None else names
        return ", ".join(f"{n}={self.get(n)}" for n in names)


@dataclasses.dataclass(frozen=True)
class Limit:
    """Something a backend never runs.

    ``sentence`` states it for people; ``rejects(call)`` is True for a call that falls under
    it; ``reads`` names the :class:`Call` fields ``rejects`` looks at (the dispatcher's cache
    key holds all of them, and a limit is not applied when the call lacks one of them).
    """

    sentence: str
    reads: tuple[str, ...]
    rejects: Callable[[Call], bool]

    def reason(self, call: Call) -> str | None:
        if any(call.get(n) is None for n in self.reads):
            return None
        if not self.rejects(call):
            return None
        return f"{self.sentence} (got {call.describe(self.reads)})"


def dtype_limit(sentence: str, allowed: dict) -> Limit:
    """A limit on dtypes per device type: ``allowed`` maps a device type to the dtypes the
    kernels take there; device types not in ``allowed`` are not restricted by it."""
    table = {dev: frozenset(dts) for dev, dts in allowed.items()}
    return Limit(sentence, ("device", "dtype"),
                 lambda call: call.device in table and call.dtype not in table[call.device])


_LOADED: dict = {}


@dataclasses.dataclass(frozen=True)
class OpSupport:
    """One op as one backend implements it.

    ``impl`` is ``"module:function"``, imported on first use (importing a kernel module
    imports Triton or loads the extension).  The function takes the op's common arguments
    (already validated by :mod:`dadf_fast.ops`); ``options`` names the extra keyword
    arguments it also accepts (e.g. ``compute_logdet``)."""

    op: str
    impl: str
    limits: tuple[Limit, ...] = ()
    options: tuple[str, ...] = ()

    def load(self) -> Callable:
        fn = _LOADED.get(self.impl)
        if fn is None:
            module, attr = self.impl.split(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise BackendUnavailable(f"{self.impl} is not available ({type(exc).__name__}: {exc})") from exc
            _LOADED[self.impl] = fn
        return fn


@dataclasses.dataclass(frozen=True)
class Backend:
    """Everything one backend declares: ``devices`` (device types it has kernels for; None:
    any device torch runs on), ``availability(device_type)`` (why this machine cannot run
    it there, None when it can) and ``ops``."""

    name: str
    devices: tuple[str, ...] | None
    availability: Callable[[str], str | None]
    ops: tuple[OpSupport, ...]

    def support(self, op: str) -> OpSupport | None:
        for s in self.ops:
            if s.op == op:
                return s
        return None

    def device_reason(self, device_type: str) -> str | None:
        """Why this backend cannot run on ``device_type`` tensors here (None when it can)."""
        if self.devices is not None and device_type not in self.devices:
            return f"the {self.name!r} backend has no kernels for {device_type!r} tensors (only {', '.join(self.devices)})"
        return self.availability(device_type)

    def reason(self, call: Call) -> str | None:
        """Why this backend cannot run ``call`` (every limit it breaks), None when it can."""
        s = self.support(call.op)
        if s is None:
            return f"the {self.name!r} backend does not implement {call.op}"
        r = self.device_reason(call.device)
        if r:
            return r
        broken = [r for r in (lim.reason(call) for lim in s.limits) if r]
        return "; ".join(broken) or None

    def limitations(self) -> list[str]:
        """The sentences of every limit, each once, in declaration order."""
        return list(dict.fromkeys(lim.sentence for s in self.ops for lim in s.limits))


SOFT_PERMUTATION = Limit(
    "soft permutations (AllInOneCoupling or AllInOneBlock with permute_soft=True) are dense rotations: "
    "they run the dense torch path, never the gather kernels of the triton/cpp backends",
    ("permutation",),
    lambda call: call.get("permutation") == "soft",
)
