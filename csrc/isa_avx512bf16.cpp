// Kernels compiled for the AVX-512 (F/BW/VL/DQ) + AVX512-BF16 + FMA path: the avx512 kernels,
// except that the bf16 attention forward runs on vdpbf16ps dot products
// (kernels/attention_bf16dot.h). Chosen only where CPUID reports avx512bf16.
//
// ISA safety (see kernels/kernel_api.h): every standard header is included BEFORE the target
// pragma, so no std inline function is compiled for this ISA; the kernels live in their own
// namespace armour::avx512bf16, so no symbol is shared with another ISA's copy; no torch header is
// included; and the accessor kernels_avx512bf16() is compiled after pop_options (baseline code), so
// asking for the table never executes an instruction the CPU may lack. isa_dispatch.cpp only
// calls into the table after checking CPUID.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/kernel_api.h"

// GCC 12 false positive inside its own _mm512_reduce_* intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi,bmi2")

namespace armour {
namespace avx512bf16 {
#include "kernels/vec_scalar.h"
#include "kernels/vec_avx512.h"
#define ARMOUR_BF16_DOT 1
void forward_bf16dot(const AttentionArgs& a);  // defined in attention_bf16dot.h, used by attention_kernel.h
#include "kernels/attention_kernel.h"
#include "kernels/attention_bf16dot.h"
}  // namespace avx512bf16
}  // namespace armour

#pragma GCC pop_options

namespace armour {
ARMOUR_DEFINE_KERNEL_TABLE(avx512bf16)
}  // namespace armour
