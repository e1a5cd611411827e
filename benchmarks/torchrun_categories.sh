#!/usr/bin/env bash
# Issue 16's CPU bar: wall time of training the demo's three categories with one process
# against two torchrun processes (category parallelism; the third category data-parallel),
# and the machine's floor for any split: one category trained by one process of one thread.
# Run on an otherwise idle machine (a timing taken beside another job is worthless).
#   bash benchmarks/torchrun_categories.sh [WORKDIR]      (default: a fresh temporary folder)
set -euo pipefail
W=${1:-$(mktemp -d)}
mkdir -p "$W" && cd "$W"
rm -rf data single dist one_thread
python -c "from dadf_fast.data.synthetic import make_dataset; make_dataset('data', seed=0)"
now() { python -c 'import time; print(time.perf_counter())'; }
t0=$(now); dadf-fast train --data data --category all --out single --quiet > single.log 2>&1; t1=$(now)
torchrun --standalone --nproc-per-node 2 -m dadf_fast.cli train --data data --category all --out dist --quiet \
    > dist.log 2>&1; t2=$(now)
OMP_NUM_THREADS=1 dadf-fast train --data data --category brick --out one_thread --quiet > one_thread.log 2>&1; t3=$(now)
python - "$t0" "$t1" "$t2" "$t3" <<'PY'
import sys
t0, t1, t2, t3 = map(float, sys.argv[1:])
single, dist, one = t1 - t0, t2 - t1, t3 - t2
print(f"1 process (all threads): {single:.1f} s; 2 processes: {dist:.1f} s = {dist / single:.3f}x")
print(f"brick, 1 process of 1 thread: {one:.1f} s; floor of any 2-process split of the 3 categories: "
      f"3 x {one:.1f} / 2 = {1.5 * one:.1f} s = {1.5 * one / single:.3f}x")
PY
grep -h "^[a-z]* *ok" single.log dist.log
