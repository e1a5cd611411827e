"""CPU benchmark of the C++ ops (``dadf_fast.kernels.cpp.ops``) against the pure-torch reference and
``torch.compile(reference)``, at the lite and paper shapes (batch 8).

    python benchmarks/cpu_ops.py                      # lite + paper, with torch.compile
    python benchmarks/cpu_ops.py --preset lite --no-compile --repeats 20

Rows (median wall time over ``--repeats`` runs after warm-up):

* ``affine_coupling`` forward (and inverse) per flow scale;
* ``flow_nll`` per flow scale;
* ``multiscale_score`` of the three scales to a 256x256 map;
* ``flow_stage``: one scale's discriminative flow (8 coupling steps with the depthwise
  subnets), FrEIA's ``AllInOneBlock`` (dense permutation) versus the same weights through the
  C++ coupling (gather permutation); forward (inference) and forward+backward (training).
  The "k=1 dw as affine" rows evaluate the odd steps' 1x1 depthwise conv as the per-channel
  affine it is (same function; PyTorch runs a grouped 1x1 conv as one conv per group + cat),
  as a FlowStage of our own can; FrEIA's side always runs its nn.Conv2d subnet.
  Lite shapes only unless ``--stage-paper`` (FrEIA's dense permutation makes that minutes).
* ``coupling [N, C]``: the 1-D fibre layout of CFLOW's flows (``--ops fibres``), forward and
  forward+backward through ``ops.affine_coupling``: the C++ fibre kernel on ``[N, C]``, the
  reference on ``[N, C]``, and the C++ kernel on the ``[N, C, 1, 1]`` view (``--fibre-4d``
  also times that view, which now runs the same fibre kernel; before the fibre kernel it ran
  rows of one pixel).  anomalib's CFLOW calls its flows on ``fiber_batch_size`` = 64 fibres
  of C = 512 / 1024 / 2048 channels (wide_resnet50_2 layer2-4); N = 8192 is one whole batch
  of 8 images at 32x32.

On a shared 2-core machine, load from other processes makes the 2-thread timings jumpy
(each parallel region waits for a descheduled thread); ``--threads 1`` is steadier.

Every row also reports the largest difference between the C++ result and the reference,
relative to max(1, |reference|).  The performance targets it is checked against (2-core CPU):
multiscale_score >= 2x the reference, flow_nll >= 1.5x, flow_stage forward >= 2x FrEIA at
lite shapes, results identical to 1e-5.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from dadf_fast import reference
from dadf_fast.ops import affine_coupling as ops_affine_coupling

# Channels of the flow input at each scale: 3 * backbone channels (concat(F, R_l, R_g)).
PRESETS = {
    "lite": {"channels": (3 * 24, 3 * 40, 3 * 112), "sizes": (64, 32, 16), "image": 256},
    "paper": {"channels": (3 * 256, 3 * 512, 3 * 1024), "sizes": (64, 32, 16), "image": 256},
}


def median_ms(fns, repeats, warmup=2):
    """Median wall time (ms) of each callable in ``fns`` (None entries give None).

    The candidates run interleaved (one run of each per round), so that load from other
    processes on a shared machine hits them alike."""
    live = [f for f in fns if f is not None]
    for _ in range(warmup):
        for f in live:
            f()
    times = {id(f): [] for f in live}
    for _ in range(repeats):
        for f in live:
            t0 = time.perf_counter()
            f()
            times[id(f)].append(time.perf_counter() - t0)
    return [None if f is None else 1e3 * statistics.median(times[id(f)]) for f in fns]


def rel_diff(got, want):
    if isinstance(got, (tuple, list)):
        return max(rel_diff(g, w) for g, w in zip(got, want))
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs() / want.abs().clamp_min(1.0)).max().item()


class Row:
    def __init__(self, op, preset, shape, cpp_ms, ref_ms, compiled_ms, diff, ref_name="reference"):
        self.op, self.preset, self.shape = op, preset, shape
        self.cpp_ms, self.ref_ms, self.compiled_ms, self.diff, self.ref_name = cpp_ms, ref_ms, compiled_ms, diff, ref_name

    def cells(self):
        comp = "-" if self.compiled_ms is None else f"{self.compiled_ms:.2f}"
        comp_ratio = "-" if self.compiled_ms is None else f"{self.compiled_ms / self.cpp_ms:.2f}x"
        return [
            self.op,
            self.preset,
            self.shape,
            f"{self.cpp_ms:.2f}",
            f"{self.ref_ms:.2f}",
            comp,
            f"{self.ref_ms / self.cpp_ms:.2f}x",
            comp_ratio,
            "-" if self.diff != self.diff else f"{self.diff:.1e}",
        ]


HEADER = ["op", "preset", "shape", "C++ ms", "ref ms", "compiled ms", "ref/C++", "compiled/C++", "max rel diff"]


def print_table(rows):
    table = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def maybe_compile(fn, enabled):
    """``torch.compile(fn)`` with a fresh dynamo cache (each shape recompiles; without the
    reset the recompile limit would silently fall back to eager after a few shapes)."""
    if not enabled:
        return None
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


# ---------------------------------------------------------------------------------------
# Op rows
# ---------------------------------------------------------------------------------------


def bench_coupling(cpp, preset, cfg, batch, repeats, use_compile, rows):
    for c, s in zip(cfg["channels"], cfg["sizes"]):
        x = torch.randn(batch, c, s, s)
        a = torch.randn(batch, 2 * (c // 2), s, s)
        g = torch.rand(c) + 0.5
        b = torch.randn(c)
        perm = torch.randperm(c)
        for reverse in (False, True):
            compiled = maybe_compile(reference.affine_coupling, use_compile)
            args = (x, a, g, b, perm, 2.0, 0.1, reverse)
            want = reference.affine_coupling(*args)
            got = cpp.affine_coupling(*args)
            t_cpp, t_ref, t_cmp = median_ms(
                [
                    lambda: cpp.affine_coupling(*args),
                    lambda: reference.affine_coupling(*args),
                    (lambda: compiled(*args)) if compiled else None,
                ],
                repeats,
            )
            name = "affine_coupling" + (" (inverse)" if reverse else "")
            rows.append(Row(name, preset, f"{batch}x{c}x{s}x{s}", t_cpp, t_ref, t_cmp, rel_diff(got, want)))
            print(f"  {name} {preset} C={c} {s}x{s}: C++ {t_cpp:.2f} ms, ref {t_ref:.2f} ms", flush=True)


def bench_flow_nll(cpp, preset, cfg, batch, repeats, use_compile, rows):
    for c, s in zip(cfg["channels"], cfg["sizes"]):
        compiled = maybe_compile(reference.flow_nll, use_compile)
        z = torch.randn(batch, c, s, s)
        ld = torch.randn(batch) * 100
        want = reference.flow_nll(z, ld)
        got = cpp.flow_nll(z, ld)
        t_cpp, t_ref, t_cmp = median_ms(
            [lambda: cpp.flow_nll(z, ld), lambda: reference.flow_nll(z, ld), (lambda: compiled(z, ld)) if compiled else None],
            repeats,
        )
        rows.append(Row("flow_nll", preset, f"{batch}x{c}x{s}x{s}", t_cpp, t_ref, t_cmp, rel_diff(got, want)))
        print(f"  flow_nll {preset} C={c}: C++ {t_cpp:.2f} ms, ref {t_ref:.2f} ms", flush=True)


def bench_score(cpp, preset, cfg, batch, repeats, use_compile, rows):
    zs = [torch.randn(batch, c, s, s) for c, s in zip(cfg["channels"], cfg["sizes"])]
    size = (cfg["image"], cfg["image"])
    compiled = maybe_compile(reference.multiscale_score, use_compile)
    want = reference.multiscale_score(zs, size)
    got = cpp.multiscale_score(zs, size)
    t_cpp, t_ref, t_cmp = median_ms(
        [
            lambda: cpp.multiscale_score(zs, size),
            lambda: reference.multiscale_score(zs, size),
            (lambda: compiled(zs, size)) if compiled else None,
        ],
        repeats,
    )
    shape = "+".join(f"{c}x{s}" for c, s in zip(cfg["channels"], cfg["sizes"])) + f"->{size[0]}"
    rows.append(Row("multiscale_score", preset, f"{batch}x[{shape}]", t_cpp, t_ref, t_cmp, rel_diff(got, want)))
    print(f"  multiscale_score {preset}: C++ {t_cpp:.2f} ms, ref {t_ref:.2f} ms", flush=True)


FIBRE_SHAPES = ((64, 512), (64, 1024), (64, 2048), (8192, 128), (8192, 512))


def bench_fibres(repeats, rows, with_4d=False):
    """``[N, C]`` coupling rows: C++ (2-D, and the ``[N, C, 1, 1]`` view with ``with_4d``)
    against the reference, forward and forward+backward (gradients of x, a, g, b)."""
    for n, c in FIBRE_SHAPES:
        gen = torch.Generator().manual_seed(n + c)
        x = torch.randn(n, c, generator=gen)
        a = 3.0 * torch.randn(n, 2 * (c // 2), generator=gen)
        g = torch.rand(c, generator=gen) + 0.5
        b = torch.randn(c, generator=gen)
        perm = torch.randperm(c, generator=gen)

        def fwd(backend, view4d=False):
            xx, aa = (x[..., None, None], a[..., None, None]) if view4d else (x, a)
            if backend == "reference":
                return reference.affine_coupling(xx, aa, g, b, perm, 1.9, 0.1)
            return ops_affine_coupling(xx, aa, g, b, perm, 1.9, 0.1, backend=backend)

        leaves = [t.clone().requires_grad_() for t in (x, a, g, b)]

        def train(backend, view4d=False):
            xx, aa, gg, bb = leaves
            if view4d:
                xx, aa = xx[..., None, None], aa[..., None, None]
            if backend == "reference":
                y, ld = reference.affine_coupling(xx, aa, gg, bb, perm, 1.9, 0.1)
            else:
                y, ld = ops_affine_coupling(xx, aa, gg, bb, perm, 1.9, 0.1, backend=backend)
            (0.5 * y.square().sum() - ld.sum()).backward()

        with torch.no_grad():
            want = fwd("reference")
            got = fwd("cpp")
            t_cpp, t_ref, t_4d = median_ms(
                [lambda: fwd("cpp"), lambda: fwd("reference"), (lambda: fwd("cpp", True)) if with_4d else None],
                repeats)
        shape = f"{n}x{c}"
        rows.append(Row("coupling [N, C] fwd", "fibres", shape, t_cpp, t_ref, None, rel_diff(got, want)))
        if with_4d:
            rows.append(Row("coupling [N, C, 1, 1] fwd", "fibres", shape + "x1x1", t_4d, t_ref, None, float("nan")))
        t_cpp_b, t_ref_b, t_4d_b = median_ms(
            [lambda: train("cpp"), lambda: train("reference"), (lambda: train("cpp", True)) if with_4d else None],
            repeats)
        rows.append(Row("coupling [N, C] fwd+bwd", "fibres", shape, t_cpp_b, t_ref_b, None, float("nan")))
        if with_4d:
            rows.append(Row("coupling [N, C, 1, 1] fwd+bwd", "fibres", shape + "x1x1", t_4d_b, t_ref_b, None,
                            float("nan")))
        extra = f", [N,C,1,1] {t_4d:.3f} / {t_4d_b:.3f} ms" if with_4d else ""
        print(f"  coupling fibres {shape}: fwd C++ {t_cpp:.3f} ms, ref {t_ref:.3f} ms; "
              f"fwd+bwd C++ {t_cpp_b:.3f} ms, ref {t_ref_b:.3f} ms{extra}", flush=True)


# ---------------------------------------------------------------------------------------
# Flow stage: FrEIA AllInOneBlock x 8 versus the same weights through the C++ coupling
# ---------------------------------------------------------------------------------------


def subnet(c_in, c_out, k):
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, k, padding=k // 2, groups=c_in), nn.LeakyReLU(0.1), nn.Conv2d(c_in, c_out, 1)
    )


def freia_stage(c, s, steps):
    from FrEIA.modules import AllInOneBlock

    blocks = nn.ModuleList()
    for k in range(steps):
        ksize = 3 if k % 2 == 0 else 1
        blk = AllInOneBlock(
            [(c, s, s)],
            subnet_constructor=lambda ci, co, ksize=ksize: subnet(ci, co, ksize),
            affine_clamping=2.0,
            permute_soft=False,
        )
        with torch.no_grad():  # move away from the identity init so the check means something
            blk.global_scale.add_(0.3 * torch.randn_like(blk.global_scale))
            blk.global_offset.add_(0.1 * torch.randn_like(blk.global_offset))
        blocks.append(blk)
    return blocks


def freia_forward(blocks, x):
    logdet = x.new_zeros(x.shape[0])
    for blk in blocks:
        (x,), ld = blk([x])
        logdet = logdet + ld
    return x, logdet


def run_subnet(seq, x, k1_affine):
    """The block's subnet; with ``k1_affine`` a 1x1 depthwise conv is evaluated as the
    per-channel affine it is (PyTorch runs grouped 1x1 convs as one conv per group + cat)."""
    dw, act, pw = seq[0], seq[1], seq[2]
    if k1_affine and dw.kernel_size == (1, 1):
        h = torch.addcmul(dw.bias.view(1, -1, 1, 1), x, dw.weight.view(1, -1, 1, 1))
    else:
        h = dw(x)
    return pw(act(h))


def cpp_forward(blocks, perms, x, k1_affine=False):
    logdet = x.new_zeros(x.shape[0])
    for blk, perm in zip(blocks, perms):
        c1 = x.shape[1] - x.shape[1] // 2
        a = run_subnet(blk.subnet, x[:, :c1], k1_affine)
        g = 0.1 * F.softplus(blk.global_scale, beta=0.5).reshape(-1)
        b = blk.global_offset.reshape(-1)
        x, ld = ops_affine_coupling(x, a, g, b, perm, 2.0, 0.1, backend="cpp")
        logdet = logdet + ld
    return x, logdet


def bench_flow_stage(preset, cfg, batch, repeats, rows, steps=8):
    try:
        import FrEIA  # noqa: F401
    except ImportError:
        print("  flow_stage: FrEIA is not installed, skipped")
        return
    for c, s in zip(cfg["channels"], cfg["sizes"]):
        blocks = freia_stage(c, s, steps)
        perms = [blk.w_perm[:, :, 0, 0].argmax(dim=1).contiguous() for blk in blocks]
        x = torch.randn(batch, c, s, s)
        shape = f"{batch}x{c}x{s}x{s}"
        with torch.no_grad():
            want = freia_forward(blocks, x)
            got = cpp_forward(blocks, perms, x)
            got_k1 = cpp_forward(blocks, perms, x, k1_affine=True)
            t_cpp, t_k1, t_ref = median_ms(
                [
                    lambda: cpp_forward(blocks, perms, x),
                    lambda: cpp_forward(blocks, perms, x, k1_affine=True),
                    lambda: freia_forward(blocks, x),
                ],
                repeats,
            )
        rows.append(Row(f"flow_stage fwd ({steps} steps)", preset, shape, t_cpp, t_ref, None, rel_diff(got, want)))
        rows.append(Row("flow_stage fwd, k=1 dw as affine", preset, shape, t_k1, t_ref, None, rel_diff(got_k1, want)))
        print(f"  flow_stage fwd {preset} C={c}: C++ {t_cpp:.2f} ms ({t_k1:.2f} ms k1-affine), FrEIA {t_ref:.2f} ms", flush=True)

        def train_step(fwd, *args, **kw):
            y, ld = fwd(*args, **kw)
            loss = (0.5 * y.pow(2).flatten(1).sum(1) - ld).mean()
            loss.backward()

        t_cpp, t_ref = median_ms(
            [lambda: train_step(cpp_forward, blocks, perms, x, k1_affine=True), lambda: train_step(freia_forward, blocks, x)],
            max(3, repeats // 2),
        )
        rows.append(Row("flow_stage fwd+bwd, k=1 dw as affine", preset, shape, t_cpp, t_ref, None, float("nan")))
        print(f"  flow_stage fwd+bwd {preset} C={c}: C++ {t_cpp:.2f} ms, FrEIA {t_ref:.2f} ms", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["lite", "paper", "all"], default="all")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile(reference) column")
    parser.add_argument("--no-stage", action="store_true", help="skip the FrEIA flow-stage comparison")
    parser.add_argument(
        "--stage-paper", action="store_true", help="also run the flow-stage comparison at paper shapes (minutes)"
    )
    parser.add_argument("--ops", default="coupling,flow_nll,score,stage", help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--fibre-4d", action="store_true", help="fibres: also time the [N, C, 1, 1] view")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    import dadf_fast
    from dadf_fast.kernels.cpp import ops as cpp  # raises ImportError with the reason when the extension is missing/stale

    info = dadf_fast.backends()["cpp"]["cpu"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpp backend: {info['reason']}")
    torch.manual_seed(0)
    ops = set(args.ops.split(","))
    presets = ["lite", "paper"] if args.preset == "all" else [args.preset]
    rows = []
    for preset in presets:
        cfg = PRESETS[preset]
        repeats = args.repeats if preset == "lite" else max(3, args.repeats // 2)
        use_compile = not args.no_compile
        if "coupling" in ops:
            bench_coupling(cpp, preset, cfg, args.batch, repeats, use_compile, rows)
        if "flow_nll" in ops:
            bench_flow_nll(cpp, preset, cfg, args.batch, repeats, use_compile, rows)
        if "score" in ops:
            bench_score(cpp, preset, cfg, args.batch, repeats, use_compile, rows)
        if "stage" in ops and not args.no_stage and (preset == "lite" or args.stage_paper):
            bench_flow_stage(preset, cfg, args.batch, repeats, rows)
    if "fibres" in ops:
        bench_fibres(args.repeats, rows, with_4d=args.fibre_4d)
    print()
    print_table(rows)
    print("\nref/C++ and compiled/C++ > 1 mean the C++ op is faster; flow_stage's reference is FrEIA AllInOneBlock.")


if __name__ == "__main__":
    main()
