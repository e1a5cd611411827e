"""Run a benchmark's categories as child processes, ``jobs`` at a time (one category per
process: a fresh torch, one thread each, so two jobs fill two cores without sharing a
process's thread pool).  Shared by the accuracy benchmark scripts."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def run_categories(categories, jobs: int, spawn) -> list:
    """``spawn(category, json_path)`` starts a child (a ``subprocess.Popen``) that writes a
    JSON list of result dicts (each with a ``category``) to ``json_path``; returns those
    results in the order of ``categories``.  A child that fails is reported and left out."""
    pending, running, results = list(categories), [], []
    tmp = tempfile.mkdtemp(prefix="bench_jobs_")
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            cat = pending.pop(0)
            path = os.path.join(tmp, f"{cat.replace('@', '_')}.json")
            running.append((cat, path, spawn(cat, path)))
        time.sleep(2)
        for cat, path, proc in list(running):
            if proc.poll() is None:
                continue
            running.remove((cat, path, proc))
            if proc.returncode != 0:
                print(f"{cat}: failed (exit {proc.returncode})", file=sys.stderr)
                continue
            with open(path) as fh:
                results.extend(json.load(fh))
            print(f"done {cat} ({time.perf_counter() - t0:.0f} s)", flush=True)
    order = {c: i for i, c in enumerate(categories)}
    return sorted(results, key=lambda r: order[r["category"]])
