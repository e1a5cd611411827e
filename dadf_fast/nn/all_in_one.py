"""FrEIA 0.2's ``AllInOneBlock``, a drop-in whose coupling runs on :func:`dadf_fast.ops.affine_coupling`.

Same constructor, call, parameter names and function as ``FrEIA.modules.AllInOneBlock`` (and
anomalib's vendored copy of it), so it goes into FrEIA's ``SequenceINN`` / ``GraphINN``, loads
their state dicts, and theirs load its state dict.  Options the fused op computes (hard
permutation, any global affine activation, conditions, ``reverse_permutation``) run on it;
the others (GIN, soft or learned householder mixing) run FrEIA's computation in plain torch
(:func:`dadf_fast.nn.coupling.torch_coupling`), never a different function.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

from dadf_fast.kernels.registry import BACKEND_NAMES, BackendUnavailable
from dadf_fast.nn.coupling import (GLOBAL_AFFINE_TYPES, fused_coupling, global_affine_activation,
                                   global_affine_raw_init, hard_permutation_index, permutation_matrix,
                                   random_rotation, torch_coupling)

# where FrEIA 0.2's block lives (and anomalib's copy of it, same semantics): from_freia converts
# only blocks whose methods come from these modules, unmodified
KNOWN_SOURCES = ("FrEIA.modules.all_in_one_block", "anomalib.models.components.flow.all_in_one_block")
_FREIA_METHODS = ("forward", "_permute", "_pre_permute", "_affine", "_construct_householder_permutation")
_FREIA_ATTRIBUTES = ("dims_in", "dims_c", "in_channels", "splits", "clamp", "GIN", "reverse_pre_permute",
                     "householder", "input_rank", "conditional", "condition_channels", "global_scale",
                     "global_offset", "subnet", "global_scale_activation")


class _ExistingSubnet:
    """A ``subnet_constructor`` that returns a module built elsewhere (used by ``from_freia``)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, c_in: int, c_out: int) -> nn.Module:
        return self.module


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"AllInOneBlock: {name} must be a bool, got {value!r}")
    return value


def _shape(name: str, dims) -> tuple[int, ...]:
    if not isinstance(dims, (tuple, list, torch.Size)) or not dims or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(f"AllInOneBlock: {name} must hold shapes (C, *spatial) of positive ints, got {dims!r}")
    return tuple(dims)


def _check_dims(dims_in, dims_c):
    if not isinstance(dims_in, (list, tuple)) or len(dims_in) != 1:
        raise ValueError(f"AllInOneBlock: dims_in must be a list of one shape [(C, *spatial)], got {dims_in!r}")
    shape = _shape("dims_in", dims_in[0])
    if len(shape) > 4:
        raise ValueError(f"AllInOneBlock: dims_in: data must be 1-D to 4-D (C plus 0-3 spatial dims), got {shape}")
    dims_c = [] if dims_c is None else dims_c
    if not isinstance(dims_c, (list, tuple)):
        raise ValueError(f"AllInOneBlock: dims_c must be a list of condition shapes, got {dims_c!r}")
    conds = [_shape("dims_c", d) for d in dims_c]
    for d in conds:
        if d[1:] != shape[1:]:
            raise ValueError(f"AllInOneBlock: dims_c: a condition's spatial dims must equal the input's: "
                             f"{d} vs dims_in {shape}")
    return [shape], conds


def activation_kind(fn) -> str | None:
    """Which of FrEIA 0.2's global affine activations ``fn`` computes (probed on a few values:
    FrEIA holds it as a lambda, anomalib as a module function), None when none of them."""
    probe = torch.tensor([-30.0, -3.0, -0.5, 0.0, 0.7, 2.0, 5.0, 30.0], dtype=torch.float64)
    try:
        with torch.no_grad():
            out = fn(probe)
    except Exception:  # an activation that cannot even run on a tensor is simply not one of them
        return None
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        return None
    for kind in GLOBAL_AFFINE_TYPES:
        if torch.allclose(out.double(), global_affine_activation(probe, kind), rtol=1e-12, atol=0.0):
            return kind
    return None


