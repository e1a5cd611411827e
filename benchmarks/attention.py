"""Benchmark: dual attention (self-attention + memorial attention sharing the input keys).

Rows per shape (all compute ``ox = softmax(qx kx^T s) vx`` and ``om = softmax(qm kx^T s) vm``
on the same inputs, the strided q/k/v views of two ``[B, N, 3, H, D]`` projections, as a
DualBlock produces them):

* ``eager``     ``dadf_fast.reference.dual_attention`` (two N x N score matrices per head).
* ``sdpa_x2``   ``torch.nn.functional.scaled_dot_product_attention`` called twice (whatever
                fused backend torch picks: flash / memory-efficient / cuDNN / math).
* ``triton``    the fused Triton kernels (``dadf_fast.ops.dual_attention(backend="triton")``):
                one launch for both attentions forward, three for backward.

Columns: forward ms, forward+backward ms (median), TFLOP/s of each, and peak memory of
forward+backward above the inputs (CUDA only).  FLOPs follow the FlashAttention convention:
forward = 2 attentions x 4*B*H*N^2*D (QK^T and PV), backward = 2.5 x forward (it recomputes
QK^T), so the same nominal count is used for every row ("effective" TFLOP/s).

Shapes: ``paper`` B=32, H=8, N=256, D=180 (E=480 x 3 scales / 8 heads); ``lite`` B=8, H=4,
N=256, D=48.  ``--quick`` shrinks the batch (B=2) for a fast CPU run.  Without a GPU the
Triton row is skipped (Triton runs on CPU tensors only in its interpreter, which is exact
but thousands of times slower and measures nothing useful) and the reason is printed.

The performance targets (H200, paper shape, bfloat16): triton forward >= 1.2x faster than
``sdpa_x2``, forward+backward at least as fast as ``sdpa_x2`` and >= 3x faster than
``eager``; it is checked and printed on CUDA.

``--tune`` (CUDA only) times a few alternative block-size configurations of each Triton
kernel on the paper shape and prints the best, to refine the heuristic table in
``dadf_fast/kernels/triton/dual_attention.py``.

    python benchmarks/attention.py                          # CUDA: paper + lite, bfloat16
    python benchmarks/attention.py --dtype float16 --json out.json
    python benchmarks/attention.py --tune                   # CUDA: block-size sweep
    python benchmarks/attention.py --quick --shape lite     # CPU: torch rows only
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch
import torch.nn.functional as F

from dadf_fast import ops, reference
from dadf_fast.utils.measure import extra_peak_memory_mb, time_fn
from dadf_fast.kernels.triton import interpret as triton_interpret, unavailable_reason as triton_reason

SHAPES = {"paper": (32, 8, 256, 180), "lite": (8, 4, 256, 48)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------- implementations
def eager(qx, kx, vx, qm, vm, scale):
    return reference.dual_attention(qx, kx, vx, qm, vm, scale=scale)


def sdpa_twice(qx, kx, vx, qm, vm, scale):
    ox = F.scaled_dot_product_attention(qx, kx, vx, scale=scale)
    om = F.scaled_dot_product_attention(qm, kx, vm, scale=scale)
    return ox, om


def triton_fused(qx, kx, vx, qm, vm, scale):
    return ops.dual_attention(qx, kx, vx, qm, vm, scale=scale, backend="triton")


IMPLS = {"eager": eager, "sdpa_x2": sdpa_twice, "triton": triton_fused}


# --------------------------------------------------------------------------- timing
def make_inputs(B, H, N, D, dtype, device, requires_grad):
    """Strided [B, H, N, D] views of two [B, N, 3, H, D] projections (input and memory)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    px = torch.randn(B, N, 3, H, D, generator=g).to(device=device, dtype=dtype)
    pm = torch.randn(B, N, 3, H, D, generator=g).to(device=device, dtype=dtype)
    px.requires_grad_(requires_grad)
    pm.requires_grad_(requires_grad)
    qx, kx, vx = (px[:, :, i].transpose(1, 2) for i in range(3))
    qm, vm = pm[:, :, 0].transpose(1, 2), pm[:, :, 2].transpose(1, 2)
    return [qx, kx, vx, qm, vm]


def flops(B, H, N, D):
    fwd = 2 * 4 * B * H * N * N * D
    return fwd, fwd * 3.5


