// Interface of the CPU Nyström and Performer kernels (docs/nystrom.md, docs/performer.md), kept
// apart from kernel_api.h (the attention family) so the two families evolve independently. Same
// rules as kernel_api.h: plain data only (fp32 pointers + element strides), no torch header, one
// table per ISA.
//
// Each op is a few passes over the tokens, split into tasks (b, h, split) run by parallel_for;
// the torch side (linear_attention/host.cpp, linear_attention/nystrom.cpp, linear_attention/performer.cpp) runs the passes in order
// and does the small (b, h)-sized work between them with ATen ops (the m×m pinv, merging the
// per-split partial sums). The GEMM-shaped work inside a pass goes to `gemm`, the torch side's
// GEMM micro-kernel (at::native::cpublas::brgemm); the ISA code does what is left: softmax and
// feature maps (vectorised exp), transposed loads, the residual conv.
#pragma once

#include <cstdint>

#include "kernel_api.h"

namespace armour {

// C (M × N, row stride ldc) = A (M × K, lda) · B (K × N, ldb), plus C when `accumulate`; fp32,
// row-major, unit column strides, M, N, K ≥ 1.
using GemmFn = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                        float* C, int64_t ldc, bool accumulate);

// Tokens per block of every pass: a block's (tokens × m) score tile and its GEMM operands stay in
// L2 (128 × 112 fp32 = 56 KiB), and its GEMM calls are long enough to run near peak.
constexpr int64_t kLinearBlock = 128;

// What every pass needs to walk the tokens: sizes, the split of each (b, h)'s tokens into `splits`
// contiguous ranges of whole blocks (tasks = B·H·splits), threads and the GEMM.
struct LinearPlan {
  int64_t B = 0, H = 0, D = 0, Dv = 0, M = 0;  // M: landmarks (Nyström) / features (Performer)
  int64_t splits = 1;
  ParallelFor parallel_for = nullptr;
  GemmFn gemm = nullptr;
};

// Performer (FAVOR+). q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H, Dv): fp32, any strides
// (value "q": v aliases q). proj (M, D) contiguous. See performer_kernel.h for the passes.
struct PerformerArgs {
  LinearPlan p;
  int64_t Nq = 0, Nk = 0;
  Strided4 q, k, v, dout;
  const float* proj = nullptr;
  bool softmax = true;  // false: relu features
  bool seed = false;    // key stabiliser over the whole batch (attached to autograd) instead of per (b, h)
  // context pass (out: per-task partials, contiguous, indexed by task = bh·splits + split):
  //   part_ctx (T, M, Dv) Σ e·vᵀ, part_ksum (T, M) Σ e, part_max (T) the running max of u (softmax),
  //   part_vsum (T, Dv) Σ v (softmax), with e = exp(u − ‖x‖²/2 − part_max) (softmax) or φ (relu)
  float *part_ctx = nullptr, *part_ksum = nullptr, *part_max = nullptr, *part_vsum = nullptr;
  // output pass (in): ctx_ext (B·H, M, Dv + 1) = [ctx | ksum]; (out) out (B, Nq, H, Dv) contiguous
  const float* ctx_ext = nullptr;
  float* out = nullptr;
  // backward: stab (B·H) the forward's key stabiliser; query pass (out) dq (B, Nq, H, D) and the
  // partials part_dctx (T, Dv + 1, M) = [dCᵀ; dzᵀ]; key pass (in) dctx_ext (B·H, Dv + 1, M),
  // (out) dk (B, Nk, H, D), dv (B, Nk, H, Dv) or null (value "q": added into dq), and for seed mode
  // part_gsum (T) Σ g, part_umax (T) max of u, part_hits (T) how many u equal it.
  // stab pass (seed): dk[...] += share · dn · P[j] where u == umax in the tasks with part_umax == umax.
  const float* stab = nullptr;
  const float* dctx_ext = nullptr;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr, *part_dctx = nullptr;
  float *part_gsum = nullptr, *part_umax = nullptr, *part_hits = nullptr;
  float umax = 0.f, share = 0.f;
};

