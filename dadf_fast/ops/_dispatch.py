"""Backend selection shared by the public ops.

Each op asks the declarations of the backends (:mod:`dadf_fast.kernels.registry`) whether
they can run *this* call (device, dtype and whatever sizes their limits read, e.g. the head
dim).  ``backend="auto"`` takes the first candidate of the device's order that can;
``backend=<name>`` runs on that backend or raises :class:`BackendUnavailable` with its
reasons; when no candidate of ``"auto"`` can run, one message lists every backend's reason.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from dadf_fast.kernels.registry import BACKEND_NAMES, DECLARATIONS, BackendUnavailable, Call, declaration

# fastest first; device types not listed try the torch backend only
AUTO_ORDER = {"cuda": ("triton", "cpp", "torch"), "cpu": ("cpp", "torch")}


def _device_type(device) -> str:
    return device.type if isinstance(device, torch.device) else torch.device(device).type


class Resolved(NamedTuple):
    backend: str
    impl: Callable
    options: tuple  # extra keyword arguments impl accepts (OpSupport.options)


class Op:
    """One public op's dispatch: resolves ``backend`` for a call and caches the answer."""

    def __init__(self, name: str):
        self.name = name
        self._cache: dict = {}

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends that implement this op."""
        return tuple(n for n, d in DECLARATIONS.items() if d.support(self.name) is not None)

    def reason(self, backend: str, device, dtype: torch.dtype, **attrs) -> str | None:
        """Why ``backend`` cannot run this op on such inputs (None when it can)."""
        return self._reason(backend, Call(self.name, _device_type(device), dtype, tuple(attrs.items())))

    def select(self, backend: str, device, dtype: torch.dtype, **attrs) -> Resolved:
        """Resolve ``backend`` (``"auto"`` or a name) for a call on ``device``/``dtype``
        tensors with the sizes ``attrs`` (those the backends' limits read).

        Resolutions are cached per (backend, device type, dtype, attrs), so that code traced
        by ``torch.compile`` after a first eager call only sees a dict lookup (the first
        resolution may import a kernel module, which Dynamo cannot trace).
        """
        if not isinstance(backend, str):  # before it meets the cache: a list is unhashable
            raise ValueError(f"{self.name}: backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")
        dev = _device_type(device)
        key = (backend, dev, dtype, *attrs.items())
        hit = self._cache.get(key)
        if hit is None:
            hit = self._resolve(backend, Call(self.name, dev, dtype, tuple(attrs.items())))
            self._cache[key] = hit
        return hit

    def _reason(self, backend: str, call: Call) -> str | None:
        decl = declaration(backend)
        r = decl.reason(call)
        if r is None:
            try:
                decl.support(self.name).load()
            except BackendUnavailable as exc:
                return str(exc)
        return r

    def _resolve(self, backend: str, call: Call) -> Resolved:
        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ValueError(f"{self.name}: backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")
        if backend != "auto":
            r = self._reason(backend, call)
            if r:
                raise BackendUnavailable(f"{self.name}: backend {backend!r} cannot run on {call.describe()}: {r}")
            return self._resolved(backend)
        order = AUTO_ORDER.get(call.device, ("torch",))
        reasons = {}
        for name in order:
            reasons[name] = self._reason(name, call)
            if reasons[name] is None:
                return self._resolved(name)
        for name in BACKEND_NAMES:
            if name not in reasons:
                reasons[name] = f"not a candidate of 'auto' for {call.device} tensors (ask for it by name)"
        lines = "".join(f"\n  {name}: {r}" for name, r in reasons.items())
        raise BackendUnavailable(f"{self.name}: no backend can run {call.describe()}:{lines}")

    def _resolved(self, backend: str) -> Resolved:
        support = DECLARATIONS[backend].support(self.name)
        return Resolved(backend, support.load(), support.options)
