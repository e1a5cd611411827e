"""Benchmark: one DADF flow step (FrEIA ``AllInOneBlock`` semantics), per scale.

Rows per shape (all compute the same function with the same weights):

* ``step/freia``      FrEIA 0.2 ``AllInOneBlock`` (subnet + epilogue with a dense CxC
                      permutation conv), as the official code runs it.
* ``step/reference``  the same subnet + ``dadf_fast.reference.affine_coupling`` (dense perm).
* ``step/fused``      torch depthwise conv + LeakyReLU -> 1x1 conv -> fused Triton epilogue.
* ``epilogue/reference``, ``epilogue/triton``: the epilogue alone, given the subnet output,
                      with achieved GB/s (bytes that must move: read x and a, write y; the
                      backward also reads dy, x, a and writes dx, da) against ``copy``, a
                      measured device-to-device copy.
* ``subnet-half/torch``: depthwise kxk conv + LeakyReLU(0.1) over x1 alone, k=3 (even
                      steps) and k=1 (odd steps).

Columns: forward ms, forward+backward ms, GB/s (epilogue rows), peak memory of
forward+backward above the inputs (CUDA only).

Shapes: ``paper`` (batch 16: C=768 at 64x64, 1536 at 32x32, 3072 at 16x16), ``lite``
(batch 8: C=72 at 64x64, 120 at 32x32, 336 at 16x16); ``--quick`` shrinks batch to 2 and
the spatial size by 4 (the default on CPU).  Without a GPU the Triton rows are skipped
(Triton runs on CPU only in its interpreter, which measures nothing useful) and the
reason is printed.

    python benchmarks/coupling.py                       # CUDA: paper + lite, float32
    python benchmarks/coupling.py --dtype float16 --json out.json
    python benchmarks/coupling.py --quick --preset lite # CPU
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from dadf_fast import ops, reference
from dadf_fast.utils.measure import extra_peak_memory_mb, time_fn
from dadf_fast.kernels.triton import unavailable_reason as triton_reason

PRESETS = {
    "paper": (16, [(768, 64), (1536, 32), (3072, 16)]),
    "lite": (8, [(72, 64), (120, 32), (336, 16)]),
}
_GLOBAL_SCALE_INIT = 2.0 * math.log(math.exp(0.5 * 10.0) - 1.0)


def bench(fn, device, iters, warmup):
    """Median device time of ``fn()`` in ms (CUDA events on GPU)."""
    return 1e3 * time_fn(fn, device, warmup, iters, cuda_events=True)


class Step(nn.Module):
    """Weights of one flow step (FrEIA names), shared by every row."""

    def __init__(self, c, k):
        super().__init__()
        c1, c2 = c - c // 2, c // 2
        self.c, self.c1 = c, c1
        self.subnet = nn.Sequential(nn.Conv2d(c1, c1, k, padding=k // 2, groups=c1), nn.LeakyReLU(0.1),
                                    nn.Conv2d(c1, 2 * c2, 1))
        self.global_scale = nn.Parameter(_GLOBAL_SCALE_INIT + 0.1 * torch.randn(1, c, 1, 1))
        self.global_offset = nn.Parameter(0.1 * torch.randn(1, c, 1, 1))
        self.register_buffer("perm", torch.randperm(c))

    def gb(self):
        return 0.1 * F.softplus(self.global_scale.view(-1), beta=0.5), self.global_offset.view(-1)

    def reference(self, x):
        g, b = self.gb()
        return reference.affine_coupling(x, self.subnet(x[:, : self.c1]), g, b, self.perm)

    def fused(self, x):
        g, b = self.gb()
        x1 = x[:, : self.c1]
        dw, pw = self.subnet[0], self.subnet[2]
        h = F.leaky_relu(dw(x1), 0.1)
        a = F.conv2d(h, pw.weight, pw.bias)
        return ops.affine_coupling(x, a, g, b, self.perm, backend="triton")


def freia_block(step, c, hw, device, dtype):
    """FrEIA ``AllInOneBlock`` carrying ``step``'s weights, or ``(None, reason)``."""
    try:
        from FrEIA.modules import AllInOneBlock
    except Exception as exc:  # noqa: BLE001
        return None, f"FrEIA not importable ({type(exc).__name__})"
    blk = AllInOneBlock([(c, hw, hw)], subnet_constructor=lambda ci, co: step.subnet, affine_clamping=2.0,
                        permute_soft=False)
    with torch.no_grad():
        blk.global_scale.copy_(step.global_scale)
        blk.global_offset.copy_(step.global_offset)
        w = torch.zeros(c, c)
        w[torch.arange(c), step.perm.cpu()] = 1
        blk.w_perm.copy_(w.view(c, c, 1, 1))
        blk.w_perm_inv.copy_(w.t().reshape(c, c, 1, 1))
    return blk.to(device=device, dtype=dtype), None


