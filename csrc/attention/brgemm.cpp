// The GEMM callbacks the attention kernels get (kernel_api.h: GemmProvider): oneDNN's batch-reduce
// GEMM micro-kernels through ATen (at::native::cpublas::brgemm, the path ATen's own CPU flash
// attention takes), plain functions the ISA code calls by pointer so it never sees a torch header.
//
// Which products use them (docs/backends.md, "CPU ISA dispatch"; GemmUse in kernel_api.h):
// - bf16 under "amx": oneDNN runs bf16 brgemm on AMX tiles there. `could_pack(kBFloat16)` is
//   oneDNN's own "AMX is usable" answer (it also follows torch.backends.mkldnn.enabled), asked
//   again at every call so that switching oneDNN off falls back cleanly to the hand-written path.
// - fp32 under "+brgemm" and "amx": oneDNN's f32 micro-kernel (AVX-512 / AVX2), faster than the
//   hand-written one on Sapphire Rapids (docs/benchmarks.md). The bf16 brgemm without AMX
//   (is_vnni=false runs MKL) is not used: it collapsed to ~10 GFLOP/s under at::parallel_for.
// Below torch 2.6 the brgemm overloads do not exist: the feature macros of ATen/native/CPUBlas.h
// (CPUBLAS_BRGEMM_BF16BF16F32, CPUBLAS_BRGEMM_F32F32F32) compile the callbacks out and every ISA
// keeps its hand-written micro-kernels.
#include <ATen/Context.h>
#include <ATen/native/CPUBlas.h>

#include <atomic>

#include "kernels/kernel_api.h"

namespace armour {
namespace {

#ifdef CPUBLAS_BRGEMM_BF16BF16F32
void brgemm_bf16(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool add, const uint16_t* A,
                 const uint16_t* B, float* C) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, reinterpret_cast<const at::BFloat16*>(A),
                              reinterpret_cast<const at::BFloat16*>(B), C, /*is_vnni=*/true);
}

// After a worker's last bf16 product: frees its AMX tile state (left configured, it slows the
// small tiles of the next call, as ATen's flash attention found).
void brgemm_release() { at::native::cpublas::brgemm_release(/*is_vnni=*/true); }
#endif

#ifdef CPUBLAS_BRGEMM_F32F32F32
void brgemm_f32(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool add, const float* A,
                const float* B, float* C) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C, /*is_vnni=*/false);
}
#endif

}  // namespace

bool torch_brgemm_f32() {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  return true;
#else
  return false;
#endif
}

bool torch_amx_brgemm() {
#ifdef CPUBLAS_BRGEMM_BF16BF16F32
  return at::native::cpublas::could_pack(at::kBFloat16);
#else
  return false;
#endif
}

GemmProvider attention_gemm(DType dtype) {
  GemmProvider g;
  const GemmUse use = current_gemm();
#ifdef CPUBLAS_BRGEMM_BF16BF16F32
  if (dtype == DType::bf16 && use == GemmUse::amx && torch_amx_brgemm()) {
    g.bf16 = &brgemm_bf16;
    g.release = &brgemm_release;
  }
#endif
#ifdef CPUBLAS_BRGEMM_F32F32F32
  // fp32 products, and bf16 ones widened to fp32 (the backward without AMX), on oneDNN's
  // AVX-512 / AVX2 micro-kernel; ATen falls back to its own gemm where oneDNN is off.
  if ((dtype == DType::f32 || (dtype == DType::bf16 && !g.bf16)) && use != GemmUse::native &&
      current_isa() >= Isa::avx2 && at::globalContext().userEnabledMkldnn())
    g.f32 = &brgemm_f32;
#endif
  (void)use;
  (void)dtype;
  return g;
}

}  // namespace armour
