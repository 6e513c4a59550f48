// Kernels compiled for the AVX2 + FMA path (8-lane float vectors).
//
// ISA safety (see kernels/kernel_api.h): every standard header is included BEFORE the target
// pragma, so no std inline function is compiled for this ISA; the kernels live in their own
// namespace armour::avx2, so no symbol is shared with another ISA's copy; no torch header is
// included; and the accessor kernels_avx2() is compiled after pop_options (baseline code), so
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

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")

namespace armour {
namespace avx2 {
#include "kernels/vec_scalar.h"
#include "kernels/vec_avx2.h"
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
}  // namespace avx2
}  // namespace armour

#pragma GCC pop_options

namespace armour {
ARMOUR_DEFINE_KERNEL_TABLE(avx2)
ARMOUR_DEFINE_LINEAR_TABLE(avx2)
}  // namespace armour
