// Kernels compiled for the AVX-512 (F/BW/VL/DQ) + FMA path (16-lane float vectors).
//
// ISA safety (see kernels/kernel_api.h): every standard header is included BEFORE the target
// pragma, so no std inline function is compiled for this ISA; the kernels live in their own
// namespace armour::avx512, so no symbol is shared with another ISA's copy; no torch header is
// included; and the accessor kernels_avx512() is compiled after pop_options (baseline code), so
// asking for the table never executes an instruction the CPU may lack. isa_dispatch.cpp only
// calls into the table after checking CPUID.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/kernel_api.h"
#include "kernels/linear_api.h"

// GCC 12 false positive inside its own _mm512_reduce_* intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2")

namespace armour {
namespace avx512 {
#include "kernels/vec_scalar.h"
#include "kernels/vec_avx512.h"
#include "kernels/attention_kernel.h"
#include "kernels/dense_epilogue.h"
#include "kernels/dense_f32.h"
#include "kernels/image_conv.h"
#include "kernels/layer_norm.h"
#include "kernels/linear_util.h"
#include "kernels/performer_kernel.h"
#include "kernels/performer_backward_kernel.h"
#include "kernels/nystrom_kernel.h"
inline constexpr DenseTaskFn dense_amx = nullptr;  // AMX tiles: avx512bf16 only
}  // namespace avx512
}  // namespace armour

#pragma GCC pop_options

namespace armour {
ARMOUR_DEFINE_KERNEL_TABLE(avx512)
ARMOUR_DEFINE_LINEAR_TABLE(avx512)
}  // namespace armour
