#!/usr/bin/env bash
# The GPU validation of armour_kernels: one script, ≈ 8 minutes on an H100 with cold caches.
#
#   bench/gpu_validation.sh                    # every step below, each under its own time limit
#   bench/gpu_validation.sh tests sanitize     # chosen steps only
#   T_TESTS=300 bench/gpu_validation.sh tests  # a longer limit for one step (seconds)
#   bench/gpu_validation.sh --dry-run          # the Python steps on the CPU (Triton interpreter, tiny shapes)
#
# Steps (in this order; limits in seconds, T_<STEP> overrides):
#   env       GPU, driver, clocks, versions, shared memory per block        env.txt, env.json     20
#   tests     the CUDA test suite (Triton families, fp32 / fp16 / bf16)      log.txt              100
#   sanitize  compute-sanitizer memcheck, racecheck, initcheck, synccheck
#             on the edge-case sweep (bench/edge_cases.py)                   log.txt               80
#   configs   every config of every kernel forced, at DeiT / LeViT shapes    configs.json          90
#   b256      correctness at batch 256                                       b256.json             25
#   timing    op vs SDPA (its backend; flash / efficient / cudnn forced)
#             vs FlexAttention (LeViT table as score_mod); table gradient
#             atomic / deterministic / none; first call, wall, kernel-only;
#             the config chosen per key                                      timing.json           65
#   train     bf16 training step, Armour-Ti and LeViT-128S vs timm, B=256    train.json            60
#   sync      warm launchers under torch.cuda.set_sync_debug_mode("error")   sync.json             20
#   report    results.json + results.md from the steps' files                                       20
#
# Results go to ${OUT:-bench/results}/<gpu>/ (e.g. bench/results/h100-80gb-hbm3/); `git add` that
# folder. CUBLAS_WORKSPACE_CONFIG=:4096:8 is set for every step: the deterministic tests build
# their float64 references with cuBLAS under torch.use_deterministic_algorithms(True), which
# raises without it. Runs from the repository root with no install (torch, triton, timm, pytest;
# the C++ CPU extension is not needed). A step that fails or reaches its limit is logged and the
# next one still runs; the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
PY=${PYTHON:-python3}
T_ENV=${T_ENV:-20} T_TESTS=${T_TESTS:-100} T_SANITIZE=${T_SANITIZE:-80} T_CONFIGS=${T_CONFIGS:-90}
T_B256=${T_B256:-25} T_TIMING=${T_TIMING:-65} T_TRAIN=${T_TRAIN:-60} T_SYNC=${T_SYNC:-20} T_REPORT=${T_REPORT:-20}

dry=()
if [ "${1:-}" = "--dry-run" ]; then dry=(--dry-run); shift; fi
if [ ${#dry[@]} -gt 0 ]; then
  gpu=cpu-dry-run
else
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z ' 'a-z-' | sed 's/^nvidia-//')
fi
dest=${OUT:-bench/results}/${gpu:-unknown-gpu}
mkdir -p "$dest"
log=$dest/log.txt
failed=0

step_header() { printf '\n==== %s (limit %ss) %s\n' "$1" "$2" "$(date -u +%H:%M:%S)" | tee -a "$log"; }
finish() {  # finish <step> <status>: 124 is the step's own time limit
  local status=$2
  if [ "$status" -eq 124 ]; then echo "---- $1: stopped at its time limit" | tee -a "$log"; fi
  if [ "$status" -ne 0 ]; then failed=$((failed + 1)); echo "---- $1: exit $status" | tee -a "$log";
  else echo "---- $1: ok" | tee -a "$log"; fi
}

sweep() {  # sweep <limit> <step> [args]: one bench/gpu_sweep.py step in its own process
  local limit=$1; shift
  timeout -k 10 "$limit" $PY bench/gpu_sweep.py "$@" --out "$dest" "${dry[@]}" 2>&1 | tail -n 60 >> "$log"
  return "${PIPESTATUS[0]}"
}

run_env() {
  { nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,memory.total,compute_cap \
      --format=csv 2>&1
    command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"; } > "$dest/env.txt" 2>&1
  cat "$dest/env.txt" >> "$log"
  sweep "$T_ENV" env
}

run_tests() {
  # SIGINT at the limit: pytest stops and still prints its summary of what ran. Most important
  # first; the interpreter-only checks of tests/triton skip themselves on a GPU, and every config
  # is the configs step's job (at the model shapes).
  timeout -s INT -k 20 "$T_TESTS" $PY -m pytest -q -ra -p no:cacheprovider -m "not cpu_kernels" \
    tests/attention/test_attention_triton.py tests/triton/test_triton_nan.py \
    tests/attention tests/nystrom tests/performer tests/linear_act/test_linear_act_triton.py \
    tests/levit tests/models/test_training.py 2>&1 | tail -n 60 >> "$log"
  local status=${PIPESTATUS[0]}
  [ "$status" -eq 130 ] && status=124  # interrupted by the limit
  return "$status"
}

run_sanitize() {
  local sanitizer tool status all=0 limit
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  [ -x "$sanitizer" ] || { echo "compute-sanitizer not found" >> "$log"; return 3; }
  # memcheck on every family; racecheck (shared-memory hazards of the pipelined loads), initcheck
  # (reads of memory never written) and synccheck (barriers) on the attention family, whose
  # kernels have the atomics, the deterministic read-modify-write and the debug barrier.
  for tool in memcheck racecheck initcheck synccheck; do
    local only=attention extra=()
    [ "$tool" = memcheck ] && only=attention,nystrom,performer,linear_act
    [ "$tool" = racecheck ] && extra=(--racecheck-report hazard)
    limit=$((T_SANITIZE / 4)); [ "$tool" = memcheck ] && limit=$((T_SANITIZE * 2 / 5))
    timeout -k 10 "$limit" "$sanitizer" --tool "$tool" "${extra[@]}" --error-exitcode 9 --print-limit 20 \
      $PY bench/gpu_sweep.py edge --only "$only" --out "$dest/sanitize-$tool" 2>&1 | tail -n 30 >> "$log"
    status=${PIPESTATUS[0]}
    echo "$tool exit $status" >> "$log"
    [ "$status" -ne 0 ] && all=$status
  done
  return "$all"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env tests sanitize configs b256 timing train sync report)
for step in "${steps[@]}"; do
  if [ ${#dry[@]} -gt 0 ] && { [ "$step" = tests ] || [ "$step" = sanitize ]; }; then
    echo "---- $step: skipped (needs the GPU)" | tee -a "$log"; continue
  fi
  case "$step" in
    env) step_header env "$T_ENV"; run_env; finish env $? ;;
    tests) step_header tests "$T_TESTS"; run_tests; finish tests $? ;;
    sanitize) step_header sanitize "$T_SANITIZE"; run_sanitize; finish sanitize $? ;;
    configs) step_header configs "$T_CONFIGS"; sweep "$T_CONFIGS" configs; finish configs $? ;;
    b256) step_header b256 "$T_B256"; sweep "$T_B256" b256; finish b256 $? ;;
    timing) step_header timing "$T_TIMING"; sweep "$T_TIMING" timing; finish timing $? ;;
    train) step_header train "$T_TRAIN"; sweep "$T_TRAIN" train; finish train $? ;;
    sync) step_header sync "$T_SYNC"; sweep "$T_SYNC" sync; finish sync $? ;;
    report) step_header report "$T_REPORT"; sweep "$T_REPORT" report; finish report $? ;;
    *) echo "unknown step: $step (env tests sanitize configs b256 timing train sync report)" >&2; exit 2 ;;
  esac
done
ls -l "$dest" | tee -a "$log"
exit "$failed"
