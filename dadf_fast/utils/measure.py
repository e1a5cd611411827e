"""Wall-clock and memory measurement shared by ``dadf-fast bench`` and benchmarks/*.py."""
from __future__ import annotations

import os
import statistics
import time

import torch


def sync(device) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA), so a clock read after it
    covers that work and not just its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, warmup: int = 1, reps: int = 3, cuda_events: bool = False) -> float:
    """Median seconds of ``reps`` calls of ``fn()`` after ``warmup`` untimed calls.

    Each timed call is ended by :func:`sync`, so the host clock covers the device work
    (launches included).  ``cuda_events=True`` times CUDA calls with CUDA events instead:
    device time only, what a kernel micro-benchmark wants."""
    for _ in range(warmup):
        fn()
    sync(device)
    events = cuda_events and torch.device(device).type == "cuda"
    times = []
    for _ in range(reps):
        if events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
            continue
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reset_peak_memory(device) -> None:
    """Restart the peak-memory count of :func:`peak_memory_mb` (on CPU only where Linux allows
    resetting the process's peak resident set size; elsewhere the peak only grows)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM) of the process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device) -> float:
    """Peak memory in MiB since :func:`reset_peak_memory`: ``torch.cuda.max_memory_allocated``
    on CUDA, the process's peak resident set size (``VmHWM``) on CPU; NaN where unknown."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover - non-POSIX
        return float("nan")


def extra_peak_memory_mb(fn, device) -> float | None:
    """MiB that one call of ``fn()`` allocates at its peak above what was allocated before it
    (CUDA only: None on other devices)."""
    if torch.device(device).type != "cuda":
        return None
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def load_note() -> str:
    """``"load 0.42"`` (the 1-minute load average) or ``""`` where unknown."""
    try:
        return f"load {os.getloadavg()[0]:.2f}"
    except (OSError, AttributeError):
        return ""