def run_rows(name, fwd, inputs, grad_targets, device, iters, warmup, nbytes=None):
    """Time ``fwd()`` and forward+backward; returns a result dict."""

    def fwd_bwd():
        y, ld = fwd()
        outs, grads = [y], [dy_holder[0]]
        if ld.requires_grad:
            outs.append(ld)
            grads.append(torch.ones_like(ld))
        torch.autograd.grad(outs, grad_targets, grads)

    with torch.no_grad():
        y0, _ = fwd()
    dy_holder = [torch.randn_like(y0)]
    del y0
    with torch.no_grad():
        t_f = bench(fwd, device, iters, warmup)
    t_fb = bench(fwd_bwd, device, iters, warmup)
    row = {"row": name, "fwd_ms": t_f, "fwd_bwd_ms": t_fb, "peak_mib": extra_peak_memory_mb(fwd_bwd, device)}
    if nbytes is not None:
        row["fwd_gbps"] = nbytes[0] / t_f / 1e6
        row["fwd_bwd_gbps"] = (nbytes[0] + nbytes[1]) / t_fb / 1e6
    return row


def copy_gbps(numel, dtype, device, iters, warmup):
    """GB/s (read + write) of a device-to-device copy of ``numel`` elements, and its ms."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), device, iters, warmup)
    return 2 * src.numel() * src.element_size() / t / 1e6, t


def bench_shape(preset, bsz, c, hw, k, device, dtype, iters, warmup, triton_ok, why_not):
    torch.manual_seed(0)
    c1, c2 = c - c // 2, c // 2
    elt = torch.finfo(dtype).bits // 8
    step = Step(c, k).to(device=device, dtype=dtype)
    x = torch.randn(bsz, c, hw, hw, device=device, dtype=dtype, requires_grad=True)
    params = [x, *step.parameters()]
    rows = []
    tag = f"{preset} B={bsz} C={c} {hw}x{hw} k={k}"

    blk, reason = freia_block(step, c, hw, device, dtype)
    if blk is not None:
        def freia_fwd():
            (y,), ld = blk((x,), rev=False, jac=True)
            return y, ld

        freia_params = [x] + [q for q in blk.parameters() if q.requires_grad]
        rows.append(run_rows("step/freia", freia_fwd, None, freia_params, device, iters, warmup))
    else:
        rows.append({"row": "step/freia", "skipped": reason})
    rows.append(run_rows("step/reference", lambda: step.reference(x), None, params, device, iters, warmup))
    if triton_ok:
        rows.append(run_rows("step/fused", lambda: step.fused(x), None, params, device, iters, warmup))
        with torch.no_grad():
            y_ref, ld_ref = step.reference(x)
            y_f, ld_f = step.fused(x)
        err = {"max_abs_err_y": (y_f.float() - y_ref.float()).abs().max().item(),
               "max_rel_err_logdet": ((ld_f.float() - ld_ref.float()).abs() / ld_ref.float().abs().clamp_min(1)).max().item()}
        rows[-2].update(err)
    else:
        rows.append({"row": "step/fused", "skipped": why_not})

    # epilogue alone, given the subnet output
    a = (3 * torch.randn(bsz, 2 * c2, hw, hw, device=device)).to(dtype).requires_grad_()
    g, b = (t.detach().requires_grad_() for t in step.gb())
    ep_targets = [x, a, g, b]
    pix = bsz * hw * hw
    fwd_bytes = elt * pix * (c + 2 * c2 + c)
    bwd_bytes = elt * pix * (c + c + 2 * c2 + c + 2 * c2)
    gbps, t_copy = copy_gbps(bsz * c * hw * hw, dtype, device, iters, warmup)
    rows.append({"row": "copy", "fwd_ms": t_copy, "fwd_gbps": gbps, "note": "x-sized device-to-device copy"})
    rows.append(run_rows("epilogue/reference", lambda: reference.affine_coupling(x, a, g, b, step.perm), None,
                         ep_targets, device, iters, warmup, (fwd_bytes, bwd_bytes)))
    if triton_ok:
        rows.append(run_rows("epilogue/triton",
                             lambda: ops.affine_coupling(x, a, g, b, step.perm, backend="triton"), None,
                             ep_targets, device, iters, warmup, (fwd_bytes, bwd_bytes)))
    else:
        rows.append({"row": "epilogue/triton", "skipped": why_not})

    # first half of the subnet alone
    dw = step.subnet[0]
    x1 = x[:, :c1]

    def half_torch():
        return F.leaky_relu(F.conv2d(x1, dw.weight, dw.bias, padding=k // 2, groups=c1), 0.1), x.new_zeros(1)

    rows.append(run_rows("subnet-half/torch", half_torch, None, [x, dw.weight, dw.bias], device, iters, warmup))
    for r in rows:
        r["shape"] = tag
    return rows


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows):
    print("| shape | row | fwd ms | fwd+bwd ms | fwd GB/s | fwd+bwd GB/s | peak MiB | note |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        note = "skipped (see above)" if r.get("skipped") else (r.get("note") or "")
        if "max_abs_err_y" in r:
            note = f"vs reference: max|dy|={r['max_abs_err_y']:.2e}, logdet rel={r['max_rel_err_logdet']:.2e}"
        print(f"| {r['shape']} | {r['row']} | {_fmt(r.get('fwd_ms'), '.3f')} | {_fmt(r.get('fwd_bwd_ms'), '.3f')} | "
              f"{_fmt(r.get('fwd_gbps'), '.1f')} | {_fmt(r.get('fwd_bwd_gbps'), '.1f')} | "
              f"{_fmt(r.get('peak_mib'), '.0f')} | {note} |")
    sys.stdout.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["paper", "lite", "all"], default="all")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--quick", action="store_true", help="batch 2, spatial size / 4 (default on CPU)")
    p.add_argument("--full", action="store_true", help="full shapes even on CPU (slow)")
    p.add_argument("--k", type=int, nargs="+", default=[3], help="depthwise kernel sizes (3: even steps, 1: odd)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--shape", default=None, metavar="B,C,HW",
                   help="one custom shape instead of the presets, e.g. 2,10,8")
    p.add_argument("--triton-on-cpu", action="store_true",
                   help="run the Triton rows on CPU in the interpreter (needs TRITON_INTERPRET=1; "
                        "checks that the rows run, the times mean nothing; use with a tiny --shape)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    quick = args.quick or (device.type == "cpu" and not args.full)
    iters = args.iters or (20 if device.type == "cuda" else 3)
    warmup = 3 if device.type == "cuda" else 1
    why_not = triton_reason(device.type)
    if device.type == "cpu" and not (args.triton_on_cpu and why_not is None):
        why_not = ("Triton kernels run on CPU only in the interpreter (TRITON_INTERPRET=1), an exact "
                   "but very slow emulator: timing it measures nothing; run on a CUDA device")
    triton_ok = why_not is None
    print(f"# coupling benchmark: {device} {dtype}, torch {torch.__version__}, python {platform.python_version()}"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
          + (", quick shapes (batch 2, spatial / 4)" if quick and not args.shape else ""))
    if not triton_ok:
        print(f"# Triton rows skipped: {why_not}")
    rows = []
    presets = ["paper", "lite"] if args.preset == "all" else [args.preset]
    if args.shape:
        b_, c, hw_ = (int(v) for v in args.shape.split(","))
        for k in args.k:
            rows += bench_shape("custom", b_, c, hw_, k, device, dtype, iters, warmup, triton_ok, why_not)
        presets = []
    for preset in presets:
        bsz, shapes = PRESETS[preset]
        for c, hw in shapes:
            b_, hw_ = (2, hw // 4) if quick else (bsz, hw)
            for k in args.k:
                rows += bench_shape(preset, b_, c, hw_, k, device, dtype, iters, warmup, triton_ok, why_not)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "dtype": args.dtype, "quick": quick, "torch": torch.__version__,
                       "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
