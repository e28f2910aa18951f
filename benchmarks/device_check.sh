#!/usr/bin/env bash
# One-shot accelerator check, run from the repository root on a lent GPU
# machine (benchmarks/README.md, "On a lent GPU"): installs the wheels that
# benchmarks/device_wheels.sh put in .whl/, prints the devices, runs the
# accelerator-relevant tests, times the LIDC train step and sampling in
# float32 and bfloat16, and writes everything under $OUT:
#   log.txt             every step's output
#   tests.xml           pytest's JUnit XML
#   train.json          benchmarks/device_check.py train
#   sampling.json       benchmarks/device_check.py sampling
#   device_<date>.json  the summary (benchmarks/device_summary.py)
# Each step has its own timeout and all of them share one deadline, so the
# whole stays within DEVICE_CHECK_BUDGET_S (default 450 s); a failed step does
# not stop the next.
#
# Environment:
#   OUT                    results folder (required)
#   DEVICE_CHECK_QUICK=1   smoke run: tiny configs, three fast tests
#   DEVICE_CHECK_STEPS     steps to run (default "tests train sampling")
#   DEVICE_CHECK_BUDGET_S  deadline for all steps, seconds (default 450)
#   DEVICE_CHECK_COMMIT    commit recorded (default: git's HEAD, if any)
#   DEVICE_CHECK_SITE      where the wheels are installed (default /tmp/site)
#   PYTHON                 interpreter (default python3)
#   JAX_PLATFORMS          default cuda (the tests' conftest would pick cpu)
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the results folder}"
QUICK=${DEVICE_CHECK_QUICK:-0}
STEPS=${DEVICE_CHECK_STEPS:-tests train sampling}
PYTHON=${PYTHON:-python3}
SITE=${DEVICE_CHECK_SITE:-/tmp/site}
START=$(date +%s)
DEADLINE=$((START + ${DEVICE_CHECK_BUDGET_S:-450}))
DATE=$(date -u +%Y-%m-%d)
WORK=$(mktemp -d)
LOG=$OUT/log.txt
mkdir -p "$OUT"
: >"$LOG"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
export PYTHONUNBUFFERED=1
export HPUNET_JAX_CACHE=$WORK/jax_cache  # A fresh cache: compile times are cold.
QUICK_ARG=
[ "$QUICK" = 1 ] && QUICK_ARG=--quick
export OUT QUICK PYTHON SITE WORK

say() { echo "[device_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# step NAME SECONDS COMMAND...: runs COMMAND (a program, or one of the
# exported functions below through `bash -c`) under `timeout`, for the lesser
# of SECONDS and what the deadline leaves (20 s kept for the summary); SIGINT
# first, so that pytest writes its JUnit XML and Python stops cleanly, KILL
# 15 s later. Output goes to the log; exit code and seconds to steps.tsv.
step() {
  local name=$1 limit=$2 begin rc left
  shift 2
  left=$((DEADLINE - $(date +%s) - 20))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    say "$name: skipped, the deadline is reached"
    echo "$name 125 0 0" >>"$WORK/steps.tsv"
    return
  fi
  say "$name: start (timeout ${limit}s)"
  begin=$(date +%s)
  timeout -s INT -k 15 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "$name $rc $(($(date +%s) - begin)) $limit" >>"$WORK/steps.tsv"
  say "$name: exit $rc after $(($(date +%s) - begin))s"
}

install_wheels() {
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no .whl/*.whl: using the installed packages"
  else
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || return
  fi
  "$PYTHON" -m pip list 2>/dev/null | grep -iE \
    '^(jax|jaxlib|jax-cuda|dm-haiku|jmp|ml.collections|optax|orbax|chex|numpy|scipy|pytest|ml.dtypes) '
}

# Also kept in $WORK/devices.txt for the summary.
show_devices() {
  set -o pipefail
  {
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --format=csv \
        --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm
    fi
    "$PYTHON" -m benchmarks.device_check devices
  } 2>&1 | tee "$WORK/devices.txt"
}

# The model, losses, one-device partitioning and bf16 tests. The 8-device
# sharding tests run XLA:CPU in subprocesses: left to the CPU suite.
run_tests() {
  local files=(tests/test_model.py tests/test_losses.py tests/test_sharding.py
               tests/test_precision.py)
  local deselect=(--deselect
                  tests/test_sharding.py::test_meshes_agree_and_partition_the_height)
  local select=(-n 4)
  # Quick: three fast tests only, to check the selection and the JUnit XML.
  [ "$QUICK" = 1 ] && select=(-k
    'resolve_mesh_shape or divisibility_errors or identity_on_one_device')
  # Several workers compile at once: none may take 75 % of the GPU's memory.
  # XLA's default code generation, as users run (conftest.py).
  XLA_PYTHON_CLIENT_PREALLOCATE=false HPUNET_JAX_TEST_DEFAULT_CODEGEN=1 \
    "$PYTHON" -m pytest -q -p no:cacheprovider -rfE "${select[@]}" \
    --junitxml="$OUT/tests.xml" "${files[@]}" "${deselect[@]}"
}

export -f install_wheels show_devices run_tests
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
say "OUT=$OUT quick=$QUICK steps='$STEPS' JAX_PLATFORMS=$JAX_PLATFORMS"
step setup 60 bash -c install_wheels
step devices 60 bash -c show_devices
cat "$WORK/devices.txt" 2>/dev/null
for name in $STEPS; do
  case $name in
    tests) step tests 150 bash -c run_tests ;;
    train) step train 150 "$PYTHON" -m benchmarks.device_check train \
             --out "$OUT/train.json" $QUICK_ARG ;;
    sampling) step sampling 100 "$PYTHON" -m benchmarks.device_check \
                sampling --out "$OUT/sampling.json" $QUICK_ARG ;;
    *) say "unknown step $name (tests, train, sampling)" ;;
  esac
done
# Printed last: the call's reply carries the end of the output.
timeout 30 "$PYTHON" -m benchmarks.device_summary \
  --out "$OUT/device_$DATE.json" --parts "$OUT/train.json" \
  "$OUT/sampling.json" --junit "$OUT/tests.xml" --steps "$WORK/steps.tsv" \
  --devices_log "$WORK/devices.txt" --commit "${DEVICE_CHECK_COMMIT:-}" \
  2>&1 | tee -a "$LOG"
say "done"
rm -rf "$WORK"
