"""Fused dual attention in Triton: self-attention and memorial attention in one launch.

A DADF dual block computes two attentions that share the input keys ``Kx``::

    Ox = softmax(Qx Kx^T * scale) Vx        (self-attention, input stream "x")
    Om = softmax(Qm Kx^T * scale) Vm        (memorial attention, memory stream "m")

The reference (:func:`dadf_fast.reference.dual_attention`) materialises two N x N score
matrices per head and reads ``Kx`` twice.  The kernels here are FlashAttention-style:
scores live only in registers, a numerically safe *online* softmax rescales the running
output as new key tiles arrive, and every ``Kx`` tile that is brought on chip serves
*both* query streams before the next one is loaded.

Kernel family (all take ``[B, H, N, D]`` tensors with arbitrary strides, so the strided
q/k/v views of a ``[B, N, 3, H, D]`` projection are read in place, never copied):

* ``_dual_attn_fwd_kernel``     grid (query blocks, B*H).  Saves Ox, Om and the per-row
  log-sum-exp of both streams (``lse``, float32 ``[2, B, H, N]``), nothing else.
* ``_dual_attn_bwd_delta_kernel``  delta = rowsum(dO * O) per stream (float32).
* ``_dual_attn_bwd_dkdv_kernel`` grid (key blocks, B*H).  One program owns a key block:
  it loads its Kx tile once, sweeps the query blocks of the x stream (accumulating dVx and
  dKx), stores dVx, then sweeps the m stream (accumulating dVm and *continuing* the same
  dKx accumulator: Kx gets gradient from both attentions), stores dVm and dKx.  No
  atomics: every output element is written by exactly one program (deterministic).
* ``_dual_attn_bwd_dq_kernel``   grid (query blocks, B*H).  One program owns a query
  block of both streams and sweeps the key blocks; each Kx tile is loaded once and used
  for dQx and dQm.  Again no atomics.

Probabilities are recomputed in backward from Q, K and the saved lse (P = exp(S - lse)),
so memory is O(N) per head beyond the inputs and outputs.

Precision decisions
-------------------
* Every dot product accumulates in float32 (``tl.dot`` with a float32 accumulator), the
  softmax statistics (running max, running sum, lse, delta) are float32.  Summing 180
  products in a 16-bit accumulator would round at every step (11 significant bits for
  float16, 8 for bfloat16), and exp() turns an absolute error of a score into a relative
  error of its probability; the rescaling of the running output by exp(m_old - m_new)
  across key tiles also needs float32 to stay exact enough.
* The operands of the two "probability" matmuls (P @ V in forward, P^T @ dO and
  dS^T @ Q / dS @ K in backward) are cast back to the input dtype so that they run on
  tensor cores; this is what FlashAttention does, and it costs one rounding of values in
  [0, 1] (relative error 2^-11 for float16, 2^-8 for bfloat16) before a float32 sum.
* The softmax runs in base 2: scores are multiplied by ``scale * log2(e)`` once and
  ``exp2`` is used (the hardware instruction); the saved lse is therefore the base-2
  log-sum-exp of the scaled scores (an internal quantity, only the backward reads it).
* float32 inputs use IEEE float32 dots (``input_precision="ieee"``) unless the user has
  allowed TF32 for matmuls (``torch.backends.cuda.matmul.allow_tf32``), mirroring what
  ``torch.matmul`` would do for the reference.

Head dimension, padding and masking
-----------------------------------
``tl.dot`` needs power-of-two tile sizes of at least 16.  The head dimension D (any value
up to 256) is covered by at most two power-of-two column chunks ``BLOCK_DA + BLOCK_DB``:
``BLOCK_DA`` is the largest power of two <= D and ``BLOCK_DB`` the next power of two >= the
rest.  For the paper preset D = 180 this is 128 + 64 = 192 columns instead of a single
256-wide tile, i.e. 6.7 % padding instead of 42 % (the extra columns are pure wasted
tensor-core work; the 64-wide chunk holds columns 128..179 and masks the last 12).  When a
single padded power of two is no wider (D = 20 -> 32, D = 16 -> 16), one chunk is used.
Padded columns are loaded as 0 through a column mask (so they add 0 to every Q.K dot
product) and are never stored; padded rows (N not a multiple of the block) are
loaded as 0, masked to -inf in the scores (keys) or to 0 in the probabilities (queries),
and never stored.  Masks are compile-time switched off when D or N fit exactly.

Block sizes (GPU)
-----------------
There is no autotuning (it would make the first call slow and the choice opaque); the
heuristic table in :func:`_gpu_config` picks block sizes from the padded head dim so that
the float32 accumulators stay in registers.  The live state per program is roughly:

* forward: two float32 accumulators ``[BLOCK_M, Dp]`` + two Q tiles (one per stream);
* dK/dV:   float32 dK and dV ``[BLOCK_N, Dp]`` + K and V tiles (one stream at a time);
* dQ:      float32 dQx, dQm ``[BLOCK_M, Dp]`` + Qx, Qm, dOx, dOm tiles.

With Dp = 192 a 64 x 192 float32 accumulator alone is 48 KiB, so the large head dims use
64-row resident blocks with 8 warps (~96 registers/thread for both accumulators) and
narrower 32-row streamed tiles; small head dims use 4 warps.  float32 inputs (IEEE dots on
CUDA cores) use 16 x 16 blocks.  Under the interpreter (CPU) 32 x 32 blocks are used, so
that tiny test shapes still cross several query and key blocks.  ``_CONFIG_OVERRIDE`` lets
tests and ``benchmarks/attention.py --tune`` try other block sizes.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from dadf_fast.kernels.triton import MAX_HEAD_DIM
from dadf_fast.kernels.triton.common import INTERPRET, device_guard, next_power_of_2, require

LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------- helpers
@triton.jit
def _load_tile(base, rows, cols, s_row, s_col, N, HEAD_DIM: tl.constexpr,
               MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """Load a ``[len(rows), len(cols)]`` tile of a (head-offset) ``[N, HEAD_DIM]`` matrix,
    zero outside (padded rows/columns); masks are compile-time optional."""
    ptrs = base + rows[:, None] * s_row + cols[None, :] * s_col
    if MASK_ROWS:
        if MASK_COLS:
            t = tl.load(ptrs, mask=(rows[:, None] < N) & (cols[None, :] < HEAD_DIM), other=0.0)
        else:
            t = tl.load(ptrs, mask=rows[:, None] < N, other=0.0)
    else:
        if MASK_COLS:
            t = tl.load(ptrs, mask=cols[None, :] < HEAD_DIM, other=0.0)
        else:
            t = tl.load(ptrs)
    return t


@triton.jit
def _store_tile(base, val, rows, cols, s_row, s_col, N, HEAD_DIM: tl.constexpr,
                MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    ptrs = base + rows[:, None] * s_row + cols[None, :] * s_col
    val = val.to(base.dtype.element_ty)
    if MASK_ROWS:
        if MASK_COLS:
            tl.store(ptrs, val, mask=(rows[:, None] < N) & (cols[None, :] < HEAD_DIM))
        else:
            tl.store(ptrs, val, mask=rows[:, None] < N)
    else:
        if MASK_COLS:
            tl.store(ptrs, val, mask=cols[None, :] < HEAD_DIM)
        else:
            tl.store(ptrs, val)


@triton.jit
def _load_rows(ptr, rows, N, MASK_ROWS: tl.constexpr):
    """Load a float32 per-row statistic (lse or delta); 0 for padded rows."""
    if MASK_ROWS:
        v = tl.load(ptr + rows, mask=rows < N, other=0.0)
    else:
        v = tl.load(ptr + rows)
    return v


# --------------------------------------------------------------------------- forward
@triton.jit
def _online_softmax_step(s, m_i, l_i):
    """One online-softmax update for a ``[BLOCK_M, BLOCK_N]`` tile of base-2 scaled scores.

    Returns the unnormalised probabilities, the factor rescaling the previous accumulator,
    and the new running max / running sum.  The first tile has ``m_i = -inf``; its
    ``alpha = exp2(-inf) = 0`` multiplies a zero accumulator.  Every real row sees at least
    one unmasked key in every tile it visits (N >= 1 and masked keys are only at the end),
    so ``m_new`` is finite."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_new = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_new


