"""The compute backends, what each declares it can run, and which can run on this machine.

Three backends implement the public ops (``dadf_fast.ops``), each declaring its devices,
dtypes, shape limits and kernel locations in one place (:mod:`dadf_fast.kernels.spec`):

* ``torch``  - the pure-torch reference (:mod:`dadf_fast.kernels.torch_backend`).
* ``triton`` - fused Triton kernels (:mod:`dadf_fast.kernels.triton`): CUDA tensors, and CPU
  tensors only under ``TRITON_INTERPRET=1`` (Triton's exact but slow interpreter).
* ``cpp``    - the compiled extension ``dadf_fast._C`` (:mod:`dadf_fast.kernels.cpp.capabilities`):
  CPU kernels, CUDA kernels when it was built with CUDA.

Nothing falls back silently: an op asked for a backend that cannot run it raises
:class:`BackendUnavailable` with the reason that :func:`backends` reports.
"""
from __future__ import annotations

from dadf_fast.kernels.cpp.capabilities import BACKEND as CPP
from dadf_fast.kernels.spec import SOFT_PERMUTATION, Backend, BackendUnavailable, Call, Limit, OpSupport
from dadf_fast.kernels.torch_backend import BACKEND as TORCH
from dadf_fast.kernels.triton import BACKEND as TRITON

DECLARATIONS: dict[str, Backend] = {b.name: b for b in (TORCH, TRITON, CPP)}
BACKEND_NAMES = tuple(DECLARATIONS)
# every op, in the order the torch backend (which implements them all) declares them
OP_NAMES = tuple(s.op for s in TORCH.ops)

SOFT_PERMUTATION_REASON = SOFT_PERMUTATION.sentence


def declaration(backend: str) -> Backend:
    """The declarations of ``backend``; a ValueError names the known backends otherwise."""
    try:
        return DECLARATIONS[backend]
    except (KeyError, TypeError):
        raise ValueError(f"backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}") from None


def backend_reason(backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run on ``device_type`` tensors on this machine (None when it can)."""
    return declaration(backend).device_reason(device_type)


def backends() -> dict:
    """Availability of every backend on every device type, with the reason when not.

    Returns ``{backend: {"cpu": {"available": bool, "reason": str}, "cuda": {...},
    "ops": [op names it implements], "limitations": [what it never runs]}}``, generated from
    the same declarations the dispatcher asks.
    """
    report = {}
    for name, decl in DECLARATIONS.items():
        entry = {}
        for dev in ("cpu", "cuda"):
            reason = decl.device_reason(dev)
            entry[dev] = {"available": reason is None, "reason": reason or "available"}
        entry["ops"] = [s.op for s in decl.ops]
        entry["limitations"] = decl.limitations()
        report[name] = entry
    return report


def limitations_markdown() -> str:
    """The limitations of every backend as a Markdown list (for the docs), from the same
    declarations as :func:`backends`."""
    lines = []
    for name, decl in DECLARATIONS.items():
        lines.append(f"- `{name}`:" + ("" if decl.limitations() else " none"))
        lines.extend(f"  - {sentence}" for sentence in decl.limitations())
    return "\n".join(lines)


__all__ = ["BACKEND_NAMES", "OP_NAMES", "DECLARATIONS", "SOFT_PERMUTATION_REASON", "BackendUnavailable",
           "Backend", "Call", "Limit", "OpSupport", "backends", "backend_reason", "declaration", "limitations_markdown"]
