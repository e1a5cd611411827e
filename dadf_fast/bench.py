"""``dadf-fast bench``: end-to-end inference throughput of the backends on random images.

Medians over repeated timed runs after warm-up, with device synchronisation; the ratio
column is against ``backend="torch"`` (the reference computation) measured in the same run.
Timing does not depend on weight values, so the paper preset runs with random weights.
"""
from __future__ import annotations

import statistics
import time

import torch


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, warmup: int = 1, reps: int = 3) -> float:
    """Median seconds of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_bench(preset: str = "lite", batch_sizes=None, quick: bool = False, csv: str | None = None,
              device: str = "cpu", backends=("torch", "auto"), print_fn=print) -> list:
    from . import DADF
    from .ops import selected_backend

    if batch_sizes is None:
        batch_sizes = [1, 8] if torch.device(device).type == "cpu" else [1, 8, 32]
    if quick:
        batch_sizes = batch_sizes[:2]
    size = 256
    torch.manual_seed(0)
    model = DADF(preset, pretrained=False, input_size=size).to(device).eval()
    rows = []
    for bs in batch_sizes:
        x = torch.randn(bs, 3, size, size, device=device)
        base = None
        for backend in backends:
            model.set_backend(backend)
            resolved = {op: selected_backend(op, backend, device, x.dtype)
                        for op in ("dual_attention", "affine_coupling", "multiscale_score")}
            sec = time_fn(lambda: model.predict(x), device, warmup=1, reps=2 if quick else 5)
            ips = bs / sec
            base = ips if backend == "torch" else base
            rows.append(dict(preset=preset, device=device, batch=bs, backend=backend,
                             ops="/".join(f"{k}={v}" for k, v in resolved.items()),
                             seconds=sec, images_per_s=ips, ratio=ips / base if base else float("nan")))
    print_fn(f"{'preset':<7}{'batch':>6}  {'backend':<8}{'img/s':>9}{'vs torch':>10}  ops")
    for r in rows:
        print_fn(f"{r['preset']:<7}{r['batch']:>6}  {r['backend']:<8}{r['images_per_s']:>9.2f}{r['ratio']:>9.2f}x  {r['ops']}")
    if csv:
        import csv as _csv

        from ._io import atomic_open

        with atomic_open(csv, "w") as f:
            w = _csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows
