#!/usr/bin/env bash
# The one prepared GPU validation of armour_kernels, for a session lent an H100 / H200 through the
# device tool (one call ≤ 10 min; 15 min of device time in all, the machine's start included):
#
#   bench/gpu_validation.sh                    # every step below, each under its own time limit (≈ 9 min)
#   bench/gpu_validation.sh tests sanitize     # chosen steps only
#   T_TESTS=500 bench/gpu_validation.sh tests  # a longer limit for one step (seconds)
#
# Steps (in this order):
#   env        GPU, driver, clocks, package versions                               → env.txt
#   tests      the test suite on CUDA (Triton families first; fp32, fp16 and bf16
#              cases, the GPU-only large shapes); pytest stops cleanly at T_TESTS    → log.txt
#   sanitize   compute-sanitizer memcheck, then racecheck, on bench/gpu_sweep.py:
#              every Triton launcher fwd+bwd on small edge-case shapes, checked
#              against python_ref in float64 (racecheck on the attention family)    → log.txt
#   kernels    armour-bench kernels, bf16: the attention op vs SDPA and
#              FlexAttention (LeViT table as a score_mod with a learnable-bias
#              gradient) at DeiT-Ti / LeViT shapes                                  → kernels-cuda-bf16.{json,md}
#   linear     armour-bench linear_attention, bf16: Nyström / Performer vs python_ref eager
#              and SDPA, peak memory, n up to 16384                                 → linear_attention-cuda-bf16.{json,md}
#   models     (not in the default run) armour-bench models, LeViT-128S train step  → models-*.{json,md}
#
# Everything lands in $OUT/<gpu>/ (≤ 8 files, 2 folders down: what the device tool brings back),
# e.g. $OUT/h200/. Then, here: copy that folder to bench/results/<gpu>/,
# `armour-bench summary --results bench/results/<gpu>` and commit. Runs from the repository root
# with no install (the GPU image has torch, triton, timm, pytest; the C++ CPU extension is not
# needed there). A step that fails or runs out of time is logged and the next one still runs;
# the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T_TESTS=${T_TESTS:-240} T_SANITIZE=${T_SANITIZE:-110} T_KERNELS=${T_KERNELS:-120} T_LINEAR=${T_LINEAR:-60}
T_MODELS=${T_MODELS:-300}

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z ' 'a-z-' | sed 's/^nvidia-//')
dest=${OUT:-bench/out}/${gpu:-unknown-gpu}
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

run_env() {
  { nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,memory.total,compute_cap \
      --format=csv 2>&1
    $PY - <<'PY'
import platform, torch, triton
print(f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, "
      f"cuda {torch.version.cuda}, device {torch.cuda.get_device_name()}")
PY
    command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"; } > "$dest/env.txt" 2>&1
  cat "$dest/env.txt" >> "$log"
}

run_tests() {
  # SIGINT at the limit: pytest stops and still prints its summary of what ran.
  # (the offline sm_90 compile tests and the interpreter-only launch checks, tests/triton/, run in
  # CI, not here; nor do the C++ kernels' tests, -m cpu_kernels, which need no GPU)
  timeout -s INT -k 20 "$T_TESTS" $PY -m pytest -q -ra -p no:cacheprovider --timeout=120 -m "not cpu_kernels" \
    tests/attention tests/nystrom tests/performer tests/levit tests/linear_act/test_linear_act_triton.py \
    tests/linear_act/test_linear_act_op.py tests/models/test_training.py 2>&1 | tail -n 60 >> "$log"
  local status=${PIPESTATUS[0]}
  [ "$status" -eq 130 ] && status=124  # interrupted by the limit
  return "$status"
}

run_sanitize() {
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  [ -x "$sanitizer" ] || { echo "compute-sanitizer not found" >> "$log"; return 3; }
  # Every kernel is launched in the python process itself (Triton compiles on the host), and only
  # with its first config, so the launch count stays small: memcheck on the whole sweep,
  # racecheck (shared-memory hazards of the pipelined loads) on the attention family.
  timeout -k 10 $((T_SANITIZE * 2 / 3)) "$sanitizer" --tool memcheck --error-exitcode 9 --print-limit 20 \
    $PY bench/gpu_sweep.py 2>&1 | tail -n 40 >> "$log"
  local memcheck=${PIPESTATUS[0]}
  timeout -k 10 $((T_SANITIZE / 3)) "$sanitizer" --tool racecheck --racecheck-report hazard --error-exitcode 9 \
    --print-limit 20 $PY bench/gpu_sweep.py --only attention 2>&1 | tail -n 40 >> "$log"
  local racecheck=${PIPESTATUS[0]}
  echo "memcheck exit $memcheck, racecheck exit $racecheck" >> "$log"
  [ "$memcheck" -eq 0 ] && [ "$racecheck" -eq 0 ]
}

run_kernels() {
  timeout -k 10 "$T_KERNELS" $PY -m armour_kernels.cli kernels --device cuda --dtype bf16 \
    --impls armour_kernels,sdpa,flex --shapes DeiT-Ti,LeViT --out "$dest" 2>&1 | tail -n 40 >> "$log"
  return "${PIPESTATUS[0]}"
}

run_linear() {
  timeout -k 10 "$T_LINEAR" $PY -m armour_kernels.cli linear_attention --device cuda --dtype bf16 --max-n 16384 \
    --out "$dest" 2>&1 | tail -n 40 >> "$log"
  return "${PIPESTATUS[0]}"
}

run_models() {
  timeout -k 10 "$T_MODELS" $PY -m armour_kernels.cli models --device cuda --dtype bf16 --train \
    --models levit_128s --out "$dest/models-levit_128s-train" 2>&1 | tail -n 40 >> "$log"
  return "${PIPESTATUS[0]}"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env tests sanitize kernels linear)
for step in "${steps[@]}"; do
  case "$step" in
    env) step_header env 30; run_env; finish env $? ;;
    tests) step_header tests "$T_TESTS"; run_tests; finish tests $? ;;
    sanitize) step_header sanitize "$T_SANITIZE"; run_sanitize; finish sanitize $? ;;
    kernels) step_header kernels "$T_KERNELS"; run_kernels; finish kernels $? ;;
    linear) step_header linear "$T_LINEAR"; run_linear; finish linear $? ;;
    models) step_header models "$T_MODELS"; run_models; finish models $? ;;
    *) echo "unknown step: $step (env, tests, sanitize, kernels, linear, models)" >&2; exit 2 ;;
  esac
done
ls -l "$dest" | tee -a "$log"
exit "$failed"
