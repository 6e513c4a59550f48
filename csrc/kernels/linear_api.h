// Interface of the CPU Nyström and Performer forward kernels (docs/nystrom.md, docs/performer.md), kept apart from
// kernel_api.h (the attention family) so the two families evolve independently. Same rules as
// kernel_api.h: plain data only (fp32 pointers + element strides), no torch header, one table per ISA.
#pragma once

#include <cstdint>

#include "kernel_api.h"

namespace armour {

// Performer (FAVOR+) forward. q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv): fp32, any strides
// (value "q": v aliases q). proj (m, D) contiguous.
struct PerformerArgs {
  int64_t B = 0, H = 0, Nq = 0, Nk = 0, D = 0, Dv = 0, M = 0;
  Strided4 q, k, v;
  const float* proj = nullptr;
  bool softmax = true;   // false: relu features
  bool seed = false;     // key stabiliser over the whole batch instead of per (b, h)
  ParallelFor parallel_for = nullptr;
  // forward outputs (backward inputs), contiguous fp32: out (B, Nq, H, Dv), ctx (B·H, M, Dv),
  // ksum (B·H, M), stab (B·H)
  float *out = nullptr, *ctx = nullptr, *ksum = nullptr, *stab = nullptr;
  // backward (softmax clean or relu: the key stabiliser is detached): dout (B, Nq, H, Dv) any strides;
  // outputs contiguous fp32, zero-filled by the caller: dq (B, Nq, H, D), dk (B, Nk, H, D),
  // dv (B, Nk, H, Dv) or null (value "q": the value gradient is added into dq, v aliases q)
  Strided4 dout;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;
};

// Nyström forward. q, k (B, N, H, D), v (B, N, H, Dv): fp32, any strides, unpadded, q unscaled.
// conv (H, K) contiguous or null. Front padding to a multiple of M is done inside.
struct NystromArgs {
  int64_t B = 0, H = 0, N = 0, D = 0, Dv = 0, M = 0, K = 0;
  int iterations = 6;
  Strided4 q, k, v;
  const float* conv = nullptr;
  bool seed = false;     // pinv scaling maxima over the whole batch instead of per (b, h)
  ParallelFor parallel_for = nullptr;
  // outputs, contiguous fp32: out (B, N, H, Dv); ql, kl (B·H, M, D); w, y (B·H, M, Dv); lse (B·H, M);
  // a2 (B·H, M, M) scratch; absmax (B·H, 2) scratch (max row / column abs-sum of A2)
  float *out = nullptr, *ql = nullptr, *kl = nullptr, *w = nullptr, *y = nullptr, *lse = nullptr;
  float *a2 = nullptr, *absmax = nullptr;
};

struct LinearKernelTable {
  const char* name;
  void (*performer_forward)(const PerformerArgs&);
  void (*performer_backward)(const PerformerArgs&);
  void (*nystrom_forward)(const NystromArgs&);
};

const LinearKernelTable& linear_kernels_scalar();
const LinearKernelTable& linear_kernels_avx2();
const LinearKernelTable& linear_kernels_avx512();
const LinearKernelTable& current_linear_kernels();  // linear_dispatch.cpp; avx512bf16 → avx512

#define ARMOUR_DEFINE_LINEAR_TABLE(ISA)                                                            \
  const LinearKernelTable& linear_kernels_##ISA() {                                                \
    static const LinearKernelTable table{#ISA, &ISA::performer_forward, &ISA::performer_backward,    \
                                         &ISA::nystrom_forward};                                 \
    return table;                                                                                  \
  }

}  // namespace armour
