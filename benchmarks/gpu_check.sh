#!/usr/bin/env bash
# One-shot GPU check: build the extension with CUDA (JIT, as on first use), run the GPU tests,
# the op benchmarks and the end-to-end suite, writing everything into OUTDIR.  Made for a
# GPU machine without network (one H200, Python 3.12, torch 2.11, Triton 3.6, pytest, ninja,
# timm).
#
#   bash benchmarks/gpu_check.sh OUTDIR            # run from the repository root
#
# Every step runs under `timeout`, the script never stops at a failing step, and a global
# deadline (DEADLINE_S, default 400 s) shortens or skips the last steps so that the whole
# script ends within 7 minutes.  OUTDIR/summary.txt has one line per step: name, exit code
# (124 = timed out, "skip" = no time left), seconds; each step's output is OUTDIR/<step>.log.
# At the end everything is also packed into OUTDIR/results.tar.gz (the device tool brings
# back at most 8 files: copy summary.txt and results.tar.gz to $OUT).
set -u
OUTDIR=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.."
DEADLINE_S=${DEADLINE_S:-400}
START=$(date +%s)
SUMMARY="$OUTDIR/summary.txt"
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export DADF_FAST_CUDA=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: n/a"
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())" 2>&1
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
  echo "# step rc seconds"
} > "$SUMMARY"

# step NAME MAX_SECONDS CMD...: run CMD under timeout (capped by the deadline), log, record rc.
step() {
  local name=$1 limit=$2; shift 2
  local now left t0 rc
  now=$(date +%s); left=$((DEADLINE_S - (now - START) - 5))
  if [ "$left" -lt 15 ]; then
    echo "$name skip 0" >> "$SUMMARY"; echo "== $name: skipped (deadline)"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (timeout ${limit}s): $*"
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$SUMMARY"
  tail -n 5 "$OUTDIR/$name.log"
  return 0
}

# the package's own JIT builder (DADF_FAST_CUDA=1 above): compiles into ~/.cache/dadf_fast
# (or DADF_FAST_EXT_DIR) and prints the library path and the seconds it took
step build 170 $PY -m dadf_fast.kernels.cpp.build
step backends 30 $PY -c "import dadf_fast, json; print(json.dumps(dadf_fast.backends(), indent=1, default=str))"

# GPU tests first (bf16, paper shapes, CUDA kernels), then the cpp/triton files as a whole.
step pytest_gpu 75 $PY -m pytest -q -x -m gpu tests/ -p no:cacheprovider --junitxml="$OUTDIR/pytest_gpu.xml"

# the end-to-end suite.  Issue 7's H200 bars: paper preset, batch 64, bf16 inference >= 1000
# img/s, >= 3x the fp32 eager reference (bench_paper_infer_fp32, torch row at batch 64) and
# >= 1.3x torch.compile of the reference in bf16 (the compile row of bench_paper_infer_bf16).
BENCH="$PY -m dadf_fast.cli.commands bench --device cuda --reps 5 --warmup 2"
step bench_paper_infer_fp32 60 $BENCH --preset paper --tasks infer --variants torch auto auto-graph \
  --batch-sizes 1 8 32 64 --csv "$OUTDIR/bench_paper_infer_fp32.csv" --json "$OUTDIR/bench_paper_infer_fp32.json" \
  --plot "$OUTDIR/bench_paper_infer_fp32.png"
step bench_paper_infer_bf16 100 $BENCH --preset paper --dtype bfloat16 --tasks infer \
  --variants torch compile auto auto-graph auto-compile --batch-sizes 64 \
  --csv "$OUTDIR/bench_paper_infer_bf16.csv" --json "$OUTDIR/bench_paper_infer_bf16.json"
step bench_paper_train 45 $BENCH --preset paper --tasks stage1 stage2 --variants torch auto --batch-sizes 8 32 \
  --csv "$OUTDIR/bench_paper_train.csv" --json "$OUTDIR/bench_paper_train.json"
step bench_lite_fp32 40 $BENCH --preset lite --variants torch auto auto-graph --batch-sizes 1 8 32 \
  --csv "$OUTDIR/bench_lite_fp32.csv" --json "$OUTDIR/bench_lite_fp32.json"
step coupling 30 $PY benchmarks/coupling.py --device cuda --k 3 1 --json "$OUTDIR/coupling_fp32.json"
step attention 40 $PY benchmarks/attention.py --device cuda --json "$OUTDIR/attention.json"
step coupling_bf16 20 $PY benchmarks/coupling.py --device cuda --dtype bfloat16 --k 3 1 --json "$OUTDIR/coupling_bf16.json"
# anomalib's flow models, original vs dadf_fast.integrations.accelerate (docs/integrations.md);
# anomalib is an optional extra the GPU machine may not have
if $PY -c "import anomalib" > /dev/null 2>&1; then
  step integrations 45 $PY benchmarks/integrations.py --quick --device cuda --json "$OUTDIR/integrations.json"
else
  echo "integrations skip 0 (anomalib not importable)" >> "$SUMMARY"; echo "== integrations: skipped (no anomalib)"
fi
step pytest_kernels 60 $PY -m pytest -q tests/kernels tests/ops tests/models/test_dadf_backends.py \
  tests/test_extension_build.py -p no:cacheprovider

echo "total $(( $(date +%s) - START ))" >> "$SUMMARY"
tar czf "$OUTDIR/results.tar.gz" -C "$OUTDIR" --exclude results.tar.gz . 2>/dev/null
cat "$SUMMARY"
exit 0
