"""The C++/CUDA backend: the extension module ``dadf_fast._C`` built from ``csrc/`` here.

``csrc/ops.cpp`` holds the schemas of ``torch.ops.dadf_fast.*``, ``csrc/cpu`` and
``csrc/cuda`` the kernels; :mod:`dadf_fast.kernels.cpp.ops` adds the fake kernels and the
autograd formulas and the functions the public ops call.  The extension is compiled on first
use and cached (:mod:`dadf_fast.kernels.cpp.build`).  Importing this package neither compiles
nor loads anything; :func:`load_extension` does.
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def load_extension():
    """(module, None) when the extension is built (now or earlier) and loads, else (None, reason).

    Never raises: a failed compile or import becomes the reason string that
    :func:`dadf_fast.backends` reports and an explicit ``backend="cpp"`` raises.
    """
    from dadf_fast.kernels.cpp import build

    try:
        reason = build.disabled_reason()
    except ValueError as exc:
        return None, str(exc)
    if reason:
        return None, reason
    p = None
    try:
        p = build.plan()
        mod, p, _ = build.load()
    except Exception as exc:
        return None, build.failure_reason(exc, p)
    stale = stale_reason(mod)
    if stale:
        return None, stale
    return mod, None


def stale_reason(mod) -> str | None:
    """A reason when ``mod`` was not built from the sources next to this package, else None.

    The cache directory is keyed by the source hash, so this cannot happen through
    :func:`load_extension`; it guards against a library put into the cache by hand.
    """
    from dadf_fast.kernels.cpp.source_hash import source_hash

    built = getattr(mod, "SOURCE_HASH", None)
    current = source_hash()
    if built is None or current is None or built != current:
        return (f"the C++ extension at {getattr(mod, '__file__', '?')} is stale: built from other sources "
                f"(SOURCE_HASH {built}) than csrc/ ({current}); delete that cache directory")
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
            from dadf_fast.kernels.cpp.build import cuda_choice

            return (f"the C++ extension was built without CUDA kernels ({cuda_choice()[1]}; "
                    "DADF_FAST_CUDA=1 forces them)")
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None
    return f"the C++ extension does not support {device_type!r} tensors"