def bench_impl(impl, shape, dtype, device, warmup, reps):
    B, H, N, D = shape
    scale = 1.0 / math.sqrt(D)
    with torch.no_grad():
        ts = make_inputs(B, H, N, D, dtype, device, requires_grad=False)
        t_fwd = 1e3 * time_fn(lambda: impl(*ts, scale), device, warmup, reps, cuda_events=True)
    ts = make_inputs(B, H, N, D, dtype, device, requires_grad=True)
    dout = [torch.randn(B, H, N, D, device=device, dtype=dtype) for _ in range(2)]

    def fwd_bwd():
        out = impl(*ts, scale)
        return torch.autograd.grad(out, ts, dout)

    peak = None
    if device.type == "cuda":
        fwd_bwd()  # the first call compiles: its allocations are not the op's
        peak = extra_peak_memory_mb(fwd_bwd, device)
    t_fb = 1e3 * time_fn(fwd_bwd, device, warmup, reps, cuda_events=True)
    return t_fwd, t_fb, peak


def check_triton(shape, dtype, device):
    """Max abs error of the Triton outputs and gradients against float32 eager, on a B=2 slice."""
    B, H, N, D = shape
    B = min(B, 2)
    ts = make_inputs(B, H, N, D, dtype, device, requires_grad=True)
    dout = [torch.randn(B, H, N, D, device=device, dtype=dtype) for _ in range(2)]
    out = triton_fused(*ts, None)
    g = torch.autograd.grad(out, ts, dout)
    rt = [t.detach().float().requires_grad_() for t in ts]
    rout = reference.dual_attention(*rt)
    rg = torch.autograd.grad(rout, rt, [d.float() for d in dout])
    return max((a.float() - b).abs().max().item() for a, b in zip(list(out) + list(g), list(rout) + list(rg)))


# --------------------------------------------------------------------------- tuning sweep
TUNE_CANDIDATES = {
    # (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M = query block, BLOCK_N = key block.
    "fwd": [(64, 32, 8, 2), (64, 32, 8, 3), (64, 64, 8, 2), (128, 32, 8, 2), (64, 16, 4, 2), (32, 32, 4, 2)],
    "dkdv": [(32, 64, 8, 2), (16, 64, 8, 2), (64, 64, 8, 2), (32, 32, 4, 2), (32, 32, 8, 2), (64, 32, 8, 2)],
    "dq": [(64, 32, 8, 2), (64, 16, 8, 2), (64, 64, 8, 2), (32, 32, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2)],
}


