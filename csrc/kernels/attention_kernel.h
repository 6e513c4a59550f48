// The attention entry points of one ISA (the KernelTable's attention_forward / attention_backward):
// the choice of storage type, vector type and GEMM engine per dtype.
//
//   float64  plain engine on doubles (hand-written micro-kernel)
//   float32  plain engine on floats: brgemm when the torch side lends it (GemmProvider::f32),
//            else the hand-written micro-kernel
//   bfloat16 with AMX brgemm lent (GemmProvider::bf16): the bf16 pair engine, forward and backward.
//            Otherwise widened to fp32 while packing, on the fp32 brgemm when lent: on Sapphire
//            Rapids without AMX that forward took 3.7 ms where vdpbf16ps dot products took 5.4 and
//            the hand-written fp32 kernel 4.8 (B=16 DeiT-Ti, one thread). Only without any brgemm,
//            with AVX512-BF16 (ARMOUR_AVX512BF16, isa_avx512bf16.cpp), does the forward run the
//            pair engine on vdpbf16ps: it measured faster than the fp32 kernel on AMD Zen 4. (The
//            backward stays fp32 there: the dot products measured no faster once the extra packing
//            is paid.)
//
// Included inside namespace armour::<isa> by isa_<isa>.cpp after the ISA's vector headers.
#pragma once

#include "kernels/attention_common.h"
#include "kernels/attention_gemm_plain.h"
#include "kernels/attention_forward.h"
#include "kernels/attention_backward.h"
#ifdef ARMOUR_AVX512BF16
#include "kernels/attention_bf16dot.h"
#endif

inline void attention_forward(const AttentionArgs& a) {
  switch (a.dtype) {
    case DType::f64: return forward_impl<double, VecD>(a, PlainGemm<VecD>{});
    case DType::bf16:
#ifdef ARMOUR_AVX512BF16
      if (a.gemm.bf16 || !a.gemm.f32) return forward_impl<bf16_t, VecF>(a, PairGemm{a.gemm.bf16});
#endif
      return forward_impl<bf16_t, VecF>(a, PlainGemm<VecF>{a.gemm.f32});
    default: return forward_impl<float, VecF>(a, PlainGemm<VecF>{a.gemm.f32});
  }
}

inline void attention_backward(const AttentionArgs& a) {
  switch (a.dtype) {
    case DType::f64: return backward_impl<double, VecD>(a, PlainGemm<VecD>{});
    case DType::bf16:
#ifdef ARMOUR_AVX512BF16
      if (a.gemm.bf16) return backward_impl<bf16_t, VecF>(a, PairGemm{a.gemm.bf16});
#endif
      return backward_impl<bf16_t, VecF>(a, PlainGemm<VecF>{a.gemm.f32});
    default: return backward_impl<float, VecF>(a, PlainGemm<VecF>{a.gemm.f32});
  }
}