@triton.jit
def _dual_attn_fwd_kernel(
    QX, KX, VX, QM, VM, OX, OM, LSE,
    s_qx_b, s_qx_h, s_qx_n, s_qx_d,
    s_kx_b, s_kx_h, s_kx_n, s_kx_d,
    s_vx_b, s_vx_h, s_vx_n, s_vx_d,
    s_qm_b, s_qm_h, s_qm_n, s_qm_d,
    s_vm_b, s_vm_h, s_vm_n, s_vm_d,
    s_ox_b, s_ox_h, s_ox_n, s_ox_d,
    s_om_b, s_om_h, s_om_n, s_om_d,
    BH, H, N, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    MASK_DA: tl.constexpr, MASK_DB: tl.constexpr, MASK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # 64-bit head offsets: B*H*N*D can exceed 2^31 elements for big batches.
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    qx_base = QX + b * s_qx_b + h * s_qx_h
    kx_base = KX + b * s_kx_b + h * s_kx_h
    vx_base = VX + b * s_vx_b + h * s_vx_h
    qm_base = QM + b * s_qm_b + h * s_qm_h
    vm_base = VM + b * s_vm_b + h * s_vm_h

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_da = tl.arange(0, BLOCK_DA)

    # Query tiles of both streams stay resident for the whole key sweep.
    qxa = _load_tile(qx_base, offs_m, offs_da, s_qx_n, s_qx_d, N, HEAD_DIM, MASK_N, MASK_DA)
    qma = _load_tile(qm_base, offs_m, offs_da, s_qm_n, s_qm_d, N, HEAD_DIM, MASK_N, MASK_DA)
    acc_xa = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
    acc_ma = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
    if BLOCK_DB > 0:
        offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
        qxb = _load_tile(qx_base, offs_m, offs_db, s_qx_n, s_qx_d, N, HEAD_DIM, MASK_N, MASK_DB)
        qmb = _load_tile(qm_base, offs_m, offs_db, s_qm_n, s_qm_d, N, HEAD_DIM, MASK_N, MASK_DB)
        acc_xb = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
        acc_mb = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)

    m_x = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    m_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_x = tl.zeros([BLOCK_M], dtype=tl.float32)
    l_m = tl.zeros([BLOCK_M], dtype=tl.float32)

    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + offs_n0
        # One Kx tile, two score tiles: the point of the fusion.
        ka = _load_tile(kx_base, offs_n, offs_da, s_kx_n, s_kx_d, N, HEAD_DIM, MASK_N, MASK_DA)
        kaT = tl.trans(ka)
        s_x = tl.dot(qxa, kaT, input_precision=PRECISION)
        s_m = tl.dot(qma, kaT, input_precision=PRECISION)
        if BLOCK_DB > 0:
            kb = _load_tile(kx_base, offs_n, offs_db, s_kx_n, s_kx_d, N, HEAD_DIM, MASK_N, MASK_DB)
            kbT = tl.trans(kb)
            s_x = tl.dot(qxb, kbT, s_x, input_precision=PRECISION)
            s_m = tl.dot(qmb, kbT, s_m, input_precision=PRECISION)
        s_x = s_x * qk_scale
        s_m = s_m * qk_scale
        if MASK_N:
            key_ok = (offs_n < N)[None, :]
            s_x = tl.where(key_ok, s_x, float("-inf"))
            s_m = tl.where(key_ok, s_m, float("-inf"))

        # ---- x stream: softmax(Qx Kx^T) Vx
        p_x, alpha_x, m_x, l_x = _online_softmax_step(s_x, m_x, l_x)
        vxa = _load_tile(vx_base, offs_n, offs_da, s_vx_n, s_vx_d, N, HEAD_DIM, MASK_N, MASK_DA)
        acc_xa = tl.dot(p_x.to(vxa.dtype), vxa, acc_xa * alpha_x[:, None], input_precision=PRECISION)
        if BLOCK_DB > 0:
            vxb = _load_tile(vx_base, offs_n, offs_db, s_vx_n, s_vx_d, N, HEAD_DIM, MASK_N, MASK_DB)
            acc_xb = tl.dot(p_x.to(vxb.dtype), vxb, acc_xb * alpha_x[:, None], input_precision=PRECISION)

        # ---- m stream: softmax(Qm Kx^T) Vm
        p_m, alpha_m, m_m, l_m = _online_softmax_step(s_m, m_m, l_m)
        vma = _load_tile(vm_base, offs_n, offs_da, s_vm_n, s_vm_d, N, HEAD_DIM, MASK_N, MASK_DA)
        acc_ma = tl.dot(p_m.to(vma.dtype), vma, acc_ma * alpha_m[:, None], input_precision=PRECISION)
        if BLOCK_DB > 0:
            vmb = _load_tile(vm_base, offs_n, offs_db, s_vm_n, s_vm_d, N, HEAD_DIM, MASK_N, MASK_DB)
            acc_mb = tl.dot(p_m.to(vmb.dtype), vmb, acc_mb * alpha_m[:, None], input_precision=PRECISION)

    # Normalise once at the end (one division per output element instead of per tile).
    inv_x = 1.0 / l_x
    inv_m = 1.0 / l_m
    ox_base = OX + b * s_ox_b + h * s_ox_h
    om_base = OM + b * s_om_b + h * s_om_h
    _store_tile(ox_base, acc_xa * inv_x[:, None], offs_m, offs_da, s_ox_n, s_ox_d, N, HEAD_DIM, MASK_N, MASK_DA)
    _store_tile(om_base, acc_ma * inv_m[:, None], offs_m, offs_da, s_om_n, s_om_d, N, HEAD_DIM, MASK_N, MASK_DA)
    if BLOCK_DB > 0:
        _store_tile(ox_base, acc_xb * inv_x[:, None], offs_m, offs_db, s_ox_n, s_ox_d, N, HEAD_DIM, MASK_N, MASK_DB)
        _store_tile(om_base, acc_mb * inv_m[:, None], offs_m, offs_db, s_om_n, s_om_d, N, HEAD_DIM, MASK_N, MASK_DB)

    # lse is [2, B, H, N] float32 contiguous: stream x at [0], stream m at [1].
    lse_x = LSE + pid_bh.to(tl.int64) * N
    lse_m = LSE + (BH + pid_bh).to(tl.int64) * N
    row_ok = offs_m < N
    tl.store(lse_x + offs_m, m_x + tl.log2(l_x), mask=row_ok)
    tl.store(lse_m + offs_m, m_m + tl.log2(l_m), mask=row_ok)


