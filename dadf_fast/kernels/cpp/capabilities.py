"""What the ``cpp`` backend (the extension ``dadf_fast._C``) runs: declared here, once.

The C++ kernels check their inputs again with ``TORCH_CHECK`` because ``torch.ops.dadf_fast.*``
can be called directly; these declarations are what the dispatcher and
``dadf_fast.backends()`` read.
"""
from __future__ import annotations

import torch

from dadf_fast.kernels.spec import SOFT_PERMUTATION, Backend, Limit, OpSupport, dtype_limit

# the CUDA kernels dispatch over every floating type; the CPU kernels only over the two
# whose vectorised math they implement
CPU_DTYPES = dtype_limit("the C++ CPU kernels take float32 and float64 only",
                         {"cpu": (torch.float32, torch.float64)})

# the CPU kernel has a fibre layout for x [N, C] (csrc/cpu/coupling_fibres.h); the CUDA kernel
# maps one block to one (sample, channel) row of H*W pixels, which for fibres would be a
# block per element, so 2-D inputs are declared, not run slowly
CUDA_4D_ONLY = Limit("affine_coupling on CUDA: 4-D [B, C, H, W] inputs only (2-D [N, C] fibres run on the CPU "
                     "kernel, or the torch backend on CUDA)",
                     ("device", "ndim"), lambda call: call.device == "cuda" and call.get("ndim") != 4)


# the pruned search is a CPU algorithm (its scan is branchy, per row); on CUDA the reference's
# blocked GEMM is what a GPU is good at
CPU_ONLY_SEARCH = Limit("nearest_distances: CPU tensors only (the reference's blocked GEMM runs on CUDA)",
                        ("device",), lambda call: call.device != "cpu")


def unavailable_reason(device_type: str) -> str | None:
    """Why the extension cannot run on ``device_type`` tensors here (None when it can)."""
    from dadf_fast.kernels import cpp

    return cpp.unavailable_reason(device_type)


BACKEND = Backend(
    name="cpp",
    devices=("cpu", "cuda"),
    availability=unavailable_reason,
    ops=(
        OpSupport("affine_coupling", "dadf_fast.kernels.cpp.ops:affine_coupling",
                  limits=(SOFT_PERMUTATION, CPU_DTYPES, CUDA_4D_ONLY), options=("compute_logdet",)),
        OpSupport("flow_nll", "dadf_fast.kernels.cpp.ops:flow_nll", limits=(CPU_DTYPES,)),
        OpSupport("multiscale_score", "dadf_fast.kernels.cpp.ops:multiscale_score", limits=(CPU_DTYPES,)),
        OpSupport("nearest_distances", "dadf_fast.kernels.cpp.ops:nearest_distances",
                  limits=(CPU_DTYPES, CPU_ONLY_SEARCH)),
    ),
)
