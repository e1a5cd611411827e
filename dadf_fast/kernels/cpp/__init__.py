"""The C++/CUDA backend: the compiled extension ``dadf_fast._C`` (sources in ``csrc/`` here).

``csrc/ops.cpp`` holds the schemas of ``torch.ops.dadf_fast.*``, ``csrc/cpu`` and
``csrc/cuda`` the kernels; :mod:`dadf_fast.kernels.cpp.ops` adds the fake kernels and the
autograd formulas and the functions the public ops call.  Importing this package does not
load the extension; :func:`load_extension` does.
"""
from __future__ import annotations

import functools
import importlib


@functools.lru_cache(maxsize=None)
def load_extension():
    """(module, None) when ``dadf_fast._C`` loads and is current, else (None, reason)."""
    try:
        mod = importlib.import_module("dadf_fast._C")
    except Exception as exc:
        return None, (
            "the C++ extension dadf_fast._C is not built "
            f"({type(exc).__name__}: {exc}); install with "
            "`pip install --no-build-isolation -e .` to compile it"
        )
    stale = stale_reason(mod)
    if stale:
        return None, stale
    return mod, None


def stale_reason(mod) -> str | None:
    """Compare the source hash baked in at build time with the sources next to the package
    (only checkable in a source checkout / editable install)."""
    built = getattr(mod, "SOURCE_HASH", None)
    if built is None:
        return None
    from dadf_fast.kernels.cpp.source_hash import source_hash

    current = source_hash()
    if current is not None and current != built:
        return (
            "the C++ extension dadf_fast._C is stale: csrc/ changed since it was built; "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
    return None


def unavailable_reason(device_type: str) -> str | None:
    """Why the C++ extension cannot run on ``device_type`` tensors (None when it can)."""
    mod, reason = load_extension()
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