# --------------------------------------------------------------------------- backward
@triton.jit
def _dual_attn_bwd_delta_kernel(
    OX, DOX, OM, DOM, DELTA,
    s_ox_b, s_ox_h, s_ox_n, s_ox_d,
    s_dox_b, s_dox_h, s_dox_n, s_dox_d,
    s_om_b, s_om_h, s_om_n, s_om_d,
    s_dom_b, s_dom_h, s_dom_n, s_dom_d,
    BH, H, N,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta[s, b, h, i] = sum_d dO_s[i, d] * O_s[i, d] in float32 (the softmax-backward
    row term: dS = P * (dP - delta)).  Elementwise, so one padded power-of-two chunk."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ox = _load_tile(OX + b * s_ox_b + h * s_ox_h, offs_m, offs_d, s_ox_n, s_ox_d, N, HEAD_DIM, True, True)
    dox = _load_tile(DOX + b * s_dox_b + h * s_dox_h, offs_m, offs_d, s_dox_n, s_dox_d, N, HEAD_DIM, True, True)
    om = _load_tile(OM + b * s_om_b + h * s_om_h, offs_m, offs_d, s_om_n, s_om_d, N, HEAD_DIM, True, True)
    dom = _load_tile(DOM + b * s_dom_b + h * s_dom_h, offs_m, offs_d, s_dom_n, s_dom_d, N, HEAD_DIM, True, True)
    dx = tl.sum(ox.to(tl.float32) * dox.to(tl.float32), 1)
    dm = tl.sum(om.to(tl.float32) * dom.to(tl.float32), 1)
    row_ok = offs_m < N
    tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_m, dx, mask=row_ok)
    tl.store(DELTA + (BH + pid_bh).to(tl.int64) * N + offs_m, dm, mask=row_ok)


