// Kernels compiled for the AVX-512 (F/BW/VL/DQ) + AVX512-BF16 + FMA path: the avx512 kernels,
// except that bf16 attention runs on the bf16 pair engine (kernels/attention_bf16dot.h: AMX brgemm
// when the torch side lends it, the "amx" level of the dispatch ladder, else vdpbf16ps dot products
// in the forward). Chosen only where CPUID reports avx512bf16.
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
#define ARMOUR_AVX512BF16 1  // the vector header's bf16 conversion and the bf16 pair engine
#include "kernels/vec_scalar.h"
#include "kernels/vec_avx512.h"
#include "kernels/attention_kernel.h"
#include "kernels/dense_epilogue.h"
#include "kernels/dense_f32.h"
#include "kernels/image_conv.h"
#include "kernels/layer_norm.h"
}  // namespace avx512bf16
}  // namespace armour

// The AMX dense task: tile instructions under a target of their own (GCC 11 has their intrinsics).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi,bmi2,amx-tile,amx-bf16")
namespace armour {
namespace avx512bf16 {
#include "kernels/dense_amx.h"
}  // namespace avx512bf16
}  // namespace armour
#pragma GCC pop_options
#else
namespace armour {
namespace avx512bf16 {
inline constexpr DenseTaskFn dense_amx = nullptr;
}  // namespace avx512bf16
}  // namespace armour
#endif

#pragma GCC pop_options

namespace armour {
ARMOUR_DEFINE_KERNEL_TABLE(avx512bf16)
}  // namespace armour
