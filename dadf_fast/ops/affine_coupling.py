"""Public op: one affine coupling step (coupling + global affine + hard permutation)."""
from __future__ import annotations

import weakref

import torch

from dadf_fast.ops._checks import check_flag, check_float, check_number, check_same
from dadf_fast.ops._dispatch import Op
from dadf_fast.utils.precision import autocast_off

OP = Op("affine_coupling")


def as_permutation(perm, channels: int, device: torch.device) -> torch.Tensor:
    """``perm`` as an int64 ``[channels]`` tensor on ``device``; raise unless it is a
    permutation of ``0..channels-1``.

    A list/tuple/range of Python ints is converted (on ``device``); a tensor must already be
    int64 and on ``device`` (no hidden copies between devices)."""
    if isinstance(perm, (list, tuple, range)):
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in perm):
            raise TypeError("affine_coupling: perm given as a sequence must hold Python ints, got "
                            f"{[type(p).__name__ for p in perm]}")
        perm = torch.tensor(list(perm), dtype=torch.int64, device=device)
    elif not isinstance(perm, torch.Tensor):
        raise TypeError(f"affine_coupling: perm must be an int64 tensor or a sequence of ints, got {type(perm).__name__}")
    check_permutation(perm, channels)
    if perm.device != device:
        raise ValueError(f"affine_coupling: perm is on {perm.device} but x is on {device}")
    return perm


# Verdicts of the CPU sort-check, so that a module calling the op with the same perm buffer
# every step checks it once: id(perm) -> (weakref to perm, _version, data_ptr, channels).
# The weakref's callback drops the entry with the tensor (a later tensor may reuse the id;
# the weakref identity test rules that out meanwhile).  An in-place write bumps _version
# (views share their base's counter), and a copy or a reloaded tensor has another data_ptr,
# so both are checked again (writes that bypass the version counter, through ``.data`` or a
# NumPy view, are not seen; the C++ kernels check perm again on every call).  A dict keyed by
# id, not a WeakKeyDictionary: that one compares keys with ``==``, elementwise on tensors.
_CHECKED: dict[int, tuple] = {}


def _verdict_key(perm: torch.Tensor, channels: int):
    if perm.is_inference():  # inference tensors have no version counter: check every call
        return None
    return perm._version, perm.data_ptr(), channels


def _already_checked(perm: torch.Tensor, channels: int) -> bool:
    entry = _CHECKED.get(id(perm))
    if entry is None or entry[0]() is not perm:
        return False
    key = _verdict_key(perm, channels)
    return key is not None and entry[1:] == key


def _remember_checked(perm: torch.Tensor, channels: int) -> None:
    key = _verdict_key(perm, channels)
    if key is None:
        return
    ident = id(perm)
    ref = weakref.ref(perm, lambda _, ident=ident: _CHECKED.pop(ident, None))
    _CHECKED[ident] = (ref, *key)


def check_permutation(perm: torch.Tensor, channels: int) -> None:
    """Raise unless ``perm`` is an int64 ``[channels]`` permutation of ``0..channels-1``.

    The values are sort-checked on CPU once per unchanged tensor (see ``_CHECKED``)."""
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.int64:
        raise TypeError(f"perm must be an int64 tensor, got {getattr(perm, 'dtype', type(perm).__name__)}")
    if perm.shape != (channels,):
        raise ValueError(f"perm must have shape [{channels}], got {tuple(perm.shape)}")
    # on GPU this check would cost a host sync per call (the kernels guard their loads
    # instead); under torch.compile it is data-dependent
    if perm.device.type == "cpu" and not torch.compiler.is_compiling():
        if _already_checked(perm, channels):
            return
        if not torch.equal(torch.sort(perm).values, torch.arange(channels)):
            raise ValueError("perm must be a permutation of 0..C-1 (each channel exactly once)")
        _remember_checked(perm, channels)


