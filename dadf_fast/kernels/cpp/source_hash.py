"""Hash of the C++/CUDA sources: the first part of the JIT build's cache key, and the
``SOURCE_HASH`` compiled into the extension."""
from __future__ import annotations

import hashlib
import os

_ROOT = os.path.dirname(os.path.abspath(__file__))  # dadf_fast/kernels/cpp, holding csrc/


def source_hash(root: str | None = None) -> str | None:
    """sha256 over ``csrc/`` (paths and contents), or None when there is no source tree."""
    csrc = os.path.join(root or _ROOT, "csrc")
    if not os.path.isdir(csrc):
        return None
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(csrc):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.endswith((".cpp", ".h", ".cu", ".cuh")):
                continue
            path = os.path.join(dirpath, fn)
            h.update(os.path.relpath(path, csrc).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]
