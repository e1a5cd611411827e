"""Public functional ops: input validation and backend dispatch.

Every op takes ``backend="auto" | "torch" | "triton" | "cpp"`` and computes the function of
its reference in :mod:`dadf_fast.reference`.  Which backend can run which call is declared
by the backends themselves (:mod:`dadf_fast.kernels`); see :func:`dadf_fast.backends`.
"""
from dadf_fast.ops import affine_coupling as _ac
from dadf_fast.ops import dual_attention as _da
from dadf_fast.ops import flow_nll as _fn
from dadf_fast.ops import multiscale_score as _ms
from dadf_fast.ops import nearest_distances as _nd
from dadf_fast.ops.affine_coupling import affine_coupling
from dadf_fast.ops.dual_attention import dual_attention
from dadf_fast.ops.flow_nll import flow_nll
from dadf_fast.ops.multiscale_score import multiscale_score
from dadf_fast.ops.nearest_distances import nearest_distances

OPS = (_da.OP, _ac.OP, _fn.OP, _ms.OP, _nd.OP)
_BY_NAME = {op.name: op for op in OPS}


def _op(op_name: str):
    try:
        return _BY_NAME[op_name]
    except (KeyError, TypeError):
        raise ValueError(f"op must be one of {tuple(_BY_NAME)}, got {op_name!r}") from None


def clear_backend_cache() -> None:
    """Forget cached backend resolutions (after changing the environment in tests)."""
    for op in OPS:
        op._cache.clear()


def module_backend(op_name: str, backend: str) -> str:
    """The backend a *module* configured with ``backend`` asks op ``op_name`` for.

    Modules take one backend for all their ops; an op that backend does not implement
    (e.g. ``dual_attention`` under ``"cpp"``, ``flow_nll`` under ``"triton"``) runs on
    ``"auto"`` instead, while an op it does implement must run on it (or raise).
    """
    op = _op(op_name)
    return backend if backend in ("auto", "torch") or backend in op.backends else "auto"


def selected_backend(op_name: str, backend: str, device, dtype, **sizes) -> str:
    """The backend name ``backend`` resolves to for op ``op_name`` on ``device``/``dtype``
    tensors; raises :class:`dadf_fast.BackendUnavailable` (with the reasons) when it cannot run.

    ``sizes`` are the attributes the backends' limits read, e.g. ``head_dim=180`` for
    ``dual_attention``; without them the answer holds for inputs within every size limit.
    """
    return _op(op_name).select(backend, device, dtype, **sizes).backend


__all__ = ["dual_attention", "affine_coupling", "flow_nll", "multiscale_score", "nearest_distances", "OPS", "selected_backend",
           "module_backend", "clear_backend_cache"]
