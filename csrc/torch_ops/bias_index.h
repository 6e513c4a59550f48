// The LeViT bias index of the attention op: checked and widened once per index tensor version.
#pragma once

#include <ATen/core/Tensor.h>

namespace armour {

// `index` as a contiguous int64 (Nq, Nk) tensor whose entries all lie in [0, table_width).
// TypeError / ValueError for a wrong dtype, shape, device or range. Reading the index costs a
// pass over Nq·Nk entries, so the result is remembered per index tensor and version counter: a
// module's index is a buffer that never changes, and an int32 index is converted once, not per
// call. An in-place change moves the version and the check runs again.
at::Tensor checked_bias_index(const at::Tensor& index, int64_t nq, int64_t nk, int64_t table_width,
                              const c10::Device& device);

}  // namespace armour
