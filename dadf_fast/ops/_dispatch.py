"""Backend selection shared by the public ops.

An op is a name, a table ``backend -> loader`` and an auto order per device type.  A loader
returns the implementation or raises :class:`BackendUnavailable` with a reason (kernel file
missing, extension not built).  ``backend="auto"`` takes the first backend in the order
that can run the inputs; an explicit backend that cannot run raises instead.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from dadf_fast.utils.checks import check_flag, check_number  # noqa: F401  (re-exported to the ops)
from dadf_fast.utils.precision import autocast_off  # noqa: F401
from dadf_fast.kernels.registry import BACKEND_NAMES, BackendUnavailable, backend_reason

AUTO_ORDER = {"cuda": ("triton", "cpp", "torch"), "cpu": ("cpp", "torch")}


@dataclasses.dataclass
class Op:
    name: str
    backends: dict  # backend name -> zero-arg loader returning the implementation
    dtype_reasons: Callable[[str, str, torch.dtype], str | None] = lambda backend, dev, dtype: None
    # shape limits: (backend, limit key) -> reason or None; the key is a small hashable summary
    # of the inputs that the op computes (e.g. dual_attention's head dim), part of the cache key
    limit_reasons: Callable[[str, object], str | None] = lambda backend, key: None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def reason(self, backend: str, device: torch.device, dtype: torch.dtype, key=None) -> str | None:
        """Why ``backend`` cannot run this op on such tensors (None when it can)."""
        if backend not in self.backends:
            return f"the {backend!r} backend does not implement {self.name}"
        r = backend_reason(backend, device.type)
        if r:
            return r
        r = self.dtype_reasons(backend, device.type, dtype)
        if r:
            return r
        if key is not None:
            r = self.limit_reasons(backend, key)
            if r:
                return r
        try:
            self.backends[backend]()
        except BackendUnavailable as exc:
            return str(exc)
        return None

    def select(self, backend: str, device: torch.device, dtype: torch.dtype, key=None) -> tuple[str, Callable]:
        """Resolve ``backend`` ("auto" or a name) to ``(name, implementation)``.

        Successful resolutions are cached per (backend, device type, dtype, limit key), so
        that code traced by ``torch.compile`` after a first eager call only sees a dict
        lookup (the first resolution may import a kernel module, which Dynamo cannot trace).
        """
        if not isinstance(backend, str):
            raise ValueError(f"{self.name}: backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")
        ck = (backend, device.type, dtype, key)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        hit = self._resolve(backend, device, dtype, key)
        self._cache[ck] = hit
        return hit

    def _resolve(self, backend: str, device: torch.device, dtype: torch.dtype, key=None) -> tuple[str, Callable]:
        if backend == "auto":
            for name in AUTO_ORDER.get(device.type, ("torch",)):
                if self.reason(name, device, dtype, key) is None:
                    return name, self.backends[name]()
            return "torch", self.backends["torch"]()
        if backend not in BACKEND_NAMES:
            raise ValueError(f"{self.name}: backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")
        r = self.reason(backend, device, dtype, key)
        if r:
            raise BackendUnavailable(f"{self.name}: backend {backend!r} cannot run on {device.type} {dtype}: {r}")
        return backend, self.backends[backend]()


def lazy(module: str, attr: str, what: str):
    """Loader importing ``attr`` from ``module`` on first use; a missing module or attribute
    becomes a :class:`BackendUnavailable` naming ``what``."""
    cache = {}

    def load():
        if "impl" not in cache:
            import importlib

            try:
                cache["impl"] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise BackendUnavailable(f"{what} is not available ({type(exc).__name__}: {exc})") from exc
        return cache["impl"]

    return load


def check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
