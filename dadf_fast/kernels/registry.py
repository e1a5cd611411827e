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


def backend_reason(backend: str, device_type: str) -> str | None:
    if backend == "torch":
        if device_type == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device is visible"
        return None
    if backend == "triton":
        from dadf_fast.kernels import triton

        return triton.unavailable_reason(device_type)
    if backend == "cpp":
        from dadf_fast.kernels import cpp

        return cpp.unavailable_reason(device_type)
    raise ValueError(f"backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")


def backends() -> dict:
    """Availability of every backend on every device type, with the reason when not.

    Returns ``{backend: {"cpu": {"available": bool, "reason": str}, "cuda": {...},
    "ops": [op names it implements], "limitations": [what it never runs]}}``.
    """
    from dadf_fast.ops import OPS

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
