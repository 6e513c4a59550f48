// Kernels compiled for the baseline x86-64 path (any CPU): one-lane vectors, compiled with the default flags.
//
// ISA safety (see kernels/kernel_api.h): every standard header is included BEFORE the target
// pragma, so no std inline function is compiled for this ISA; the kernels live in their own
// namespace armour::scalar, so no symbol is shared with another ISA's copy; no torch header is
// included; and the accessor kernels_scalar() is compiled after pop_options (baseline code), so
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


namespace armour {
namespace scalar {
#include "kernels/vec_scalar.h"
#include "kernels/vec_baseline.h"
#include "kernels/attention_kernel.h"
#include "kernels/dense_epilogue.h"
#include "kernels/image_conv.h"
#include "kernels/layer_norm.h"
#include "kernels/linear_util.h"
#include "kernels/performer_kernel.h"
#include "kernels/performer_backward_kernel.h"
#include "kernels/nystrom_kernel.h"
inline constexpr DenseTaskFn dense_amx = nullptr;  // AMX tiles: avx512bf16 only
inline constexpr DenseTaskFn dense_f32 = nullptr;  // vector registers: avx2 and up
}  // namespace scalar
}  // namespace armour

#pragma GCC pop_options

namespace armour {
ARMOUR_DEFINE_KERNEL_TABLE(scalar)
ARMOUR_DEFINE_LINEAR_TABLE(scalar)
}  // namespace armour
