#!/usr/bin/env bash
# The GPU validation of issues #3-#5 in a few device calls (a lent H100 / H200; each call ≤ 10 min).
#
#   bench/gpu_session.sh tests     # the whole test suite on CUDA (bf16, large shapes), log to $OUT
#                                  # (every new shape autotunes: if one call is too short, split it,
#                                  #  e.g. `tests tests/test_attention.py tests/test_levit.py`, then the rest)
#   bench/gpu_session.sh kernels   # armour-bench kernels: attention vs SDPA(q, k, q) / float mask, bf16
#   bench/gpu_session.sh models    # armour-bench models: LeViT family + DeiT-Ti, AMP bf16, batch 2048, train step
#                                  # (torch.compile of every model may not fit one call: add --models levit_128s)
#   bench/gpu_session.sh linear    # armour-bench linear: Nyström / Performer vs eager and SDPA, memory, crossover
#
# Runs from the repository root with no install (the GPU image has torch, triton, timm; the C++
# CPU extension is not needed there). Results go to $OUT/<step>/ (the device tool fetches at most
# 8 files, 2 folders down); copy them into bench/results/<gpu>/ here, then
# `armour-bench summary --results bench/results/<gpu>` and commit.
set -uo pipefail
step=${1:?usage: bench/gpu_session.sh tests|kernels|models|linear [extra armour-bench / pytest arguments]}
shift
OUT=${OUT:-bench/out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT/$step"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv > "$OUT/$step/gpu.csv" 2>&1
bench() { python -m armour_kernels.cli "$@" --out "$OUT/$step" 2>&1 | tee "$OUT/$step/log.txt"; }
case "$step" in
  tests)   python -m pytest -q tests "$@" 2>&1 | tee "$OUT/tests/log.txt" ;;
  kernels) bench kernels --device cuda --dtype bf16 "$@" ;;
  models)  bench models --device cuda --dtype bf16 --train --deit "$@" ;;
  linear)  bench linear --device cuda "$@" ;;
  *) echo "unknown step: $step" >&2; exit 2 ;;
esac