class AllInOneBlock(nn.Module):
    """FrEIA 0.2's ``AllInOneBlock``: affine coupling (soft-clamped by ``affine_clamping``),
    global affine ("ActNorm") and channel permutation, optionally GIN, learned householder
    reflections, ``reverse_permutation`` (Putzky et al.), conditions.

    Args (FrEIA's, with its defaults; see FrEIA's docs for the maths):
        dims_in: ``[(C, *spatial)]``, 0 to 3 spatial dims (``[N, C]`` ... ``[N, C, D, H, W]``).
        dims_c: condition shapes ``[(C_k, *spatial)]``, concatenated to the subnet's input.
        subnet_constructor: ``f(C - C//2 + sum C_k, 2*(C//2)) -> nn.Module`` (required).
        affine_clamping, gin_block, global_affine_init,
        global_affine_type (``"SOFTPLUS"``, ``"SIGMOID"`` or ``"EXP"``), permute_soft,
        learned_householder_permutation (number of reflections), reverse_permutation.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cpp"`` for the fused op (keyword
            only).  Options the op does not compute (:meth:`torch_only_reason`) run plain torch:
            under ``"auto"`` / ``"torch"``; an explicit fused backend raises naming the option.

    Call: ``block([x], c=[...], rev=False, jac=True) -> ((y,), log_jac_det [N])``, ``x`` and
    ``y`` ``[N, C, *spatial]``; ``rev=True`` inverts and returns minus the log-det.  Like
    FrEIA's block it always returns the log-det (``jac`` is accepted for the protocol).

    Parameters carry FrEIA's names and shapes (``global_scale``, ``global_offset``,
    ``w_perm``/``w_perm_inv`` or, with householder reflections, ``vk_householder``/``w_0``,
    ``subnet.*``).  A hard permutation is also kept as index buffers ``perm``/``perm_inv`` (not
    in the state dict), derived once whenever ``w_perm``/``w_perm_inv`` are set, loaded or
    written in place (tracked by tensor identity and version counter; writes through
    ``.data`` bypass the counter); a mixing that is not an exact 0/1 permutation (soft, or a
    loaded one) runs FrEIA's dense mixing.
    """

    def __init__(self, dims_in, dims_c=[], subnet_constructor=None, affine_clamping: float = 2.0,
                 gin_block: bool = False, global_affine_init: float = 1.0, global_affine_type: str = "SOFTPLUS",
                 permute_soft: bool = False, learned_householder_permutation: int = 0,
                 reverse_permutation: bool = False, *, backend: str = "auto"):
        super().__init__()
        self.dims_in, self.dims_c = _check_dims(dims_in, dims_c)
        channels = self.dims_in[0][0]
        self.input_rank = len(self.dims_in[0]) - 1
        self.sum_dims = tuple(range(1, 2 + self.input_rank))
        self.conditional = bool(self.dims_c)
        self.condition_channels = sum(d[0] for d in self.dims_c)
        self.splits = [channels - channels // 2, channels // 2]
        self.in_channels = channels
        if isinstance(affine_clamping, bool) or not isinstance(affine_clamping, (int, float)) \
                or not math.isfinite(affine_clamping):
            raise ValueError(f"AllInOneBlock: affine_clamping must be a finite number, got {affine_clamping!r}")
        self.clamp = float(affine_clamping)
        self.GIN = _flag("gin_block", gin_block)
        self.reverse_pre_permute = _flag("reverse_permutation", reverse_permutation)
        permute_soft = _flag("permute_soft", permute_soft)
        k = learned_householder_permutation
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"AllInOneBlock: learned_householder_permutation must be an int >= 0, got {k!r}")
        self.householder = k
        if global_affine_type not in GLOBAL_AFFINE_TYPES:
            raise ValueError(f"AllInOneBlock: global_affine_type must be one of {GLOBAL_AFFINE_TYPES}, "
                             f"got {global_affine_type!r}")
        self.global_affine_type = global_affine_type
        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ValueError(f"AllInOneBlock: backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")
        self.backend = backend
        if subnet_constructor is None:
            raise ValueError("AllInOneBlock: subnet_constructor is required: f(channels_in, channels_out) -> nn.Module")
        if permute_soft and channels > 512:
            warnings.warn(f"AllInOneBlock: drawing a soft permutation of {channels} channels is slow", stacklevel=2)

        ones = [1] * self.input_rank
        raw = global_affine_raw_init(global_affine_type, global_affine_init)
        self.global_scale = nn.Parameter(torch.full((1, channels, *ones), raw))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, *ones))
        w = random_rotation(channels) if permute_soft else permutation_matrix(torch.randperm(channels))
        if k:
            # the mixing is w_0 times k learned reflections, rebuilt every call (as in FrEIA)
            self.vk_householder = nn.Parameter(0.2 * torch.randn(k, channels))
            self.w_perm = None
            self.w_perm_inv = None
            self.w_0 = nn.Parameter(w, requires_grad=False)
        else:
            self.w_perm = nn.Parameter(w.reshape(channels, channels, *ones).clone(), requires_grad=False)
            self.w_perm_inv = nn.Parameter(w.t().reshape(channels, channels, *ones).clone(), requires_grad=False)
        self.subnet = subnet_constructor(self.splits[0] + self.condition_channels, 2 * self.splits[1])
        self.last_jac = None
        self.register_buffer("perm", torch.arange(channels), persistent=False)
        self.register_buffer("perm_inv", torch.arange(channels), persistent=False)
        self._perm_key = None
        self._hard = False
        self._global_cache = None
        self._sync_permutation()
        self._check_backend_options()

    # -- the permutation, derived when set or loaded -----------------------------------------

    def _mixing_key(self):
        if self.householder:
            return None
        # inference tensors keep no version counter (and cannot be written outside inference mode)
        w, w_inv = self.w_perm, self.w_perm_inv
        return (id(w), -1 if w.is_inference() else w._version, id(w_inv), -1 if w_inv.is_inference() else w_inv._version)

    def _sync_permutation(self) -> None:
        """Derive ``perm``/``perm_inv`` from ``w_perm``/``w_perm_inv`` (once per change)."""
        self._perm_key = self._mixing_key()
        idx = None
        if not self.householder:
            idx = hard_permutation_index(self.w_perm)
            c = self.in_channels
            if idx is not None and not torch.equal(self.w_perm_inv.detach().reshape(c, c).cpu(),
                                                   self.w_perm.detach().reshape(c, c).cpu().t()):
                idx = None
        self._hard = idx is not None
        if idx is None:
            idx = torch.arange(self.in_channels)
        device = self.perm.device if self.householder else self.w_perm.device
        self.perm = idx.to(device)
        self.perm_inv = torch.argsort(idx).to(device)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._sync_permutation()

    def householder_matrix(self) -> torch.Tensor:
        """The learned mixing ``w_0 @ R_1 @ ... @ R_k`` (``R_i``: reflection through
        ``vk_householder[i]``), ``[C, C]``."""
        w = self.w_0
        eye = torch.eye(self.in_channels, dtype=w.dtype, device=w.device)
        for v in self.vk_householder:
            w = torch.mm(w, eye - 2 * torch.outer(v, v) / torch.dot(v, v))
        return w

    def _fusable(self) -> bool:
        """Whether the fused op computes this block (after :meth:`_sync_permutation`);
        :meth:`torch_only_reason` says why not."""
        return self._hard and not self.GIN and not self.householder and self.in_channels >= 2 and self.clamp > 0

    def torch_only_reason(self) -> str | None:
        """Why this block runs FrEIA's computation in plain torch rather than the fused op
        (None when it runs the op)."""
        if self._mixing_key() != self._perm_key:
            self._sync_permutation()
        if self._fusable():
            return None
        reasons = []
        if self.GIN:
            reasons.append("gin_block=True (GIN centres each sample's log-scales; the fused op does not)")
        if self.householder:
            reasons.append(f"learned_householder_permutation={self.householder} (a learned dense channel mixing)")
        elif not self._hard:
            reasons.append("a soft permutation (w_perm is not a 0/1 permutation matrix with w_perm_inv its transpose)")
        if self.in_channels < 2:
            reasons.append("one channel (nothing to couple)")
        if not self.clamp > 0:
            reasons.append(f"affine_clamping={self.clamp} (the fused op takes a clamp > 0)")
        return "; ".join(reasons) or None

    def _check_backend_options(self) -> None:
        if self.backend in ("auto", "torch"):
            return
        reason = self.torch_only_reason()
        if reason is not None:
            raise BackendUnavailable(f"AllInOneBlock: backend {self.backend!r} cannot run this block: {reason} "
                                     "runs plain torch (backend='auto' or 'torch')")

    # -- the call -------------------------------------------------------------------------------

    def global_scale_activation(self, a: torch.Tensor) -> torch.Tensor:
        """The activated global scale of the raw ``a`` (FrEIA's attribute of the same name)."""
        return global_affine_activation(a, self.global_affine_type)

    def _check_call(self, x, c, rev):
        if isinstance(x, torch.Tensor) or not isinstance(x, (list, tuple)) or len(x) != 1 \
                or not isinstance(x[0], torch.Tensor):
            raise TypeError("AllInOneBlock: x must be a list or tuple of one tensor (FrEIA's convention: "
                            f"block([x])), got {type(x).__name__}")
        x0 = x[0]
        if x0.dim() != 2 + self.input_rank or x0.shape[1] != self.in_channels:
            raise ValueError(f"AllInOneBlock: x[0] must be [N, {self.in_channels}] plus {self.input_rank} spatial "
                             f"dims (dims_in={self.dims_in}), got {tuple(x0.shape)}")
        if not isinstance(rev, (bool, int)):
            raise TypeError(f"AllInOneBlock: rev must be a bool, got {rev!r}")
        c = () if c is None else c
        if isinstance(c, torch.Tensor) or not isinstance(c, (list, tuple)):
            raise TypeError(f"AllInOneBlock: c must be a list of condition tensors, got {type(c).__name__}")
        if not self.conditional:
            if len(c):
                raise ValueError(f"AllInOneBlock: c: this block was built without conditions (dims_c=[]), "
                                 f"got {len(c)} condition tensor(s)")
            return x0, ()
        for t in c:
            if not isinstance(t, torch.Tensor) or t.dim() != x0.dim() or t.shape[0] != x0.shape[0] \
                    or t.shape[2:] != x0.shape[2:]:
                raise ValueError(f"AllInOneBlock: c: each condition must be [N, C_k, *spatial] like x[0] "
                                 f"{tuple(x0.shape)}, got {getattr(t, 'shape', type(t).__name__)}")
        got = sum(t.shape[1] for t in c)
        if got != self.condition_channels:
            raise ValueError(f"AllInOneBlock: c: the conditions must have {self.condition_channels} channels in all "
                             f"(dims_c={self.dims_c}), got {got}")
        return x0, tuple(c)

    def _global_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g, b)``, ``[C]`` each: the activated global scale and the offset, as the fused op
        takes them.  Where no gradient is recorded they are kept between calls while both
        parameters are the same tensors at the same version (an in-place write, a reload or
        ``.to()`` recomputes them; as for the permutation, a write through ``.data`` is not
        seen): on CFLOW's thousands of 64-row calls the activation costs as much as the
        coupling kernel."""
        s, o = self.global_scale, self.global_offset
        if (torch.is_grad_enabled() and (s.requires_grad or o.requires_grad)) or torch.compiler.is_compiling():
            return self.global_scale_activation(s).reshape(self.in_channels), o.reshape(self.in_channels)
        if s.is_inference() or o.is_inference():  # no version counter to key on
            key = None
        else:
            key = (s._version, o._version, s.data_ptr(), o.data_ptr(), s.dtype, o.dtype, s.device, o.device)
        hit = self._global_cache
        if key is not None and hit is not None and hit[0] is s and hit[1] is o and hit[2] == key:
            return hit[3], hit[4]
        with torch.no_grad():
            g = self.global_scale_activation(s).reshape(self.in_channels)
            b = o.detach().reshape(self.in_channels)
        self._global_cache = None if key is None else (s, o, key, g, b)
        return g, b

    def forward(self, x, c=[], rev=False, jac=True):
        x0, cond = self._check_call(x, c, rev)
        rev = bool(rev)
        if self._mixing_key() != self._perm_key:
            self._sync_permutation()
        if self._fusable():
            g, b = self._global_affine()
            if self.reverse_pre_permute and not rev:
                x0 = x0.index_select(1, self.perm_inv)  # FrEIA's pre-permutation: w_perm_inv
            y, logdet = fused_coupling(x0, cond, self.subnet, g, b, self.perm, self.perm_inv, self.clamp, rev,
                                       self.backend)
            if self.reverse_pre_permute and rev:
                y = y.index_select(1, self.perm)
            return (y,), logdet
        if self.backend not in ("auto", "torch"):
            self._check_backend_options()
        if self.householder:
            w = self.householder_matrix()
            w, w_inv = w, w.t()
        elif self._hard:
            w, w_inv = self.perm, self.perm_inv
        else:
            w, w_inv = self.w_perm, self.w_perm_inv
        scale = None if self.GIN else self.global_scale_activation(self.global_scale)
        y, logdet = torch_coupling(x0, cond, self.subnet, scale, self.global_offset, w, w_inv, self.clamp, rev,
                                   gin=self.GIN, pre_permute=self.reverse_pre_permute)
        return (y,), logdet

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_global_cache"] = None  # derived (and keyed by storage addresses): not pickled
        return state

    def output_dims(self, input_dims):
        return input_dims

    def extra_repr(self) -> str:
        return (f"dims_in={self.dims_in}, dims_c={self.dims_c}, affine_clamping={self.clamp}, gin_block={self.GIN}, "
                f"global_affine_type={self.global_affine_type!r}, householder={self.householder}, "
                f"reverse_permutation={self.reverse_pre_permute}, backend={self.backend!r}")

    # -- conversion from FrEIA / anomalib blocks --------------------------------------------------

    @staticmethod
    def unsupported_reason(block, backend: str = "auto") -> str | None:
        """Why ``block`` cannot become a fast block of the same function (None when it can).

        Convertible: FrEIA 0.2's ``AllInOneBlock`` or anomalib's copy of it (methods unmodified,
        from :data:`KNOWN_SOURCES`), every option.  With an explicit fused ``backend`` a block
        whose options run plain torch (GIN, householder, soft permutation) is refused too."""
        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ValueError(f"AllInOneBlock.unsupported_reason: backend must be one of {('auto',) + BACKEND_NAMES}, "
                             f"got {backend!r}")
        if isinstance(block, AllInOneBlock):
            return "already a dadf_fast.nn.AllInOneBlock"
        if not isinstance(block, nn.Module):
            return f"not an nn.Module ({type(block).__name__})"
        cls = type(block)
        for name in _FREIA_METHODS:
            fn = getattr(cls, name, None)
            if getattr(fn, "__module__", None) not in KNOWN_SOURCES or \
                    getattr(fn, "__qualname__", None) != f"AllInOneBlock.{name}":
                return (f"{cls.__module__}.{cls.__qualname__}.{name} is not FrEIA 0.2's or anomalib's "
                        "AllInOneBlock method (unknown or overridden: its function is not known)")
        if cls.forward.__module__.startswith("FrEIA."):
            from importlib.metadata import PackageNotFoundError, version

            try:
                v = version("FrEIA")
            except PackageNotFoundError:
                v = None
            if v is not None and not v.startswith("0.2"):
                return f"FrEIA {v} is installed; only FrEIA 0.2's AllInOneBlock semantics are known"
        for name in _FREIA_ATTRIBUTES:
            if not hasattr(block, name):
                return f"no attribute {name!r} (not a FrEIA 0.2 AllInOneBlock)"
        if activation_kind(block.global_scale_activation) is None:
            return "its global_scale_activation is none of FrEIA 0.2's SOFTPLUS / SIGMOID / EXP"
        names = ("vk_householder", "w_0") if block.householder else ("w_perm", "w_perm_inv")
        for name in ("global_scale", "global_offset", *names):
            if not isinstance(getattr(block, name, None), nn.Parameter):
                return f"its {name} is not an nn.Parameter"
        try:
            _check_dims(block.dims_in, block.dims_c)
        except ValueError as exc:
            return str(exc)
        clamp = block.clamp
        if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not math.isfinite(clamp):
            return f"its clamp is not a finite number ({clamp!r})"
        if backend not in ("auto", "torch"):
            reasons = []
            if block.GIN:
                reasons.append("gin_block=True")
            if block.householder:
                reasons.append(f"learned_householder_permutation={block.householder}")
            elif hard_permutation_index(block.w_perm) is None:
                reasons.append("a soft permutation")
            if reasons:
                return f"backend {backend!r} cannot run {', '.join(reasons)} (plain torch only: use 'auto' or 'torch')"
        return None

    @classmethod
    def from_freia(cls, block, backend: str = "auto") -> "AllInOneBlock":
        """The fast block computing what ``block`` (FrEIA 0.2's or anomalib's ``AllInOneBlock``)
        computes, with the same weights.

        The new block *shares* ``block``'s subnet module and parameter tensors (no copy): an
        optimizer built over the original model keeps training the converted one, and
        replacing blocks in place costs no memory.  Deep-copy ``block`` first for an
        independent block.  Raises ValueError with :meth:`unsupported_reason` when it cannot.
        """
        reason = cls.unsupported_reason(block, backend)
        if reason is not None:
            raise ValueError(f"AllInOneBlock.from_freia: cannot convert {type(block).__name__}: {reason}")
        # the throw-away initial weights must not advance the caller's random streams
        with torch.random.fork_rng(devices=[]):
            new = cls(block.dims_in, block.dims_c, _ExistingSubnet(block.subnet), affine_clamping=float(block.clamp),
                      gin_block=bool(block.GIN), global_affine_type=activation_kind(block.global_scale_activation),
                      learned_householder_permutation=int(block.householder),
                      reverse_permutation=bool(block.reverse_pre_permute), backend="auto")
        names = ("vk_householder", "w_0") if block.householder else ("w_perm", "w_perm_inv")
        for name in ("global_scale", "global_offset", *names):
            setattr(new, name, getattr(block, name))
        new.backend = backend
        new._sync_permutation()
        new._check_backend_options()
        new.train(block.training)
        return new


__all__ = ["AllInOneBlock", "KNOWN_SOURCES", "activation_kind"]
