"""The index of a kNN memory bank that the C++ nearest-neighbour search prunes with
(``torch.ops.dadf_fast.nearest_index_bounded``, csrc/cpu/nearest_index.cpp, which explains the bound).

The index of ``memory [M, D]`` is its mean, the orthonormal basis ``P [D, k]`` of its ``k``
leading principal directions and every row's augmented coordinates ``[P^T c, |c - P P^T c|]``
(``c`` the centred row) with their squared norms.  Built in float64 (the bound's safety margin
assumes an orthonormal basis and accurate residual norms), stored in the memory's dtype, and
cached per memory tensor: a model's memory bank is built once per ``fit`` / ``calibrate`` and
searched at every inference.  The cache holds a weak reference to the tensor's storage and its version
counter, so a new bank or an in-place change of the old one builds a new index.

``k`` (:data:`PROJECTION_DIMS`): on the pretrained lite0 embeddings (152 dims) of coins,
screw and fabric, 32 leading directions hold 88-94 % of the variance and leave 90-530 rows
per query (of 40960) to check exactly; 48 leave 20-230 but make the bounding GEMM 1.5x
longer (measured 2026-12-02; the 32-direction counts are in docs/benchmarks.md).
"""
from __future__ import annotations

import collections
import threading
import weakref

import torch

PROJECTION_DIMS = 32
_CACHE_SIZE = 4
_cache: collections.OrderedDict = collections.OrderedDict()
_lock = threading.Lock()


def build_index(memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(mean [D], basis [D, k], bound_t [k + 1, M], sqnorm [M])`` of ``memory [M, D]``,
    in ``memory``'s dtype; ``k = min(PROJECTION_DIMS, D)``."""
    m64 = memory.detach().double()
    mean = m64.mean(0)
    centred = m64 - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    k = min(PROJECTION_DIMS, memory.shape[1])
    basis = vectors[:, -k:].flip(1).contiguous()
    proj = centred @ basis
    resid = (centred - proj @ basis.T).square().sum(1).sqrt()
    bound_t = torch.cat((proj, resid[:, None]), dim=1).T.contiguous()
    sqnorm = proj.square().sum(1) + resid.square()
    dtype = memory.dtype
    return mean.to(dtype), basis.to(dtype), bound_t.to(dtype), sqnorm.to(dtype)


def _key(memory: torch.Tensor):
    if memory.is_inference():
        return None  # no version counter: an in-place change could not be seen
    # the storage's address and the view on it; its version counter (shared by views and
    # detached aliases, bumped by every in-place write)
    return (memory.untyped_storage().data_ptr(), memory.storage_offset(), tuple(memory.shape), memory.stride(),
            memory.dtype, memory.device, memory._version)


def memory_index(memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`build_index` of ``memory``, from the cache when the same view of the same storage
    (held by a weak reference: a new storage at a freed one's address is not a hit), unchanged
    since, was indexed before."""
    key = _key(memory)
    if key is None:
        return build_index(memory)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0]() is memory.untyped_storage():
            _cache.move_to_end(key)
            return hit[1]
    index = build_index(memory)
    with _lock:
        _cache[key] = (weakref.ref(memory.untyped_storage()), index)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return index


def clear_cache() -> None:
    with _lock:
        _cache.clear()
