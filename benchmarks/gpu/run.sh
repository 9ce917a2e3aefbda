#!/usr/bin/env bash
# The GPU suite in one command, for a machine with one GPU and no package registry:
#   bash benchmarks/gpu/run.sh OUT_DIR [--budget-s SECONDS]
# 1. builds the extension against the installed (CUDA) torch: pip install --no-build-isolation --no-deps -e .
# 2. compiles every Triton kernel for the GPU and runs every CUDA and Triton test (tests/ops on the
#    cuda and triton backends, and every test marked gpu);
# 3. benchmarks the ops (benchmarks/gpu/bench.py): sampler vs the one-read floor, PRM step scores, FLCE vs
#    Liger's FLCE when importable.
# Everything goes to OUT_DIR: env.txt (device, versions), build.log, tests-*.log / .xml, bench.json / .md,
# summary.txt (one line per step with its status and seconds). Each step is time-bounded so the whole run
# stays under about 8 minutes (the default --budget-s 480); a failing step is recorded and the next runs.
# Exit status: 0 when every step passed, 1 otherwise, 2 on bad arguments.
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu/run.sh OUT_DIR [--budget-s SECONDS] [--python PYTHON] [--skip-build]" >&2; }
OUT=""; BUDGET=480; PY="${PYTHON:-python}"; SKIP_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-s) [ $# -ge 2 ] || { usage; exit 2; }; BUDGET="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || { usage; exit 2; }; PY="$2"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; usage; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "run.sh: one OUT_DIR only" >&2; usage; exit 2; }; OUT="$1"; shift ;;
  esac
done
[ -n "$OUT" ] || { usage; exit 2; }
case "$BUDGET" in ''|*[!0-9]*) echo "run.sh: --budget-s must be a whole number of seconds, got '$BUDGET'" >&2; exit 2 ;; esac
[ "$BUDGET" -ge 60 ] || { echo "run.sh: --budget-s must be at least 60" >&2; exit 2; }

cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
START=$(date +%s)
FAILED=0
: > "$OUT/summary.txt"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME SECONDS CMD...: run CMD under `timeout`, log to OUT/NAME.log, one line in summary.txt.
step() {
  local name="$1" limit="$2"; shift 2
  local rem; rem=$(left)
  if [ "$limit" -gt "$rem" ]; then limit=$rem; fi
  if [ "$limit" -le 5 ]; then
    echo "$name: SKIPPED (time budget spent)" | tee -a "$OUT/summary.txt"; FAILED=1; return
  fi
  local t0; t0=$(date +%s)
  echo "== $name (at most ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMED OUT"; FAILED=1
  elif [ $rc -ne 0 ]; then status="FAILED (rc $rc)"; FAILED=1; fi
  echo "$name: $status in $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/$name.log"
}

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 || echo "nvidia-smi: unavailable"
  "$PY" - <<'PY' 2>&1
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton: not importable:", e)
try:
    import numpy; print("numpy", numpy.__version__)
except ImportError:
    print("numpy: not importable")
PY
} > "$OUT/env.txt"
cat "$OUT/env.txt"

# Step 1: the extension, built against this torch (no isolation: there is no registry to fetch build deps).
if [ "$SKIP_BUILD" -eq 0 ]; then
  step build 240 env MSTAR_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps -v -e .
fi
step extension 60 "$PY" -c "
import torch, mstar_fast._ext as e
mod, why = e.load_extension()
assert mod is not None, why
print('extension with CUDA kernels:', e.extension_has_cuda())
assert e.extension_has_cuda(), 'mstar_fast._C has no CUDA kernels'
"

# Step 2: tests. TRITON_INTERPRET must be unset so Triton compiles for the GPU (tests/conftest.py sets it only
# where there is no CUDA device).
unset TRITON_INTERPRET
step tests-ops 200 "$PY" -m pytest tests/ops -q -p no:cacheprovider -k "cuda or triton" -rfEs \
  --junitxml="$OUT/tests-ops.xml"
# pytest exits 5 when nothing is marked gpu outside tests/ops: that is not a failure here.
step tests-gpu 60 bash -c '"$@"; rc=$?; [ $rc -eq 5 ] && { echo "no gpu-marked tests outside tests/ops"; exit 0; }; exit $rc' _ \
  "$PY" -m pytest tests -q -p no:cacheprovider -m gpu --ignore=tests/ops -rfEs --junitxml="$OUT/tests-gpu.xml"

# Step 3: benchmarks, with whatever time is left (bench.py stops starting cases at its own budget).
rem=$(left)
step bench "$rem" "$PY" benchmarks/gpu/bench.py "$OUT" --budget-s $(( rem > 30 ? rem - 30 : 1 ))

echo "total: $(( $(date +%s) - START ))s" | tee -a "$OUT/summary.txt"
exit $FAILED