def _check_args(x, a, g, b, perm, clamp, a_scale, reverse, compute_logdet):
    """Validate a call of :func:`affine_coupling`; returns ``(perm as a tensor, clamp, a_scale)``."""
    check_float("x", x)
    if x.dim() not in (2, 4):
        raise ValueError(f"affine_coupling: x must be 4-D [B, C, H, W] or 2-D [N, C], got shape {tuple(x.shape)}")
    bsz, c = x.shape[:2]
    if c < 2:
        raise ValueError(f"affine_coupling: x needs at least 2 channels to split, got C={c}")
    for n, t in (("a", a), ("g", g), ("b", b)):
        check_float(n, t)
        check_same(n, t, "x", x)
    want = (bsz, 2 * (c // 2), *x.shape[2:])
    if tuple(a.shape) != want:
        raise ValueError(f"affine_coupling: a must have shape {list(want)} (2*(C//2) channels), got {tuple(a.shape)}")
    for n, t in (("g", g), ("b", b)):
        if tuple(t.shape) != (c,):
            raise ValueError(f"affine_coupling: {n} must have shape [{c}], got {tuple(t.shape)}")
    perm = as_permutation(perm, c, x.device)
    # log g enters the log-det, so g must be > 0 (NaN fails this too).  Checked on CPU only:
    # on GPU the check would cost a host sync per step, and a bad g shows as a NaN log-det.
    if g.device.type == "cpu" and not torch.compiler.is_compiling() and not bool((g > 0).all()):
        bad = int(torch.nonzero(~(g > 0))[0, 0])
        raise ValueError(f"affine_coupling: g (the activated global scale) must be > 0 in every channel, "
                         f"got g[{bad}] = {float(g[bad])}")
    clamp = check_number("affine_coupling", "clamp", clamp, positive=True)
    a_scale = check_number("affine_coupling", "a_scale", a_scale)
    check_flag("affine_coupling", "reverse", reverse)
    check_flag("affine_coupling", "compute_logdet", compute_logdet)
    return perm, clamp, a_scale


def affine_coupling(x, a, g, b, perm, clamp=2.0, a_scale=0.1, reverse=False, backend="auto",
                    compute_logdet: bool = True, validate_args: bool = True):
    """Affine coupling step with FrEIA ``AllInOneBlock`` semantics
    (see :func:`dadf_fast.reference.affine_coupling`).

    Non-finite values: the permutation is a pure gather, so an inf/NaN in ``x`` stays in
    the one output element it is permuted to (and whatever the coupling makes of it there);
    it never spreads over the other channels of its pixel (FrEIA's dense 0/1 convolution
    would make them NaN through ``0 * inf``).  The log-det depends on ``a`` and ``g`` only.
    Every backend follows this, forward and reverse.

    Two layouts: images ``x [B, C, H, W]`` (log-det summed over channels and pixels) and 1-D
    fibres ``x [N, C]`` (CFLOW's flows; log-det summed over the channels of each row, the
    same function as the ``[N, C, 1, 1]`` view).  The Triton kernels and the CUDA kernel of
    the cpp backend take 4-D inputs only (declared limits: ``auto`` passes 2-D inputs on to
    the next backend, an explicit request raises naming the limit).

    Args:
        x: ``[B, C, H, W]`` or ``[N, C]`` (C >= 2).  a: raw subnet output, ``[B, 2*(C//2),
            H, W]`` or ``[N, 2*(C//2)]``.
        g, b: ``[C]`` activated global scale (> 0; checked on CPU) and offset.
        perm: ``[C]`` int64 tensor on x's device, or a list/tuple of ints; a permutation
            of ``0..C-1`` (checked on CPU; on GPU a bad entry yields NaN, never a bad read).
        clamp: finite number > 0.  a_scale: finite number.  reverse: bool.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cpp"``.
        compute_logdet: when False (inference: scoring needs only ``y``) the log-det is not
            returned (``None``); a backend declaring the ``compute_logdet`` option (cpp)
            then skips its reduction, the others compute it and drop it.
        validate_args: False skips the checks of values a caller fixed once and validated
            then (as ``torch.distributions`` does): the devices of ``a``/``g``/``b``, ``perm``
            being a permutation, ``g > 0``, the numbers and flags.  For modules that
            call the op thousands of times per forward on small inputs (CFLOW's 64-row fibre
            chunks), where these checks cost as much as the kernel.  The layout and the shape
            and dtype of ``a`` (what a user's subnet returns) are still checked; the cpp kernels check
            ``perm`` again and the Triton kernels guard its reads, so a bad value never
            reads out of bounds.
    Returns:
        ``(y, logdet)``: y of x's shape, logdet ``[B]`` (``[N]``); or ``(y, None)`` with
        ``compute_logdet=False``.
    """
    if validate_args is False:
        shape = x.shape
        if len(shape) not in (2, 4) or a.shape != (shape[0], 2 * (shape[1] // 2), *shape[2:]) \
                or not a.dtype == g.dtype == b.dtype == x.dtype:
            _check_args(x, a, g, b, perm, clamp, a_scale, reverse, compute_logdet)  # raises the precise error
    else:
        check_flag("affine_coupling", "validate_args", validate_args)
        perm, clamp, a_scale = _check_args(x, a, g, b, perm, clamp, a_scale, reverse, compute_logdet)
    # perm is an index vector here: the gather kernels' permutation; ndim: 4-D-only limits
    device = x.device
    _, impl, options = OP.select(backend, device, x.dtype, permutation="hard", ndim=x.dim())
    if compute_logdet and not torch.is_autocast_enabled(device.type):
        return impl(x, a, g, b, perm, clamp, a_scale, reverse)  # the common call, without a context
    with autocast_off(device):
        if compute_logdet:
            return impl(x, a, g, b, perm, clamp, a_scale, reverse)
        if "compute_logdet" in options:
            return impl(x, a, g, b, perm, clamp, a_scale, reverse, compute_logdet=False)
        y, _ = impl(x, a, g, b, perm, clamp, a_scale, reverse)
    return y, None
