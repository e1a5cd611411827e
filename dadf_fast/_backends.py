"""Which compute backends exist on this machine, and why the others do not.

Three backends implement the public ops (``dadf_fast.ops``):

* ``torch``  - the pure-torch reference (always available).
* ``triton`` - fused Triton kernels (CUDA tensors; CPU tensors only under
  ``TRITON_INTERPRET=1``, Triton's exact but slow interpreter).
* ``cpp``    - the compiled extension ``dadf_fast._C`` (CPU kernels, CUDA kernels when it
  was built with CUDA).

Nothing here falls back silently: an op asked for an unavailable backend raises
:class:`BackendUnavailable` with the reason that :func:`backends` reports.
"""
from __future__ import annotations

import functools
import importlib
import os

BACKEND_NAMES = ("torch", "triton", "cpp")

SOFT_PERMUTATION_REASON = (
    "soft permutations (AllInOneCoupling with permute_soft=True) are dense rotations: they run the dense torch "
    "path, never the gather kernels of the triton/cpp backends"
)
# what a backend never does, whatever the machine
LIMITATIONS = {
    "torch": [],
    "triton": [SOFT_PERMUTATION_REASON, "dual_attention: head dim at most 256",
               "on CPU tensors only under TRITON_INTERPRET=1, without bfloat16"],
    "cpp": [SOFT_PERMUTATION_REASON, "CPU kernels: float32 and float64 only"],
}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run the op for these inputs."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"Triton is not importable ({type(exc).__name__}: {exc})"
    return None


def triton_reason(device_type: str) -> str | None:
    """Why Triton cannot run on ``device_type`` tensors (None when it can)."""
    err = _triton_import_error()
    if err:
        return err
    if device_type == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None
    if device_type == "cpu":
        if triton_interpret():
            return None
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before triton is imported)"
    return f"Triton does not support {device_type!r} tensors"


@functools.lru_cache(maxsize=None)
def _cpp_module():
    """(module, None) when ``dadf_fast._C`` loads and is current, else (None, reason)."""
    try:
        mod = importlib.import_module("dadf_fast._C")
    except Exception as exc:
        return None, (
            "the C++ extension dadf_fast._C is not built "
            f"({type(exc).__name__}: {exc}); install with "
            "`pip install --no-build-isolation -e .` to compile it"
        )
    stale = _cpp_stale_reason(mod)
    if stale:
        return None, stale
    return mod, None


def _cpp_stale_reason(mod) -> str | None:
    """Compare the source hash baked in at build time with the sources next to the package
    (only checkable in a source checkout / editable install)."""
    built = getattr(mod, "SOURCE_HASH", None)
    if built is None:
        return None
    from ._source_hash import source_hash

    current = source_hash()
    if current is not None and current != built:
        return (
            "the C++ extension dadf_fast._C is stale: csrc/ changed since it was built; "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
    return None


def cpp_reason(device_type: str) -> str | None:
    """Why the C++ extension cannot run on ``device_type`` tensors (None when it can)."""
    mod, reason = _cpp_module()
    if reason:
        return reason
    if device_type == "cpu":
        return None
    if device_type == "cuda":
        if not getattr(mod, "WITH_CUDA", False):
            return "dadf_fast._C was built without CUDA kernels (rebuild with DADF_FAST_CUDA=1)"
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None
    return f"the C++ extension does not support {device_type!r} tensors"


def backend_reason(backend: str, device_type: str) -> str | None:
    if backend == "torch":
        if device_type == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device is visible"
        return None
    if backend == "triton":
        return triton_reason(device_type)
    if backend == "cpp":
        return cpp_reason(device_type)
    raise ValueError(f"backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")


def backends() -> dict:
    """Availability of every backend on every device type, with the reason when not.

    Returns ``{backend: {"cpu": {"available": bool, "reason": str}, "cuda": {...},
    "ops": [op names it implements], "limitations": [what it never runs]}}``.
    """
    from .ops import OPS

    report = {}
    for name in BACKEND_NAMES:
        entry = {}
        for dev in ("cpu", "cuda"):
            reason = backend_reason(name, dev)
            entry[dev] = {"available": reason is None, "reason": reason or "available"}
        entry["ops"] = [op.name for op in OPS if name in op.backends]
        entry["limitations"] = list(LIMITATIONS[name])
        report[name] = entry
    return report
