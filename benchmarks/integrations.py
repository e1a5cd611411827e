"""Benchmark: the flow part of anomalib 2.7's flow models, original vs ``accelerate``\\ d.

For each anomalib model built on FrEIA's ``AllInOneBlock`` (FastFlow, CFLOW, UFLOW, PatchFlow)
at its default sizes, the flow part alone (random normal features in, hidden variables and
log-jacobians out; no backbone) runs as the model runs it:

* ``fastflow``   resnet18 features at 256x256: 3 ``SequenceINN`` of 8 blocks,
                 C=64/128/256 at 64/32/16 px, 3x3 and 1x1 conv subnets.
* ``cflow``      wide_resnet50_2 layers 2-4 at 256x256: 3 ``SequenceINN`` of 8 conditional
                 1-D blocks on ``[N, C]`` fibres (C=512/1024/2048, condition 128), fed in
                 chunks of ``fiber_batch_size=64`` rows as ``CflowModel`` does.
* ``uflow``      the default ``mcait`` feature sizes at 448x448 (C=768 at 28 px, 384 at 14 px):
                 one ``GraphINN`` of 2 x 4 blocks (built by ``UflowModel.build_flow``).
* ``patchflow``  the default fused feature map (C=128 at 32 px): one block whose subnet ends
                 in BatchNorm.

Rows: forward (``torch.no_grad``) and forward+backward (``0.5*sum z^2 - sum logdet``), median
seconds of the original and the accelerated copy measured alternately in one run, their ratio
(> 1: accelerated is faster), and how far the accelerated outputs are from the original's
(max abs difference of z; max abs difference of the log-jacobian over its max abs value).

    python benchmarks/integrations.py                    # CPU, batch 8, every model
    python benchmarks/integrations.py --quick            # batch 2, 1 timed rep: a smoke run
    python benchmarks/integrations.py --threads 1        # a loaded CPU: steadier ratios
    python benchmarks/integrations.py --device cuda --json out.json
    python benchmarks/integrations.py --models cflow --subnet-bound   # + CFLOW's subnets alone
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys

import torch
import torch.nn as nn

from dadf_fast.integrations import accelerate
from dadf_fast.utils.measure import time_fn

MODELS = ("fastflow", "cflow", "uflow", "patchflow")


class FlowPart:
    """One model's flow modules and how the model feeds them: ``runs`` is a list of
    ``(module index, x, condition or None, chunk rows or None)``."""

    def __init__(self, modules: list[nn.Module], runs: list):
        self.modules = nn.ModuleList(modules)
        self.runs = runs

    def __call__(self, modules: nn.ModuleList):
        zs, lds = [], []
        for i, x, cond, chunk in self.runs:
            if chunk is None:  # one call (x may be a GraphINN's list of inputs)
                outs = [modules[i](x)]
            else:
                outs = [modules[i](x[lo:lo + chunk], [cond[lo:lo + chunk]]) for lo in range(0, x.shape[0], chunk)]
            for z, ld in outs:
                zs += list(z) if isinstance(z, (list, tuple)) else [z]
                lds.append(ld)
        return zs, lds


def _randn(*shape, device, dtype):
    return torch.randn(*shape, device=device, dtype=dtype)


def build(name: str, batch: int, device, dtype) -> FlowPart:
    """The flow part of anomalib's ``name`` at its default sizes (random init, no hub)."""
    torch.manual_seed(0)
    kw = dict(device=device, dtype=dtype)
    if name == "fastflow":
        from anomalib.models.image.fastflow.torch_model import FastflowModel

        flows = list(FastflowModel((256, 256), "resnet18", pre_trained=False).fast_flow_blocks)
        runs = [(i, _randn(batch, *f.shapes[0], **kw), None, None) for i, f in enumerate(flows)]
        return FlowPart(flows, runs)
    if name == "cflow":
        from anomalib.models.image.cflow.torch_model import CflowModel
        from anomalib.models.image.cflow.utils import positional_encoding_2d

        model = CflowModel("wide_resnet50_2", ("layer2", "layer3", "layer4"), pre_trained=False)
        with torch.no_grad():
            acts = model.encoder(torch.zeros(1, 3, 256, 256))
        runs = []
        for i, layer in enumerate(model.pool_layers):
            _, c, h, w = acts[layer].shape
            cond = positional_encoding_2d(model.condition_vector, h, w).permute(1, 2, 0).reshape(h * w, -1)
            runs.append((i, _randn(batch * h * w, c, **kw), cond.repeat(batch, 1).to(**kw), model.fiber_batch_size))
        return FlowPart(list(model.decoders), runs)
    if name == "uflow":
        from anomalib.models.image.uflow.torch_model import UflowModel

        class McaitSizes:  # what build_flow reads of the default (mcait) feature extractor
            channels, scale_factors = [768, 384], [16, 32]

        shell = UflowModel.__new__(UflowModel)
        nn.Module.__init__(shell)
        shell.feature_extractor, shell.input_size = McaitSizes(), (448, 448)
        shell.affine_clamp, shell.affine_subnet_channels_ratio, shell.permute_soft = 2.0, 1.0, False
        flow = shell.build_flow(4)
        xs = [_randn(batch, c, 448 // s, 448 // s, **kw) for c, s in zip(McaitSizes.channels, McaitSizes.scale_factors)]
        return FlowPart([flow], [(0, xs, None, None)])
    if name == "patchflow":
        from anomalib.models.image.patchflow.torch_model import PatchflowModel

        flow = PatchflowModel((256, 256), pre_trained=False).flow
        return FlowPart([flow], [(0, _randn(batch, *flow.shapes[0], **kw), None, None)])
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def measure(name, batch, device, dtype, backend, warmup, reps, subnet_bound=False) -> dict:
    part = build(name, batch, device, dtype)
    orig = part.modules.to(device=device, dtype=dtype).train()
    fast = copy.deepcopy(orig)
    report = accelerate(fast, backend=backend)
    if report.left or not report.replaced:
        raise RuntimeError(f"{name}: not fully accelerated:\n{report}")

    with torch.no_grad():  # agreement, on the same inputs
        z0, l0 = part(orig)
        z1, l1 = part(fast)
    dz = max((a - b).abs().max().item() for a, b in zip(z0, z1))
    dl = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(l0, l1))

    def forward(mods):
        with torch.no_grad():
            part(mods)

    def train_step(mods):
        mods.zero_grad(set_to_none=True)
        zs, lds = part(mods)
        (sum(0.5 * (z ** 2).sum() for z in zs) - sum(ld.sum() for ld in lds)).backward()

    row = {"model": name, "blocks": len(report.replaced), "batch": batch, "max_abs_dz": dz, "max_rel_dlogdet": dl}
    for task, fn in (("forward", forward), ("forward+backward", train_step)):
        # alternate original and accelerated so that a change in machine load hits both
        t_orig, t_fast, t_sub = [], [], []
        for rep in range(reps):
            w = warmup if rep == 0 else 0
            t_orig.append(time_fn(lambda: fn(orig), device, warmup=w, reps=1))
            t_fast.append(time_fn(lambda: fn(fast), device, warmup=w, reps=1))
            if task == "forward" and subnet_bound and name == "cflow":
                t_sub.append(time_fn(lambda: cflow_subnets_only(part, orig), device, warmup=w, reps=1))
        t_orig, t_fast = sorted(t_orig)[len(t_orig) // 2], sorted(t_fast)[len(t_fast) // 2]
        row[task] = {"original_s": t_orig, "accelerated_s": t_fast, "speedup": t_orig / t_fast}
        if t_sub:
            row[task]["subnets_only_s"] = sorted(t_sub)[len(t_sub) // 2]
    return row


@torch.no_grad()
def cflow_subnets_only(part: FlowPart, modules: nn.ModuleList) -> None:
    """The subnet calls alone of CFLOW's forward (each block's ``Linear-ReLU-Linear`` on its
    chunk's first half and condition; the inputs are not the blocks' but have their shapes):
    the time a flow part whose coupling, permutation and log-det cost nothing would take."""
    for i, x, cond, chunk in part.runs:
        for lo in range(0, x.shape[0], chunk):
            xc = x[lo:lo + chunk]
            inp = torch.cat((xc[:, :xc.shape[1] - xc.shape[1] // 2], cond[lo:lo + chunk]), 1)
            for block in modules[i].module_list:
                block.subnet(inp)


def markdown(rows) -> str:
    out = ["| model | blocks | task | original s | accelerated s | speedup | max abs dz | max rel d logdet |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for task in ("forward", "forward+backward"):
            t = r[task]
            out.append(f"| {r['model']} | {r['blocks']} | {task} | {t['original_s']:.3f} | {t['accelerated_s']:.3f} | "
                       f"{t['speedup']:.2f}x | {r['max_abs_dz']:.1e} | {r['max_rel_dlogdet']:.1e} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--backend", default="auto", help="given to accelerate (default auto)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3, help="timed calls per variant (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); on a loaded machine 1 "
                   "thread gives steadier ratios than oversubscribed cores")
    p.add_argument("--quick", action="store_true", help="batch 2, 1 timed call: a smoke run")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--subnet-bound", action="store_true",
                   help="cflow: also time its subnets alone (forward), the floor of any coupling kernel")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.reps = 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.batch, args.device, dtype, args.backend, args.warmup, args.reps,
                            args.subnet_bound))
        print(f"{name}: forward {rows[-1]['forward']['speedup']:.2f}x, "
              f"forward+backward {rows[-1]['forward+backward']['speedup']:.2f}x", file=sys.stderr, flush=True)
    print(f"device {args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, {args.dtype}, backend {args.backend}, batch {args.batch}, "
          f"median of {args.reps} after {args.warmup} warm-up")
    print(markdown(rows))
    for r in rows:
        sub = r["forward"].get("subnets_only_s")
        if sub:
            print(f"{r['model']} forward, subnets alone: {sub:.3f} s ({sub / r['forward']['accelerated_s']:.0%} of the "
                  f"accelerated forward; a free coupling would give at most "
                  f"{r['forward']['original_s'] / sub:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