def tune(shape, dtype, device, warmup, reps, kernels):
    from dadf_fast.kernels.triton import dual_attention as K

    B, H, N, D = shape
    da, db = K._head_chunks(D)
    results = {}
    for kern in kernels:
        default = K._gpu_config(da + db, kern, dtype)
        default_t = (default["BLOCK_M"], default["BLOCK_N"], default["num_warps"], default["num_stages"])
        rows = []
        for cand in TUNE_CANDIDATES[kern]:
            bm, bn, nw, ns = cand
            K._CONFIG_OVERRIDE = {kern: dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=nw, num_stages=ns)}
            try:
                t0 = time.perf_counter()
                err = check_triton(shape, dtype, device)  # also compiles
                compile_s = time.perf_counter() - t0
                t_fwd, t_fb, _ = bench_impl(triton_fused, shape, dtype, device, warmup, reps)
                rows.append(dict(config=cand, fwd_ms=t_fwd, fwd_bwd_ms=t_fb, max_err=err, compile_s=compile_s,
                                 default=cand == default_t))
                print(f"  tune {kern:5s} BM={bm:3d} BN={bn:3d} warps={nw} stages={ns}: fwd {t_fwd:7.3f} ms  "
                      f"fwd+bwd {t_fb:7.3f} ms  err {err:.2e}{'  (default)' if cand == default_t else ''}",
                      flush=True)
            except Exception as exc:  # out of shared memory, compile failure...
                rows.append(dict(config=cand, error=f"{type(exc).__name__}: {exc}"[:300]))
                print(f"  tune {kern:5s} {cand}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            finally:
                K._CONFIG_OVERRIDE = None
        key = "fwd_ms" if kern == "fwd" else "fwd_bwd_ms"
        ok = [r for r in rows if "error" not in r]
        if ok:
            best = min(ok, key=lambda r: r[key])
            print(f"  best {kern}: {best['config']} ({key} {best[key]:.3f}); default {default_t}", flush=True)
        results[kern] = rows
    return results


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("Rows per shape"):])
    ap.add_argument("--shape", choices=["paper", "lite", "all"], default="all")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None,
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--impl", action="append", choices=list(IMPLS), help="rows to run (repeatable); default all")
    ap.add_argument("--quick", action="store_true", help="batch 2 and fewer repetitions (for a CPU smoke run)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--tune", action="store_true", help="CUDA: sweep Triton block sizes on the paper shape")
    ap.add_argument("--tune-kernels", default="fwd,dkdv,dq", help="kernels to sweep with --tune")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cuda = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    reps = args.reps if args.reps is not None else (50 if cuda else 3)
    if args.quick:
        warmup, reps = min(warmup, 1 if not cuda else warmup), min(reps, 3 if not cuda else reps)
    shapes = ["paper", "lite"] if args.shape == "all" else [args.shape]
    impls = args.impl or list(IMPLS)

    report = {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
              "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "rows": [], "skipped": {}}
    try:
        import triton
        report["triton"] = triton.__version__
    except Exception:
        report["triton"] = None
    print(f"# dual attention  device={report['device']}  torch={report['torch']}  triton={report['triton']}  "
          f"dtype={report['dtype']}")

    triton_why = None
    if "triton" in impls:
        if not cuda:
            triton_why = ("no CUDA device: Triton runs on CPU tensors only in its interpreter "
                          "(TRITON_INTERPRET=1), which is exact but far too slow to time")
        elif triton_interpret():
            triton_why = "TRITON_INTERPRET is set: the kernels would run in the interpreter, not on the GPU"
        else:
            triton_why = triton_reason("cuda")
        if triton_why:
            impls = [i for i in impls if i != "triton"]
            report["skipped"]["triton"] = triton_why
            print(f"# triton row skipped: {triton_why}")
    if dtype == torch.bfloat16 and not cuda:
        print("# note: bfloat16 on CPU runs, but says nothing about the GPU")

    if args.tune:
        if not cuda or triton_why:
            print("# --tune needs CUDA and Triton; skipped")
        else:
            print(f"# tuning on the paper shape {SHAPES['paper']}")
            report["tune"] = tune(SHAPES["paper"], dtype, device, warmup, reps,
                                  [k for k in args.tune_kernels.split(",") if k])

    header = (f"{'shape':24s} {'impl':9s} {'fwd ms':>9s} {'TFLOP/s':>8s} {'fwd+bwd ms':>11s} "
              f"{'TFLOP/s':>8s} {'peak MiB':>9s}")
    print(header)
    print("-" * len(header))
    for name in shapes:
        B, H, N, D = SHAPES[name]
        if args.quick:
            B = 2
        shape = (B, H, N, D)
        f_fwd, f_fb = flops(*shape)
        label = f"{name} {B}x{H}x{N}x{D}"
        times = {}
        if "triton" in impls:
            err = check_triton(shape, dtype, device)
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            status = "ok" if err < tol else "MISMATCH"
            print(f"# {label}: triton vs float32 eager, max abs error {err:.2e} ({status})")
            report.setdefault("check", {})[name] = dict(max_abs_error=err, ok=err < tol)
        for impl in impls:
            try:
                t_fwd, t_fb, peak = bench_impl(IMPLS[impl], shape, dtype, device, warmup, reps)
            except Exception as exc:
                print(f"{label:24s} {impl:9s} FAILED: {type(exc).__name__}: {str(exc)[:150]}")
                report["rows"].append(dict(shape=name, dims=shape, impl=impl, error=str(exc)[:300]))
                continue
            times[impl] = (t_fwd, t_fb)
            peak_s = f"{peak:9.1f}" if peak is not None else f"{'n/a':>9s}"
            print(f"{label:24s} {impl:9s} {t_fwd:9.3f} {f_fwd / t_fwd / 1e9:8.3f} {t_fb:11.3f} "
                  f"{f_fb / t_fb / 1e9:8.3f} {peak_s}", flush=True)
            report["rows"].append(dict(shape=name, dims=shape, impl=impl, fwd_ms=t_fwd, fwd_bwd_ms=t_fb,
                                       fwd_tflops=f_fwd / t_fwd / 1e9, fwd_bwd_tflops=f_fb / t_fb / 1e9,
                                       peak_mib=peak))
        if "triton" in times:
            tr = times["triton"]
            line = []
            if "sdpa_x2" in times:
                s = times["sdpa_x2"]
                line.append(f"vs sdpa_x2: fwd {s[0] / tr[0]:.2f}x, fwd+bwd {s[1] / tr[1]:.2f}x")
            if "eager" in times:
                e = times["eager"]
                line.append(f"vs eager: fwd {e[0] / tr[0]:.2f}x, fwd+bwd {e[1] / tr[1]:.2f}x")
            print(f"# {label} triton speedup " + "; ".join(line))
            if name == "paper" and not args.quick and "sdpa_x2" in times and "eager" in times:
                s, e = times["sdpa_x2"], times["eager"]
                bar = {"fwd >= 1.2x sdpa_x2": s[0] / tr[0] >= 1.2,
                       "fwd+bwd >= 1.0x sdpa_x2": s[1] / tr[1] >= 1.0,
                       "fwd+bwd >= 3x eager": e[1] / tr[1] >= 3.0}
                report["bar"] = dict(bar, dtype=report["dtype"])
                print("# performance bar (" + report["dtype"] + "): " +
                      ", ".join(f"{k}: {'MET' if v else 'NOT MET'}" for k, v in bar.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
