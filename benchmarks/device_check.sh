#!/usr/bin/env bash
# One script for the lent GPU machine: build the CUDA extension, run the GPU tests, run the quick benchmark.
#
#   FASTATTN_GIT_SHA=<sha of the tree sent> bash benchmarks/device_check.sh
#
# (the machine gets a copy of the working tree without .git, so pass the sha literally). Writes under $OUT
# (at most 8 files come back, plain names, no deeper than 2 folders):
#   summary.md        what ran, how long, the pass/fail lines, the benchmark's summary table
#   build.log         pip install -e . (MAX_JOBS=16), with the build time
#   tests.log         pytest tests -m "gpu or cuda_ext or cuda_kernel or native_cuda_ext"
#   host.log          python3 -m fastattn.bench --host --quick (host time per call of the decode-step ops)
#   bench.log         python3 -m fastattn.bench --quick
#   sanitize.log      compute-sanitizer memcheck and racecheck over benchmarks/sanitize_cases.py (every CUDA kernel,
#                     small odd sizes; needs the Firecracker runtime: on gVisor the sanitizer refuses the device)
#   report.md         the benchmark report
#   results.tar.gz    benchmarks/results/ (report, CSV, JSON, PNG plots): untar at the repo root to commit them
# Every stage runs under `timeout`, so one stuck stage cannot eat the others' time; the whole script stays
# under 9 minutes (TOTAL_S). A failed stage is recorded and the next one still runs.
set -u -o pipefail
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-16}
# A cold machine compiles every autotuning config on first use (~30 s each for attention): one fixed config
# per case keeps the tests and the quick benchmark inside their stages. Set it to 1 for tuned figures.
export FASTATTN_TRITON_AUTOTUNE=${FASTATTN_TRITON_AUTOTUNE:-0}
OUT=${OUT:-/tmp/fastattn-device-check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

TOTAL_S=${TOTAL_S:-540}
HOST_S=${HOST_S:-40}
# Every test that needs the GPU, the nvcc build or runs the CUDA kernels (the emulated ones run here on the GPU).
TEST_MARKERS="gpu or cuda_ext or cuda_kernel or native_cuda_ext"
BUILD_S=${BUILD_S:-170}
TESTS_S=${TESTS_S:-110}
BENCH_S=${BENCH_S:-150}
SAN_S=${SAN_S:-45}  # each of memcheck and racecheck
t0=$(date +%s)
left() { echo $(( TOTAL_S - ($(date +%s) - t0) )); }
cap() { local want=$1 reserve=$2 l; l=$(( $(left) - reserve )); (( l < want )) && want=$l; (( want < 10 )) && want=10; echo "$want"; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.0f}')"; }

if [ -z "${FASTATTN_GIT_SHA:-}" ]; then
  FASTATTN_GIT_SHA=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
fi
export FASTATTN_GIT_SHA

{
  echo "# fastattn device check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); git: $FASTATTN_GIT_SHA"
  echo "- gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
  echo "- $(python3 -c 'import sys, torch, triton; print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")' 2>&1 | tail -1)"
  echo "- nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"
  echo "- FASTATTN_TRITON_AUTOTUNE=$FASTATTN_TRITON_AUTOTUNE FASTATTN_TRITON_HOPPER=${FASTATTN_TRITON_HOPPER:-0}"
} > "$OUT/summary.md"

# 1. Build the package and the CUDA extension.
s=$(now)
timeout --kill-after=10 "$(cap "$BUILD_S" 190)" \
  python3 -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1
build_rc=$?
build_s=$(secs "$s" "$(now)")
echo "build: exit $build_rc in $build_s s (MAX_JOBS=$MAX_JOBS)" >> "$OUT/build.log"
ext=$(python3 -c 'from fastattn import _cuda; print(_cuda.status())' 2>&1 | tail -1)

# 2. The GPU tests.
s=$(now)
timeout --kill-after=10 "$(cap "$TESTS_S" 155)" \
  python3 -m pytest tests -m "$TEST_MARKERS" -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -n 3
tests_rc=$?
tests_s=$(secs "$s" "$(now)")

# 3. Host time of the decode-step ops (kernels stubbed, and the real launch).
s=$(now)
timeout --kill-after=5 "$(cap "$HOST_S" 120)" \
  python3 -m fastattn.bench --host --quick --no-save > "$OUT/host.log" 2>&1
host_rc=$?
host_s=$(secs "$s" "$(now)")

# 4. compute-sanitizer memcheck and racecheck over a small call of every CUDA kernel.
s=$(now)
: > "$OUT/sanitize.log"
san_rc=0
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool" >> "$OUT/sanitize.log"
  timeout --kill-after=5 "$(cap "$SAN_S" 160)" \
    compute-sanitizer --tool "$tool" --error-exitcode 3 python3 benchmarks/sanitize_cases.py >> "$OUT/sanitize.log" 2>&1
  rc=$?; echo "== $tool: exit $rc" >> "$OUT/sanitize.log"; (( rc != 0 )) && san_rc=$rc
done
san_s=$(secs "$s" "$(now)")

# 5. The quick benchmark (its own budget keeps each section inside the stage's time).
s=$(now)
bench_t=$(cap "$BENCH_S" 5)
timeout --kill-after=10 "$bench_t" \
  python3 -m fastattn.bench --quick --no-progress --budget $(( bench_t - 40 )) > "$OUT/bench.log" 2>&1
bench_rc=$?
bench_s=$(secs "$s" "$(now)")

# The folder this run wrote (benchmarks/results/<gpu>/quick), from the bench's last line.
res=$(sed -n 's|^fastattn-bench: wrote \(.*\)/report.md.*|\1|p' "$OUT/bench.log" | tail -1)
res=${res#"$PWD/"}
if [ -n "$res" ] && [ -d "$res" ]; then
  cp "$res/report.md" "$OUT/report.md"
  tar czf "$OUT/results.tar.gz" "$res"
fi

{
  echo
  echo "| stage | exit | seconds | note |"
  echo "|---|---|---|---|"
  echo "| build (pip install -e ., MAX_JOBS=$MAX_JOBS) | $build_rc | $build_s | extension: $ext |"
  echo "| tests -m \"$TEST_MARKERS\" | $tests_rc | $tests_s | $(grep -E '(passed|failed|error|skipped|no tests ran)' "$OUT/tests.log" | tail -1) |"
  echo "| fastattn.bench --host --quick | $host_rc | $host_s | host.log |"
  echo "| compute-sanitizer memcheck + racecheck | $san_rc | $san_s | $(grep -E 'ERROR SUMMARY|exit' "$OUT/sanitize.log" | tr '\n' ' ' | cut -c1-200) |"
  echo "| fastattn.bench --quick | $bench_rc | $bench_s | results: ${res:-none} |"
  echo
  echo "Exit 124 or 137 means the stage hit its timeout. Total: $(( $(date +%s) - t0 )) s."
  echo
  if [ -f "$OUT/report.md" ]; then
    sed -n '/^## Ceilings/,/^## Softmax\|^## Sampling\|^## Decode\|^## Attention\|^## End-to-end/p' "$OUT/report.md" | sed '$d'
  fi
  echo
  grep -E '^\|' "$OUT/host.log" 2>/dev/null | head -8
  grep -E '^(FAILED|ERROR)' "$OUT/tests.log" | head -20 | sed 's/^/    /'
} >> "$OUT/summary.md"
cat "$OUT/summary.md"
