"""Public op: distance of each query row to its nearest memory row (the kNN cue's search)."""
from __future__ import annotations

from dadf_fast.ops._checks import check_float, check_same
from dadf_fast.ops._dispatch import Op
from dadf_fast.utils.precision import autocast_off

OP = Op("nearest_distances")


def nearest_distances(queries, memory, backend="auto"):
    """Euclidean distance of each row of ``queries`` to its nearest row of ``memory`` (exact;
    see :func:`dadf_fast.reference.nearest_distances`).

    Args:
        queries: ``[Q, D]``.  memory: ``[M, D]`` with ``M >= 1``, same D, dtype and device.
        backend: ``"auto"``, ``"torch"`` or ``"cpp"`` (CPU: an exact search that prunes
            most rows with a lower bound from the memory's principal directions, indexed
            once per memory tensor; ``csrc/cpu/nearest_index.cpp``).
    Returns:
        ``[Q]`` (differentiable in both inputs).
    """
    check_float("queries", queries)
    check_float("memory", memory)
    check_same("memory", memory, "queries", queries)
    for name, t, rows in (("queries", queries, "Q"), ("memory", memory, "M")):
        if t.dim() != 2:
            raise ValueError(f"nearest_distances: {name} must be 2-D [{rows}, D], got shape {tuple(t.shape)}")
    if queries.shape[1] != memory.shape[1]:
        raise ValueError(f"nearest_distances: memory has {memory.shape[1]} features per row but queries have "
                         f"{queries.shape[1]}; both must be [*, D] with the same D")
    if memory.shape[0] == 0:
        raise ValueError("nearest_distances: memory is empty (shape "
                         f"{tuple(memory.shape)}); the kNN memory bank is filled by fit() or calibrate()")
    if queries.shape[1] == 0:
        raise ValueError(f"nearest_distances: D (the rows' length) must be >= 1, got queries of shape "
                         f"{tuple(queries.shape)} and memory of shape {tuple(memory.shape)}")
    impl = OP.select(backend, queries.device, queries.dtype).impl
    with autocast_off(queries.device):
        return impl(queries, memory)
