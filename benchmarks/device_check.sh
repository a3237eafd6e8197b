#!/usr/bin/env bash
# The GPU check of issue 12, as one command for a lent GPU (one H200: under 8 minutes):
#
#   bash benchmarks/device_check.sh OUT_DIR              # on the GPU machine
#   bash benchmarks/device_check.sh OUT_DIR --dry-run    # every step at toy size on the CPU
#   bash benchmarks/device_check.sh OUT_DIR --keep-going # run every step even after one fails
#
# Steps, each timed and run under `timeout` within its own budget and what is left of the total
# (DEVICE_CHECK_BUDGET_S, default 450 s; the dry run's are 10 times longer); the first failure stops the run (fail fast) unless
# --keep-going:
#   environment    torch / CUDA / card facts (a full run needs a CUDA GPU)
#   install        pip install -e ".[dev]", skipped when this checkout already imports
#   images         5,000 ImageNet-sized (500 x 375) JPEGs in a temporary folder (removed at exit)
#   pytest_cuda    pytest -m cuda tests/cuda
#   accumulate     bench_accumulate.py: update rate vs float64 GEMM rate, N = 50,000, d = 2048
#   core           bench_core.py --device cuda: streaming vs naive numpy, and the floor
#   solve          bench_solve.py --device cuda: eigvalsh vs svdvals, batched vs looped
#   probe_overhead bench_probe_overhead.py: ResNet-50 bf16, spectrum on 4 layers vs a bare loop
#   cli_images     bench_cli_images.py: `collapse-probe spectrum` on the JPEGs vs the hand-written way
#   train_ceiling  bench_train.py --ceiling: ResNet-50 bf16 channels_last step, augmented vs random
#
# Writes OUT_DIR/results.json (every step's command, exit code, seconds, parsed figures, and the
# issue's targets with whether each is met), OUT_DIR/device_check.log (everything printed) and
# one OUT_DIR/<step>.out per step. Exit status 0 when every step ran (targets missed or not).
# It installs nothing else and downloads nothing. PYTHON=... picks the interpreter (default: python).
set -uo pipefail

usage() { echo "usage: bash benchmarks/device_check.sh OUT_DIR [--dry-run] [--keep-going]" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
OUT=$1; shift
DRY=0; KEEP_GOING=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --keep-going) KEEP_GOING=1 ;;
    *) usage ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