@triton.jit
def _dkdv_stream(
    dka, dkb, ka, kb, va, vb, offs_n,
    q_base, s_q_n, s_q_d, do_base, s_do_n, s_do_d, lse_ptr, delta_ptr,
    N, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    MASK_DA: tl.constexpr, MASK_DB: tl.constexpr, MASK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Sweep all query blocks of one stream for a fixed key block (transposed formulation:
    the key block is the M side of every dot, so the K/V tiles are reused from registers).

        P^T  = exp2(K Q^T * qk_scale - lse)          [BLOCK_N, BLOCK_M]
        dV  += P^T dO
        dP^T = V dO^T
        dS^T = P^T * (dP^T - delta)
        dK  += dS^T Q                                 (times scale, applied by the caller)

    Returns the updated dK chunks and this stream's dV chunks (chunk b is a placeholder
    when BLOCK_DB == 0)."""
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_da = tl.arange(0, BLOCK_DA)
    dva = tl.zeros([BLOCK_N, BLOCK_DA], dtype=tl.float32)
    dvb = dva
    if BLOCK_DB > 0:
        offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
        dvb = tl.zeros([BLOCK_N, BLOCK_DB], dtype=tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + offs_m0
        qa = _load_tile(q_base, offs_m, offs_da, s_q_n, s_q_d, N, HEAD_DIM, MASK_N, MASK_DA)
        doa = _load_tile(do_base, offs_m, offs_da, s_do_n, s_do_d, N, HEAD_DIM, MASK_N, MASK_DA)
        lse = _load_rows(lse_ptr, offs_m, N, MASK_N)
        delta = _load_rows(delta_ptr, offs_m, N, MASK_N)
        sT = tl.dot(ka, tl.trans(qa), input_precision=PRECISION)
        if BLOCK_DB > 0:
            qb = _load_tile(q_base, offs_m, offs_db, s_q_n, s_q_d, N, HEAD_DIM, MASK_N, MASK_DB)
            dob = _load_tile(do_base, offs_m, offs_db, s_do_n, s_do_d, N, HEAD_DIM, MASK_N, MASK_DB)
            sT = tl.dot(kb, tl.trans(qb), sT, input_precision=PRECISION)
        pT = tl.exp2(sT * qk_scale - lse[None, :])
        if MASK_N:
            pT = tl.where((offs_m < N)[None, :], pT, 0.0)
        dva = tl.dot(pT.to(doa.dtype), doa, dva, input_precision=PRECISION)
        dpT = tl.dot(va, tl.trans(doa), input_precision=PRECISION)
        if BLOCK_DB > 0:
            dvb = tl.dot(pT.to(dob.dtype), dob, dvb, input_precision=PRECISION)
            dpT = tl.dot(vb, tl.trans(dob), dpT, input_precision=PRECISION)
        dsT = (pT * (dpT - delta[None, :])).to(qa.dtype)
        dka = tl.dot(dsT, qa, dka, input_precision=PRECISION)
        if BLOCK_DB > 0:
            dkb = tl.dot(dsT, qb, dkb, input_precision=PRECISION)
    return dka, dkb, dva, dvb


@triton.jit
def _dual_attn_bwd_dkdv_kernel(
    QX, KX, VX, QM, VM, DOX, DOM, LSE, DELTA, DKX, DVX, DVM,
    s_qx_b, s_qx_h, s_qx_n, s_qx_d,
    s_kx_b, s_kx_h, s_kx_n, s_kx_d,
    s_vx_b, s_vx_h, s_vx_n, s_vx_d,
    s_qm_b, s_qm_h, s_qm_n, s_qm_d,
    s_vm_b, s_vm_h, s_vm_n, s_vm_d,
    s_dox_b, s_dox_h, s_dox_n, s_dox_d,
    s_dom_b, s_dom_h, s_dom_n, s_dom_d,
    s_dk_b, s_dk_h, s_dk_n, s_dk_d,
    s_dvx_b, s_dvx_h, s_dvx_n, s_dvx_d,
    s_dvm_b, s_dvm_h, s_dvm_n, s_dvm_d,
    BH, H, N, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    MASK_DA: tl.constexpr, MASK_DB: tl.constexpr, MASK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_da = tl.arange(0, BLOCK_DA)
    kx_base = KX + b * s_kx_b + h * s_kx_h
    vx_base = VX + b * s_vx_b + h * s_vx_h
    vm_base = VM + b * s_vm_b + h * s_vm_h
    dvx_base = DVX + b * s_dvx_b + h * s_dvx_h
    dvm_base = DVM + b * s_dvm_b + h * s_dvm_h
    dk_base = DKX + b * s_dk_b + h * s_dk_h
    lse_x = LSE + pid_bh.to(tl.int64) * N
    lse_m = LSE + (BH + pid_bh).to(tl.int64) * N
    delta_x = DELTA + pid_bh.to(tl.int64) * N
    delta_m = DELTA + (BH + pid_bh).to(tl.int64) * N

    # The Kx tile is loaded once and serves both streams' sweeps.
    ka = _load_tile(kx_base, offs_n, offs_da, s_kx_n, s_kx_d, N, HEAD_DIM, MASK_N, MASK_DA)
    dka = tl.zeros([BLOCK_N, BLOCK_DA], dtype=tl.float32)
    kb = ka  # placeholders, only used when BLOCK_DB > 0
    dkb = dka
    if BLOCK_DB > 0:
        offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
        kb = _load_tile(kx_base, offs_n, offs_db, s_kx_n, s_kx_d, N, HEAD_DIM, MASK_N, MASK_DB)
        dkb = tl.zeros([BLOCK_N, BLOCK_DB], dtype=tl.float32)

    # ---- x stream: dVx, and the self-attention part of dKx.  Only one stream's V tile and
    # dV accumulator are live at a time, which keeps register pressure at the level of a
    # single attention's backward.
    vxa = _load_tile(vx_base, offs_n, offs_da, s_vx_n, s_vx_d, N, HEAD_DIM, MASK_N, MASK_DA)
    vxb = vxa
    if BLOCK_DB > 0:
        vxb = _load_tile(vx_base, offs_n, offs_db, s_vx_n, s_vx_d, N, HEAD_DIM, MASK_N, MASK_DB)
    dka, dkb, dva, dvb = _dkdv_stream(
        dka, dkb, ka, kb, vxa, vxb, offs_n,
        QX + b * s_qx_b + h * s_qx_h, s_qx_n, s_qx_d,
        DOX + b * s_dox_b + h * s_dox_h, s_dox_n, s_dox_d, lse_x, delta_x,
        N, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, MASK_DA, MASK_DB, MASK_N, PRECISION)
    _store_tile(dvx_base, dva, offs_n, offs_da, s_dvx_n, s_dvx_d, N, HEAD_DIM, MASK_N, MASK_DA)
    if BLOCK_DB > 0:
        _store_tile(dvx_base, dvb, offs_n, offs_db, s_dvx_n, s_dvx_d, N, HEAD_DIM, MASK_N, MASK_DB)

    # ---- m stream: dVm, and the memorial-attention part of dKx (same accumulator).
    vma = _load_tile(vm_base, offs_n, offs_da, s_vm_n, s_vm_d, N, HEAD_DIM, MASK_N, MASK_DA)
    vmb = vma
    if BLOCK_DB > 0:
        vmb = _load_tile(vm_base, offs_n, offs_db, s_vm_n, s_vm_d, N, HEAD_DIM, MASK_N, MASK_DB)
    dka, dkb, dva, dvb = _dkdv_stream(
        dka, dkb, ka, kb, vma, vmb, offs_n,
        QM + b * s_qm_b + h * s_qm_h, s_qm_n, s_qm_d,
        DOM + b * s_dom_b + h * s_dom_h, s_dom_n, s_dom_d, lse_m, delta_m,
        N, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, MASK_DA, MASK_DB, MASK_N, PRECISION)
    _store_tile(dvm_base, dva, offs_n, offs_da, s_dvm_n, s_dvm_d, N, HEAD_DIM, MASK_N, MASK_DA)
    _store_tile(dk_base, dka * sm_scale, offs_n, offs_da, s_dk_n, s_dk_d, N, HEAD_DIM, MASK_N, MASK_DA)
    if BLOCK_DB > 0:
        _store_tile(dvm_base, dvb, offs_n, offs_db, s_dvm_n, s_dvm_d, N, HEAD_DIM, MASK_N, MASK_DB)
        _store_tile(dk_base, dkb * sm_scale, offs_n, offs_db, s_dk_n, s_dk_d, N, HEAD_DIM, MASK_N, MASK_DB)


@triton.jit
def _dq_step(dqa, dqb, qa, qb, doa, dob, lse, delta, ka, kb, v_base, s_v_n, s_v_d, offs_n,
             N, qk_scale,
             HEAD_DIM: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
             MASK_DA: tl.constexpr, MASK_DB: tl.constexpr, MASK_N: tl.constexpr,
             PRECISION: tl.constexpr):
    """dQ contribution of one key tile for one stream:
    P = exp2(Q K^T * qk_scale - lse), dP = dO V^T, dS = P * (dP - delta), dQ += dS K."""
    offs_da = tl.arange(0, BLOCK_DA)
    s = tl.dot(qa, tl.trans(ka), input_precision=PRECISION)
    va = _load_tile(v_base, offs_n, offs_da, s_v_n, s_v_d, N, HEAD_DIM, MASK_N, MASK_DA)
    dp = tl.dot(doa, tl.trans(va), input_precision=PRECISION)
    if BLOCK_DB > 0:
        offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
        s = tl.dot(qb, tl.trans(kb), s, input_precision=PRECISION)
        vb = _load_tile(v_base, offs_n, offs_db, s_v_n, s_v_d, N, HEAD_DIM, MASK_N, MASK_DB)
        dp = tl.dot(dob, tl.trans(vb), dp, input_precision=PRECISION)
    p = tl.exp2(s * qk_scale - lse[:, None])
    if MASK_N:
        p = tl.where((offs_n < N)[None, :], p, 0.0)
    ds = (p * (dp - delta[:, None])).to(ka.dtype)
    dqa = tl.dot(ds, ka, dqa, input_precision=PRECISION)
    if BLOCK_DB > 0:
        dqb = tl.dot(ds, kb, dqb, input_precision=PRECISION)
    return dqa, dqb


@triton.jit
def _dual_attn_bwd_dq_kernel(
    QX, KX, VX, QM, VM, DOX, DOM, LSE, DELTA, DQX, DQM,
    s_qx_b, s_qx_h, s_qx_n, s_qx_d,
    s_kx_b, s_kx_h, s_kx_n, s_kx_d,
    s_vx_b, s_vx_h, s_vx_n, s_vx_d,
    s_qm_b, s_qm_h, s_qm_n, s_qm_d,
    s_vm_b, s_vm_h, s_vm_n, s_vm_d,
    s_dox_b, s_dox_h, s_dox_n, s_dox_d,
    s_dom_b, s_dom_h, s_dom_n, s_dom_d,
    s_dqx_b, s_dqx_h, s_dqx_n, s_dqx_d,
    s_dqm_b, s_dqm_h, s_dqm_n, s_dqm_d,
    BH, H, N, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    MASK_DA: tl.constexpr, MASK_DB: tl.constexpr, MASK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_da = tl.arange(0, BLOCK_DA)
    qx_base = QX + b * s_qx_b + h * s_qx_h
    qm_base = QM + b * s_qm_b + h * s_qm_h
    dox_base = DOX + b * s_dox_b + h * s_dox_h
    dom_base = DOM + b * s_dom_b + h * s_dom_h
    kx_base = KX + b * s_kx_b + h * s_kx_h
    vx_base = VX + b * s_vx_b + h * s_vx_h
    vm_base = VM + b * s_vm_b + h * s_vm_h

    qxa = _load_tile(qx_base, offs_m, offs_da, s_qx_n, s_qx_d, N, HEAD_DIM, MASK_N, MASK_DA)
    qma = _load_tile(qm_base, offs_m, offs_da, s_qm_n, s_qm_d, N, HEAD_DIM, MASK_N, MASK_DA)
    doxa = _load_tile(dox_base, offs_m, offs_da, s_dox_n, s_dox_d, N, HEAD_DIM, MASK_N, MASK_DA)
    doma = _load_tile(dom_base, offs_m, offs_da, s_dom_n, s_dom_d, N, HEAD_DIM, MASK_N, MASK_DA)
    dqxa = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
    dqma = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
    qxb = qxa  # placeholders, only used when BLOCK_DB > 0
    qmb = qma
    doxb = doxa
    domb = doma
    dqxb = dqxa
    dqmb = dqma
    if BLOCK_DB > 0:
        offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
        qxb = _load_tile(qx_base, offs_m, offs_db, s_qx_n, s_qx_d, N, HEAD_DIM, MASK_N, MASK_DB)
        qmb = _load_tile(qm_base, offs_m, offs_db, s_qm_n, s_qm_d, N, HEAD_DIM, MASK_N, MASK_DB)
        doxb = _load_tile(dox_base, offs_m, offs_db, s_dox_n, s_dox_d, N, HEAD_DIM, MASK_N, MASK_DB)
        domb = _load_tile(dom_base, offs_m, offs_db, s_dom_n, s_dom_d, N, HEAD_DIM, MASK_N, MASK_DB)
        dqxb = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
        dqmb = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
    lse_x = _load_rows(LSE + pid_bh.to(tl.int64) * N, offs_m, N, MASK_N)
    lse_m = _load_rows(LSE + (BH + pid_bh).to(tl.int64) * N, offs_m, N, MASK_N)
    delta_x = _load_rows(DELTA + pid_bh.to(tl.int64) * N, offs_m, N, MASK_N)
    delta_m = _load_rows(DELTA + (BH + pid_bh).to(tl.int64) * N, offs_m, N, MASK_N)

    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + offs_n0
        # One Kx tile for both streams' dQ.
        ka = _load_tile(kx_base, offs_n, offs_da, s_kx_n, s_kx_d, N, HEAD_DIM, MASK_N, MASK_DA)
        kb = ka
        if BLOCK_DB > 0:
            kb = _load_tile(kx_base, offs_n, offs_db, s_kx_n, s_kx_d, N, HEAD_DIM, MASK_N, MASK_DB)
        dqxa, dqxb = _dq_step(dqxa, dqxb, qxa, qxb, doxa, doxb, lse_x, delta_x, ka, kb,
                              vx_base, s_vx_n, s_vx_d, offs_n, N, qk_scale,
                              HEAD_DIM, BLOCK_DA, BLOCK_DB, MASK_DA, MASK_DB, MASK_N, PRECISION)
        dqma, dqmb = _dq_step(dqma, dqmb, qma, qmb, doma, domb, lse_m, delta_m, ka, kb,
                              vm_base, s_vm_n, s_vm_d, offs_n, N, qk_scale,
                              HEAD_DIM, BLOCK_DA, BLOCK_DB, MASK_DA, MASK_DB, MASK_N, PRECISION)

    dqx_base = DQX + b * s_dqx_b + h * s_dqx_h
    dqm_base = DQM + b * s_dqm_b + h * s_dqm_h
    _store_tile(dqx_base, dqxa * sm_scale, offs_m, offs_da, s_dqx_n, s_dqx_d, N, HEAD_DIM, MASK_N, MASK_DA)
    _store_tile(dqm_base, dqma * sm_scale, offs_m, offs_da, s_dqm_n, s_dqm_d, N, HEAD_DIM, MASK_N, MASK_DA)
    if BLOCK_DB > 0:
        _store_tile(dqx_base, dqxb * sm_scale, offs_m, offs_db, s_dqx_n, s_dqx_d, N, HEAD_DIM, MASK_N, MASK_DB)
        _store_tile(dqm_base, dqmb * sm_scale, offs_m, offs_db, s_dqm_n, s_dqm_d, N, HEAD_DIM, MASK_N, MASK_DB)


# --------------------------------------------------------------------------- launch configuration
def _head_chunks(head_dim: int) -> tuple[int, int]:
    """Cover ``head_dim`` with at most two power-of-two column chunks (each >= 16, the
    smallest ``tl.dot`` size).  Two chunks are used only when they are narrower than the
    single padded power of two (D = 180: 128 + 64 = 192 < 256; D = 48: 32 + 16 = 48 < 64)."""
    single = max(16, next_power_of_2(head_dim))
    da = max(16, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - da
    if rest <= 0:
        return single, 0
    db = max(16, next_power_of_2(rest))
    if da + db >= single:
        return single, 0
    return da, db


def _gpu_config(padded_d: int, kernel: str, dtype: torch.dtype) -> dict:
    """Block sizes per kernel, padded head dim and dtype (see the module docstring).

    ``BLOCK_M`` is the query block and ``BLOCK_N`` the key block in every kernel.  These are
    reasoned defaults, not autotuned: they are chosen from the register, spill and shared
    memory report of ``ptxas -v`` for sm_90a and from whether Hopper ``wgmma`` is emitted.
    Rules of thumb behind them:

    * 16-bit inputs: a warpgroup's wgmma wants 64 rows on the M side of a dot, so the
      resident block (queries in fwd/dQ, keys in dK/dV) is 64 rows; 8 warps for Dp > 64 so
      that the float32 accumulators (2 x 64 x Dp x 4 bytes) fit the 255 registers per
      thread (wider tiles spill; 32-row resident tiles spill less but fall back from wgmma
      to mma.sync).  ``benchmarks/attention.py --tune`` times the alternatives on a GPU.
    * float32 inputs use IEEE dots (FMA, no tensor cores), which need far more registers per
      tile: 16 x 16 blocks and one stage keep shared memory under the 228 KiB of an SM,
      which the 16-bit table would exceed.  float32 is the exact path, not the fast one.
    """
    if dtype == torch.float32:
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    if kernel == "fwd":
        # 2 x fp32 acc [BLOCK_M, Dp] + 2 x Q [BLOCK_M, Dp] resident; K, Vx, Vm streamed.
        if padded_d <= 64:
            return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
        if padded_d <= 128:
            return dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=3)
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2)
    if kernel == "dkdv":
        # fp32 dK, dV [BLOCK_N, Dp] + K, V tiles resident; Q, dO [BLOCK_M, Dp] streamed.
        if padded_d <= 64:
            return dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=3)
        return dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2)
    if kernel == "dq":
        # fp32 dQx, dQm [BLOCK_M, Dp] + Qx, Qm, dOx, dOm resident; K, Vx, Vm streamed.
        if padded_d <= 64:
            return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3)
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2)
    raise ValueError(kernel)


# Configuration override, for tests and tuning sweeps: ``{"fwd" | "dkdv" | "dq" | "all":
# {"BLOCK_M": .., "BLOCK_N": .., "num_warps": .., "num_stages": ..}}``; a kernel's own key
# wins over "all".  None = the heuristic table (or the interpreter's blocks).
_CONFIG_OVERRIDE: dict | None = None


def _config(head_dim: int, kernel: str, dtype: torch.dtype) -> dict:
    da, db = _head_chunks(head_dim)
    over = (_CONFIG_OVERRIDE or {})
    over = over.get(kernel, over.get("all"))
    if over is not None:
        cfg = dict(num_warps=4, num_stages=1)
        cfg.update(over)
    elif INTERPRET:
        # Interpreter: numpy per tile, cost ~ number of tile steps, not tile size.  32 x 32
        # blocks keep the CPU tests fast while N = 64 still spans 2 x 2 blocks (tests force
        # 16 x 16 blocks where they want ragged multi-block sweeps).
        cfg = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
    else:
        cfg = _gpu_config(da + db, kernel, dtype)
    return dict(cfg, HEAD_DIM=head_dim, BLOCK_DA=da, BLOCK_DB=db,
                MASK_DA=da > head_dim, MASK_DB=db > 0 and da + db > head_dim)


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored for 16-bit inputs; TF32 for float32 only when torch allows it


def _empty_bhnd(shape, dtype, device):
    """``[B, H, N, D]`` tensor stored as ``[B, N, H, D]`` (the merge-heads layout: the
    caller's ``transpose(1, 2).reshape(B, N, H*D)`` is a view).  Used for outputs and
    gradients, by the real and the fake implementation alike (strides must agree)."""
    b, h, n, d = shape
    return torch.empty((b, n, h, d), dtype=dtype, device=device).permute(0, 2, 1, 3)


def _guard(tensors, names):
    """Refuse inputs the kernels would read out of bounds.

    The public op validates everything once (:func:`dadf_fast.ops.dual_attention`); this
    guard is for ``torch.ops.dadf_fast_triton.*`` called directly: every kernel walks all
    tensors with the sizes of the first one, on its device, and tiles at most
    ``MAX_HEAD_DIM`` columns."""
    op = "dadf_fast_triton::dual_attention"
    q = tensors[0]
    require(q.dim() == 4, op, f"expected [B, H, N, D] tensors, got shape {tuple(q.shape)}")
    for n, t in zip(names, tensors):
        require(t.shape == q.shape, op, f"{n} has shape {tuple(t.shape)} but {names[0]} has {tuple(q.shape)}")
        require(t.device == q.device, op, f"{n} is on {t.device} but {names[0]} is on {q.device}")
    d = q.shape[-1]
    require(1 <= d <= MAX_HEAD_DIM, op, f"head dim must be in [1, {MAX_HEAD_DIM}], got {d}")


def _forward(qx, kx, vx, qm, vm, scale: float):
    _guard((qx, kx, vx, qm, vm), ("qx", "kx", "vx", "qm", "vm"))
    with device_guard(qx):
        return _forward_launch(qx, kx, vx, qm, vm, scale)


def _forward_launch(qx, kx, vx, qm, vm, scale: float):
    B, H, N, D = qx.shape
    ox = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    om = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    lse = torch.empty((2, B, H, N), dtype=torch.float32, device=qx.device)
    if B * H * N == 0:
        return ox, om, lse
    cfg = _config(D, "fwd", qx.dtype)
    grid = (triton.cdiv(N, cfg["BLOCK_M"]), B * H)
    even_n = N % cfg["BLOCK_M"] == 0 and N % cfg["BLOCK_N"] == 0
    _dual_attn_fwd_kernel[grid](
        qx, kx, vx, qm, vm, ox, om, lse,
        *qx.stride(), *kx.stride(), *vx.stride(), *qm.stride(), *vm.stride(), *ox.stride(), *om.stride(),
        B * H, H, N, float(scale) * LOG2E,
        MASK_N=not even_n, PRECISION=_precision(qx.dtype), **cfg,
    )
    return ox, om, lse


def _backward(dox, dom, qx, kx, vx, qm, vm, ox, om, lse, scale: float):
    _guard((qx, kx, vx, qm, vm, ox, om, dox, dom), ("qx", "kx", "vx", "qm", "vm", "ox", "om", "dox", "dom"))
    b, h, n, _ = qx.shape
    require(lse.shape == (2, b, h, n) and lse.dtype == torch.float32 and lse.device == qx.device,
            "dadf_fast_triton::dual_attention_backward",
            f"lse must be float32 [2, {b}, {h}, {n}] on {qx.device}, got {lse.dtype} {tuple(lse.shape)} on {lse.device}")
    with device_guard(qx):
        return _backward_launch(dox, dom, qx, kx, vx, qm, vm, ox, om, lse, scale)


def _backward_launch(dox, dom, qx, kx, vx, qm, vm, ox, om, lse, scale: float):
    B, H, N, D = qx.shape
    dqx = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    dkx = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    dvx = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    dqm = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    dvm = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    if B * H * N == 0:
        return dqx, dkx, dvx, dqm, dvm
    dox = dox.to(qx.dtype)
    dom = dom.to(qx.dtype)
    prec = _precision(qx.dtype)
    qk_scale = float(scale) * LOG2E

    delta = torch.empty((2, B, H, N), dtype=torch.float32, device=qx.device)
    block_d = max(16, next_power_of_2(D))
    block_m = 32 if INTERPRET else max(16, min(64, 8192 // block_d))
    _dual_attn_bwd_delta_kernel[(triton.cdiv(N, block_m), B * H)](
        ox, dox, om, dom, delta,
        *ox.stride(), *dox.stride(), *om.stride(), *dom.stride(),
        B * H, H, N, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_D=block_d,
    )

    cfg = _config(D, "dkdv", qx.dtype)
    even_n = N % cfg["BLOCK_M"] == 0 and N % cfg["BLOCK_N"] == 0
    _dual_attn_bwd_dkdv_kernel[(triton.cdiv(N, cfg["BLOCK_N"]), B * H)](
        qx, kx, vx, qm, vm, dox, dom, lse, delta, dkx, dvx, dvm,
        *qx.stride(), *kx.stride(), *vx.stride(), *qm.stride(), *vm.stride(),
        *dox.stride(), *dom.stride(), *dkx.stride(), *dvx.stride(), *dvm.stride(),
        B * H, H, N, qk_scale, float(scale),
        MASK_N=not even_n, PRECISION=prec, **cfg,
    )

    cfg = _config(D, "dq", qx.dtype)
    even_n = N % cfg["BLOCK_M"] == 0 and N % cfg["BLOCK_N"] == 0
    _dual_attn_bwd_dq_kernel[(triton.cdiv(N, cfg["BLOCK_M"]), B * H)](
        qx, kx, vx, qm, vm, dox, dom, lse, delta, dqx, dqm,
        *qx.stride(), *kx.stride(), *vx.stride(), *qm.stride(), *vm.stride(),
        *dox.stride(), *dom.stride(), *dqx.stride(), *dqm.stride(),
        B * H, H, N, qk_scale, float(scale),
        MASK_N=not even_n, PRECISION=prec, **cfg,
    )
    return dqx, dkx, dvx, dqm, dvm


# --------------------------------------------------------------------------- torch.library registration
# Namespace ``dadf_fast_triton`` (``dadf_fast`` belongs to the C++ extension).  The forward
# op returns the row log-sum-exp as a third output so that autograd can save it; the public
# entry point drops it.  Both ops have fake implementations with the exact output strides
# of the real ones, so torch.compile / AOTAutograd can trace forward and backward.
@torch.library.custom_op("dadf_fast_triton::dual_attention", mutates_args=())
def dual_attention_op(qx: torch.Tensor, kx: torch.Tensor, vx: torch.Tensor, qm: torch.Tensor,
                      vm: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused dual attention: ``(ox, om, lse)``; lse is float32 ``[2, B, H, N]`` (base 2)."""
    return _forward(qx, kx, vx, qm, vm, scale)


@dual_attention_op.register_fake
def _dual_attention_fake(qx, kx, vx, qm, vm, scale):
    B, H, N, D = qx.shape
    ox = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    om = _empty_bhnd(qx.shape, qx.dtype, qx.device)
    lse = qx.new_empty((2, B, H, N), dtype=torch.float32)
    return ox, om, lse


@torch.library.custom_op("dadf_fast_triton::dual_attention_backward", mutates_args=())
def dual_attention_backward_op(
    dox: torch.Tensor, dom: torch.Tensor, qx: torch.Tensor, kx: torch.Tensor, vx: torch.Tensor,
    qm: torch.Tensor, vm: torch.Tensor, ox: torch.Tensor, om: torch.Tensor, lse: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dqx, dkx, dvx, dqm, dvm)`` of the fused dual attention."""
    return _backward(dox, dom, qx, kx, vx, qm, vm, ox, om, lse, scale)


@dual_attention_backward_op.register_fake
def _dual_attention_backward_fake(dox, dom, qx, kx, vx, qm, vm, ox, om, lse, scale):
    return tuple(_empty_bhnd(qx.shape, qx.dtype, qx.device) for _ in range(5))


def _setup_context(ctx, inputs, output):
    qx, kx, vx, qm, vm, scale = inputs
    ox, om, lse = output
    ctx.save_for_backward(qx, kx, vx, qm, vm, ox, om, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _autograd_backward(ctx, dox, dom, dlse):
    qx, kx, vx, qm, vm, ox, om, lse = ctx.saved_tensors
    if dox is None:
        dox = torch.zeros_like(ox)
    if dom is None:
        dom = torch.zeros_like(om)
    grads = dual_attention_backward_op(dox, dom, qx, kx, vx, qm, vm, ox, om, lse, ctx.scale)
    return (*grads, None)


dual_attention_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- entry point
def dual_attention_triton(qx, kx, vx, qm, vm, scale=None):
    """``(ox, om)`` = self-attention and memorial attention of ``[B, H, N, D]`` inputs (any
    strides, D <= 256), computed by the fused Triton kernels; differentiable and traceable
    by ``torch.compile``.  ``scale`` defaults to ``1/sqrt(D)``.  CUDA tensors, or CPU tensors
    when ``TRITON_INTERPRET=1`` was set before triton was imported.  The outputs are
    ``[B, H, N, D]`` views of ``[B, N, H, D]`` storage."""
    if scale is None:
        scale = 1.0 / math.sqrt(qx.shape[-1])
    ox, om, _ = dual_attention_op(qx, kx, vx, qm, vm, float(scale))
    return ox, om


__all__ = ["dual_attention_triton", "dual_attention_op", "dual_attention_backward_op", "MAX_HEAD_DIM"]
