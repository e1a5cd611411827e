#!/usr/bin/env bash
# Compile and link the C++/CUDA extension with the CUDA kernels (csrc/cuda/*.cu) through the
# package's own JIT builder (dadf_fast/kernels/cpp/build.py) into a temporary cache directory,
# then check that the result loads and registers CPU and CUDA kernels for every op.  Runs on
# machines without a GPU (nothing is executed on a device).  Exits non-zero when a source
# stops compiling or linking.
#
#   .ci/compile_cuda.sh                # CUDA_HOME=/usr/local/cuda, TORCH_CUDA_ARCH_LIST=9.0
#   KEEP_BUILD=1 .ci/compile_cuda.sh   # keep the build directory (printed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export DADF_FAST_CUDA=1
export MAX_JOBS="${MAX_JOBS:-2}"
export PATH="$CUDA_HOME/bin:$PATH"
unset DADF_FAST_NO_EXT

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
    echo "compile_cuda: nvcc not found at $CUDA_HOME/bin/nvcc" >&2
    exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dadf_fast_cuda.XXXXXX")"
if [ "${KEEP_BUILD:-0}" = "0" ]; then
    trap 'rm -rf "$WORK"' EXIT
fi
export DADF_FAST_EXT_DIR="$WORK"
echo "compile_cuda: nvcc $("$CUDA_HOME/bin/nvcc" --version | tail -1), arch list $TORCH_CUDA_ARCH_LIST, build in $WORK"

start=$(date +%s)
# Build and load in one interpreter, then check it was built with CUDA, from these sources,
# into $WORK, and registers a CPU and a CUDA kernel for every op.
if ! python - "$WORK" <<'PY'
import os
import sys

import torch

from dadf_fast.kernels.cpp import load_extension
from dadf_fast.kernels.cpp.source_hash import source_hash

work = sys.argv[1]
mod, reason = load_extension()
if mod is None:
    sys.exit(f"compile_cuda: FAILED: {reason}")
assert os.path.realpath(mod.__file__).startswith(os.path.realpath(work)), f"loaded {mod.__file__}, not a build in {work}"
assert getattr(mod, "WITH_CUDA", False) is True, "built without DADF_FAST_WITH_CUDA"
assert mod.SOURCE_HASH == source_hash(), f"SOURCE_HASH {mod.SOURCE_HASH} != csrc/ hash {source_hash()}"
ops = ["affine_coupling_fwd", "affine_coupling_bwd", "flow_nll_fwd", "flow_nll_bwd", "multiscale_score"]
missing = [op for op in ops
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dadf_fast::{op}", "CUDA")
           or not torch._C._dispatch_has_kernel_for_dispatch_key(f"dadf_fast::{op}", "CPU")]
assert not missing, f"no CUDA/CPU kernel registered for {missing}"
print(f"compile_cuda: OK: {mod.__file__} loads, SOURCE_HASH={mod.SOURCE_HASH}, "
      f"CPU and CUDA kernels registered for {len(ops)} ops")
PY
then
    for log in "$WORK"/*/build.log; do
        [ -f "$log" ] && { grep -E -B2 -A6 "error" "$log" | head -80 >&2 || true; tail -40 "$log" >&2; }
    done
    echo "compile_cuda: FAILED (see above)" >&2
    exit 1
fi
echo "compile_cuda: compiled, linked and checked in $(( $(date +%s) - start )) s"