PY=${PYTHON:-python}
HELPER=("$PY" benchmarks/device_check.py)
LOG=$OUT/device_check.log
STEPS=$OUT/steps.jsonl
rm -f "$OUT"/*.out "$OUT"/*.json "$OUT"/*.jsonl "$OUT"/pytest_cuda.xml  # nothing stale from an earlier run
: >"$LOG"; : >"$STEPS"
# The CPU dry run's steps are toy-sized but each starts torch; on a busy shared CPU that alone can
# outlast a step's GPU budget, so the dry run scales the budgets (DEVICE_CHECK_DRY_SCALE, default 10).
DRY_SCALE=1; [[ $DRY == 1 ]] && DRY_SCALE=${DEVICE_CHECK_DRY_SCALE:-10}
TOTAL=${DEVICE_CHECK_BUDGET_S:-$((450 * DRY_SCALE))}
STARTED=$(date +%s)
IMAGES=$(mktemp -d "${TMPDIR:-/tmp}/device_check_images.XXXXXX")
trap 'rm -rf "$IMAGES"' EXIT
FAILED=""

if [[ $DRY == 1 ]]; then
  # toy sizes, CPU only; one thread each (a shared 2-core machine stalls multi-threaded torch)
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  DEVICE=cpu
else
  DEVICE=cuda
fi

log() { echo "[device_check $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# run_step NAME BUDGET_S COMMAND...: time it under `timeout`, capture its output, record it.
run_step() {
  local name=$1 budget=$(($2 * DRY_SCALE)); shift 2
  if [[ -n $FAILED && $KEEP_GOING == 0 ]]; then
    log "skip $name (after $FAILED failed)"
    "${HELPER[@]}" record "$STEPS" "$name" -1 0 "$budget" -- "$@"
    return
  fi
  local left=$((STARTED + TOTAL - $(date +%s)))
  ((budget > left)) && budget=$left
  if ((budget < 5)); then
    log "no time left for $name"
    "${HELPER[@]}" record "$STEPS" "$name" 124 0 "$budget" -- "$@"
    FAILED=${FAILED:-$name}
    return
  fi
  log "step $name (budget ${budget} s): $*"
  local t0 t1 code
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$budget" "$@" >"$OUT/$name.out" 2>&1
  code=$?
  t1=$(date +%s.%N)
  cat "$OUT/$name.out" >>"$LOG"
  local seconds
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  "${HELPER[@]}" record "$STEPS" "$name" "$code" "$seconds" "$budget" -- "$@"
  if [[ $code != 0 ]]; then
    log "step $name FAILED (exit $code after $seconds s); tail of its output:"
    tail -n 15 "$OUT/$name.out" | tee -a "$LOG" >&2
    FAILED=${FAILED:-$name}
  else
    log "step $name ok in $seconds s"
  fi
}

installed() {
  "$PY" - "$REPO" <<'EOF'
import pathlib, sys
try:
    import collapse_probe, collapse_probe_cli, pytest  # noqa: F401
except ImportError:
    sys.exit(1)
repo = pathlib.Path(sys.argv[1]).resolve()
sys.exit(0 if repo in pathlib.Path(collapse_probe.__file__).resolve().parents else 1)
EOF
}

install() {
  if installed; then
    echo "collapse_probe already imports from $REPO: nothing to install"
    return 0
  fi
  # the package index first; offline, the checkout alone (its dependencies must be present)
  "$PY" -m pip install -e ".[dev]" || "$PY" -m pip install --no-deps --no-build-isolation -e .
  installed
}

if [[ $DRY == 1 ]]; then
  N_IMAGES=8
  ACCUMULATE=(--device cpu --n 2048 --dim 64 --repeats 1)
  CORE=(--n 2000 --dims 32 --repeats 1 --device cpu)
  SOLVE=(--dims 16 --batch 2 --repeats 1 --device cpu --no-first-call)
  PROBE=(--arch resnet18 --image-size 32 --n 32 --batch-size 16 --repeats 1 --device cpu --precision fp32)
  CLI=(--n-images "$N_IMAGES" --arch resnet18 --workers 0 --batch-size 4 --repeats 1 --device cpu --precision fp32)
  TRAIN=(--ceiling --arch smallcnn --batch-size 4 --image-size 16 --steps 1 --warmup 1 --device cpu)
else
  N_IMAGES=5000
  ACCUMULATE=(--device cuda --n 50000 --dim 2048 --repeats 3)
  CORE=(--n 50000 --dims 128 512 2048 --repeats 1 --device cuda)
  SOLVE=(--dims 128 512 2048 --batch 16 --repeats 3 --device cuda)
  PROBE=(--arch resnet50 --image-size 224 --n 51200 --batch-size 256 --repeats 2 --device cuda --precision bf16)
  CLI=(--n-images "$N_IMAGES" --arch resnet50 --workers 8 --batch-size 256 --repeats 2 --device cuda --precision bf16)
  TRAIN=(--ceiling --arch resnet50 --batch-size 256 --image-size 224 --steps 20 --warmup 5 --device cuda)
fi

log "device check of $REPO into $OUT ($([[ $DRY == 1 ]] && echo "dry run, CPU" || echo "CUDA")), total budget ${TOTAL} s"
REQUIRE=(); [[ $DRY == 0 ]] && REQUIRE=(--require-cuda)
run_step environment 60 "${HELPER[@]}" environment "$OUT/environment.json" "${REQUIRE[@]}"
export PY REPO
export -f installed install
run_step install 180 bash -c install
run_step images 90 "${HELPER[@]}" images "$IMAGES" --n "$N_IMAGES"
run_step pytest_cuda 200 "$PY" -m pytest -m cuda tests/cuda -q -rs --junitxml="$OUT/pytest_cuda.xml"
run_step accumulate 60 "$PY" benchmarks/bench_accumulate.py "${ACCUMULATE[@]}" --json "$OUT/accumulate.json"
run_step core 150 "$PY" benchmarks/bench_core.py "${CORE[@]}"
run_step solve 90 "$PY" benchmarks/bench_solve.py "${SOLVE[@]}" --json "$OUT/solve.json"
run_step probe_overhead 120 "$PY" benchmarks/bench_probe_overhead.py "${PROBE[@]}" --json "$OUT/probe_overhead.json"
run_step cli_images 180 "$PY" benchmarks/bench_cli_images.py "${CLI[@]}" --folder "$IMAGES" \
  --json-out "$OUT/cli_images.jsonl"
run_step train_ceiling 120 "$PY" benchmarks/bench_train.py "${TRAIN[@]}" --json "$OUT/train_ceiling.json"

DRY_FLAG=(); [[ $DRY == 1 ]] && DRY_FLAG=(--dry-run)
"${HELPER[@]}" report "$OUT" "${DRY_FLAG[@]}" --budget "$TOTAL" --started "$STARTED" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
