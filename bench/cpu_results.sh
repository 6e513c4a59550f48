#!/usr/bin/env bash
# Measures this CPU's results folder, bench/results/<cpu>/ (named by record.device_slug: vendor,
# family, instruction-set tier, cores), the same way for every CPU so that folders compare:
#
#   bench/cpu_results.sh                      # every step below (≈ 40 min on 2 cores)
#   bench/cpu_results.sh kernels summary      # chosen steps only
#
# Steps:
#   kernels           attention op vs SDPA, FlexAttention and python_ref at the DeiT-Ti and LeViT
#                     shapes, batch 64, 1 and 2 threads, fp32 and bf16, the default dispatch path
#                     next to the hand-written kernels of the same ISA
#   linear_attention  Nyström / Performer vs python_ref eager and SDPA, 1 and 2 threads
#   linear_act        the Linear + Hardswish op, and the GEMM engines of the inference path (1 thread)
#   main              the main job, fp32 and bf16 (optimize / eager vs timm, torch.compile,
#                     onnxruntime, OpenVINO at batch 1, 16, 64)
#   summary           SUMMARY.md of the folder
#
# Run it on a quiet machine: every comparison is interleaved, but absolute times move with load
# (each report records the load average). Other CPUs' folders are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/armour-bench}
PY=${PY:-.venv/bin/python}

# The default dispatch path, then the hand-written kernels of its ISA (and, under AMX, the fp32
# brgemm path), so that the report shows what each engine is worth on this CPU.
isas=$($PY - <<'PY'
from armour_kernels import cpu
best = cpu.best_isa()
base = "avx512bf16" if best == "amx" else best.split("+")[0]
paths = [best] + (["avx512bf16+brgemm"] if best == "amx" else []) + ([base] if base != best else [])
print(",".join(p for p in paths if p in cpu.supported_isas()))
PY
)

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(kernels linear_attention linear_act main summary)
for step in "${steps[@]}"; do
  echo "==== $step $(date -u +%H:%M:%S)"
  case $step in
    kernels) $BENCH kernels --device cpu --shapes DeiT-Ti,LeViT --batch 64 --threads 1,2 --dtype fp32,bf16 \
               --impls armour_kernels,sdpa,flex,python_ref --isa "$isas" --out auto ;;
    linear_attention) $BENCH linear_attention --device cpu --threads 1,2 --out auto ;;
    linear_act) $BENCH linear_act --threads 1 --out auto ;;
    main) $BENCH --dtype fp32,bf16 --out auto ;;
    summary) $BENCH summary ;;
    *) echo "unknown step: $step (kernels, linear_attention, linear_act, main, summary)" >&2; exit 2 ;;
  esac
done
