// What every torch-facing file of the CPU kernels shares: the thread pool handed to the ISA
// kernels (at::parallel_for) and the dtype codes they take.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "kernels/kernel_api.h"

namespace armour {

inline void torch_parallel_for(int64_t n, void* ctx, ParallelBody body) {
  // grain 1: at::parallel_for splits [0, n) into one contiguous chunk per thread.
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
}

inline DType kernel_dtype(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kBFloat16: return DType::bf16;
    case at::kDouble: return DType::f64;
    default:
      TORCH_CHECK_TYPE(false, "armour_kernels._C: ", what, " must be float32, bfloat16 or float64, got ", t.scalar_type());
  }
}

}  // namespace armour