// Nyström. q, k (B, N, H, D), v (B, N, H, Dv): fp32, any strides, unpadded, q unscaled; conv
// (H, K) contiguous or null. The Np = N + pad rows of the front-padded sequence are never stored:
// token i is padded row i + pad, landmark `(i + pad) / group`. See nystrom_kernel.h for the passes.
struct NystromArgs {
  LinearPlan p;
  int64_t N = 0, K = 0, Np = 0, pad = 0, group = 1;
  float scale = 1.f;  // D^-1/2
  Strided4 q, k, v, dout;
  const float* conv = nullptr;
  // landmark pass (out): ql (scaled), kl (B·H, M, D)
  float *ql = nullptr, *kl = nullptr;
  // key pass (in: ql; out per task: part_max, part_sum (T, M), part_acc (T, M, Dv)) of W = A3·v
  float *part_max = nullptr, *part_sum = nullptr, *part_acc = nullptr;
  // pinv pass, per (b, h) (in: a2 = A2 (B·H, M, M), denom (B·H) the scale c of Z₀ = A2ᵀ / c,
  // w (B·H, M, Dv) = A3·v; out: y = pinv(A2)·W (B·H, M, Dv))
  int iterations = 6;
  const float *a2 = nullptr, *denom = nullptr, *w = nullptr;
  float* y = nullptr;
  // output pass (in: kl, y; out: out (B, N, H, Dv) contiguous)
  float* out = nullptr;
  // backward, dout (B, N, H, Dv) any strides; outputs contiguous:
  //   query pass (in: kl, y; out: dq ← scale·dS1·k̃, per task part_dyt (T, Dv, M) = Σ dOᵀA1,
  //     part_dklt (T, D, M) = Σ qᵀdS1 (unscaled));
  //   pinv pass, per (b, h) (in: a2, denom, w, dy (B·H, M, Dv); out: dw (B·H, M, Dv), da2
  //     (B·H, M, M) through the iterations and Z₀ = A2ᵀ / c at fixed c, dc (B·H) = ∂L/∂c);
  //   key pass (in: ql, lse (B·H, M), dw, delta (B·H, M) = rowsum(dW∘W),
  //     dkl (B·H, M, D) the whole k̃ gradient; out: dk, dv (or += dq for value "q"),
  //     per task part_dqlt (T, D, M) = Σ kᵀdS3, part_dconv (T, K));
  //   landmark pass (in: dql (B·H, M, D) the whole q̃ gradient; out: dq += scale / group · dq̃[landmark]).
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float *part_dyt = nullptr, *part_dklt = nullptr, *part_dqlt = nullptr, *part_dconv = nullptr;
  float *dw = nullptr, *da2 = nullptr, *dc = nullptr;
  const float *dy = nullptr, *lse = nullptr, *delta = nullptr, *dkl = nullptr, *dql = nullptr;
};

struct LinearKernelTable {
  const char* name;
  void (*performer_context)(const PerformerArgs&);
  void (*performer_output)(const PerformerArgs&);
  void (*performer_query_grad)(const PerformerArgs&);
  void (*performer_key_grad)(const PerformerArgs&);
  void (*performer_stab_grad)(const PerformerArgs&);
  void (*nystrom_landmarks)(const NystromArgs&);
  void (*nystrom_key_forward)(const NystromArgs&);
  void (*nystrom_pinv)(const NystromArgs&);
  void (*nystrom_output)(const NystromArgs&);
  void (*nystrom_query_grad)(const NystromArgs&);
  void (*nystrom_pinv_grad)(const NystromArgs&);
  void (*nystrom_key_grad)(const NystromArgs&);
  void (*nystrom_landmark_grad)(const NystromArgs&);
};

const LinearKernelTable& linear_kernels_scalar();
const LinearKernelTable& linear_kernels_avx2();
const LinearKernelTable& linear_kernels_avx512();
const LinearKernelTable& current_linear_kernels();  // isa/linear_attention_dispatch.cpp; avx512bf16 → avx512

#define ARMOUR_DEFINE_LINEAR_TABLE(ISA)                                                                      \
  const LinearKernelTable& linear_kernels_##ISA() {                                                          \
    static const LinearKernelTable table{#ISA,                                                               \
                                         &ISA::performer_context,     &ISA::performer_output,                \
                                         &ISA::performer_query_grad,  &ISA::performer_key_grad,              \
                                         &ISA::performer_stab_grad,   &ISA::nystrom_landmarks,               \
                                         &ISA::nystrom_key_forward,   &ISA::nystrom_pinv,                    \
                                         &ISA::nystrom_output,        &ISA::nystrom_query_grad,              \
                                         &ISA::nystrom_pinv_grad,     &ISA::nystrom_key_grad,                \
                                         &ISA::nystrom_landmark_grad};                                      \
    return table;                                                                                            \
  }

}  // namespace armour
