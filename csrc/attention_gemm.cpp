// The GEMM callbacks the attention kernels get (kernel_api.h: GemmProvider): oneDNN's batch-reduce
// GEMM micro-kernels through ATen (at::native::cpublas::brgemm, the path ATen's own CPU flash
// attention takes), plain functions the ISA code calls by pointer so it never sees a torch header.
//
// Which products use them (docs/backends.md, "CPU ISA dispatch"):
// - bf16 at the "amx" level: oneDNN runs bf16 brgemm on AMX tiles there. `could_pack(kBFloat16)`
//   is oneDNN's own "AMX is usable" answer (it also follows torch.backends.mkldnn.enabled), asked
//   again at every call so that switching oneDNN off falls back cleanly to the hand-written path.
// - fp32: brgemm_f32_enabled(), see there.
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

std::atomic<bool> g_brgemm_f32{false};

}  // namespace

bool torch_amx_brgemm() {
#ifdef CPUBLAS_BRGEMM_BF16BF16F32
  return at::native::cpublas::could_pack(at::kBFloat16);
#else
  return false;
#endif
}

void set_brgemm_f32(bool on) { g_brgemm_f32.store(on, std::memory_order_relaxed); }
bool brgemm_f32_enabled() { return g_brgemm_f32.load(std::memory_order_relaxed); }

GemmProvider attention_gemm(DType dtype) {
  GemmProvider g;
  const Isa isa = current_isa();
#ifdef CPUBLAS_BRGEMM_BF16BF16F32
  if (dtype == DType::bf16 && isa == Isa::amx && torch_amx_brgemm()) {
    g.bf16 = &brgemm_bf16;
    g.release = &brgemm_release;
  }
#endif
#ifdef CPUBLAS_BRGEMM_F32F32F32
  if ((dtype == DType::f32 || (dtype == DType::bf16 && !g.bf16)) && isa >= Isa::avx2 && brgemm_f32_enabled() &&
      at::globalContext().userEnabledMkldnn())
    g.f32 = &brgemm_f32;
#endif
  (void)isa;
  (void)dtype;
  return g;
}

}  // namespace armour
