#!/usr/bin/env bash
# gpubpe on a CUDA device, in one call of under 8 minutes, from the source tree:
#   1. pytest -m gpu           the kernel, driver and training tests on the device
#   2. compute-sanitizer       memcheck and racecheck on a small training
#   3. the benchmark           CUDA vs Numba merge loop at vocab 32,000 and each
#                              kernel's bandwidth (benchmarks/bench_kernels.py)
#   4. the cost model          the same corpus through bench_kernels.py --model
#                              (the cuda-sim schedule charged with fixed
#                              parameters), printed beside the measured loop
#   5. device pre-tokenization count_pretokens(backend='cuda')'s path on 64 MB of
#                              the corpus: counts against the CPU's (exact),
#                              GB/s end to end and per kernel (bench_kernels.py --pretok)
# and a short report, $OUT/gpu_check.md (plus the logs, at most 8 files).
#
# Needs what a bare device machine has: Python with CuPy, Numba, NumPy, pytest,
# hypothesis. Nothing is downloaded. Wheels carried in .whl/ (e.g. rustbpe, or
# regex if missing) are installed to /tmp/site first.
#
#   OUT=/tmp/check scripts/gpu_check.sh
#   GPUBPE_BENCH_CORPUS=/data/corpus.txt scripts/gpu_check.sh   # else: auto:$GPUBPE_BENCH_MB of .py files
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GPUBPE_CACHE_DIR="${GPUBPE_CACHE_DIR:-/tmp/gpubpe-cache}"
REPORT="$OUT/gpu_check.md"
T0=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
    echo "# gpubpe GPU check"
    echo
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
    "$PY" -c "import cupy, numba, numpy; d = cupy.cuda.runtime.getDeviceProperties(0); \
print('cupy', cupy.__version__, '| numba', numba.__version__, '| numpy', numpy.__version__, '|', d['name'].decode(), \
'| SMs', d['multiProcessorCount'])" 2>&1
    echo '```'
    echo
    echo "| step | exit | seconds |"
    echo "|:---|:---|:---|"
} > "$REPORT"

step() {  # step NAME LIMIT_S LOG command...
    local name=$1 limit=$2 log=$3 start rc
    shift 3
    start=$(date +%s)
    echo "== $name" | tee -a "$log"
    timeout "$limit" "$@" >> "$log" 2>&1
    rc=$?
    echo "| $name | $rc$([ $rc = 124 ] && echo ' (timeout)') | $(( $(date +%s) - start )) |" >> "$REPORT"
    return $rc
}

# 1. the tests on the device ----------------------------------------------------
# a bare machine may lack hypothesis or regex: the modules that need them are
# then reported as collection errors while the rest still runs
step "pytest -m gpu" 130 "$OUT/pytest_gpu.log" \
    "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
    tests/test_kernels.py tests/test_cuda_backend.py tests/test_train.py tests/test_device_pretok.py

# 2. compute-sanitizer on a small training ---------------------------------------
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)"
cat > /tmp/gpubpe_small_training.py <<'EOF'
# A small training on the device; CuPy's memory pool is off so every array is
# its own cudaMalloc and memcheck sees accesses past its end.
import sys
from collections import Counter
import cupy
import numpy as np
cupy.cuda.set_allocator(None)
sys.path.insert(0, "tests")
from reference import reference_pretokens
from gpubpe import backends
from gpubpe.backends import cuda
from gpubpe.wordtable import WordTable
data = open("tests/fixtures/corpus.en", "rb").read()
table = WordTable.from_counts(Counter(reference_pretokens(data, ["<|endoftext|>"])))
cuda.STEP_BATCH = 4  # several batches, graph capture and replay included
cuda.RUN_WALK = 2  # runs of more than 2 members go to step_find's last block (its scan checked too)
merges, _, _ = backends.get("cuda")(table, 300, np.zeros(1, np.int64))
ref, _, _ = backends._cpu("python")(table, 300, np.zeros(1, np.int64))
assert merges.tolist() == ref.tolist(), "merges differ from the CPU backend"
print("small training ok:", len(merges), "merges")
EOF
if [ -n "$SAN" ]; then
    for tool in memcheck racecheck; do
        step "compute-sanitizer $tool" 50 "$OUT/sanitizer.log" \
            "$SAN" --tool "$tool" --error-exitcode 9 "$PY" /tmp/gpubpe_small_training.py
    done
    grep -h "ERROR SUMMARY\|RACECHECK SUMMARY\|small training ok" "$OUT/sanitizer.log" | sed 's/^/    /' >> "$REPORT"
else
    echo "| compute-sanitizer | not found (no CUDA toolkit here): not checked | 0 |" >> "$REPORT"
fi

# 3. the benchmark -----------------------------------------------------------------
CORPUS="${GPUBPE_BENCH_CORPUS:-auto:${GPUBPE_BENCH_MB:-64}}"
step "bench_kernels ($CORPUS)" 110 "$OUT/bench.log" \
    "$PY" benchmarks/bench_kernels.py --corpus "$CORPUS" --vocab 32000 --out "$OUT"

# 4. the cost model on the same corpus (cuda-sim; no device used) ----------------------
step "cost model ($CORPUS)" 80 "$OUT/model.log" \
    "$PY" benchmarks/bench_kernels.py --model --corpus "$CORPUS" --vocab 32000 --out "$OUT"

# 5. pre-tokenization and counting on the device ---------------------------------------
step "device pre-tokenization ($CORPUS, 64 MB)" 60 "$OUT/pretok.log" \
    "$PY" benchmarks/bench_kernels.py --pretok --pretok-mb 64 --corpus "$CORPUS" --out "$OUT"

{
    echo
    echo "pytest: $(grep -E '(passed|failed|error|skipped)' "$OUT/pytest_gpu.log" | tail -1)"
    echo
    echo "Model against measurement (same corpus, same WordTable):"
    echo
    echo "- measured: $("$PY" -c "import json; r = json.load(open('$OUT/bench_kernels.json')); \
print(f\"cuda loop {r['cuda_s']:.3f} s, numba {r.get('numba_s', float('nan')):.2f} s, ratio {r.get('speedup', float('nan')):.1f}\")" 2>&1 | tail -1)"
    echo "- model:    $(tail -1 "$OUT/model.log")"
    echo
    if [ -f "$OUT/bench_kernels.md" ]; then cat "$OUT/bench_kernels.md"; else tail -20 "$OUT/bench.log"; fi
    echo
    echo "Device pre-tokenization and counting: $(tail -1 "$OUT/pretok.log")"
    echo
    if [ -f "$OUT/bench_pretok_device.md" ]; then cat "$OUT/bench_pretok_device.md"; else tail -20 "$OUT/pretok.log"; fi
    echo
    echo "Total: $(( $(date +%s) - T0 )) s"
} >> "$REPORT"
cat "$REPORT"
