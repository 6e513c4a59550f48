// Torch side of the CPU Nyström / Performer kernels: what the entry points (linear_attention/nystrom.cpp,
// linear_attention/performer.cpp) share — input checks, strides, the GEMM and threads given to the kernels,
// how each (b, h)'s tokens are split into tasks, and summing the per-split partials.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "kernels/linear_api.h"

namespace armour {
namespace linear {

Strided4 strided4(const at::Tensor& t);

void check_mode(const char* op, const std::string& mode);
// t in float32 for the kernels: float32 as it is (strides kept: the kernels read any strides),
// float16 / bfloat16 converted; any other dtype is an error naming the op and the argument.
at::Tensor to_f32(const char* op, const at::Tensor& t, const char* name);
std::optional<at::Tensor> to_f32(const char* op, const std::optional<at::Tensor>& t, const char* name);
// A CPU float32 (B, N, H, D) tensor with elements.
void check_f32_4d(const char* op, const at::Tensor& t, const char* name);
// q, k: check_f32_4d and the same B, H, D.
void check_qk(const char* op, const at::Tensor& q, const at::Tensor& k);
// The value tensor: v (checked against k), or q itself for value "q" (v absent).
const at::Tensor& value_of(const char* op, const at::Tensor& q, const at::Tensor& k,
                           const std::optional<at::Tensor>& v);
// A tensor the forward returned for the backward: contiguous float32 of exactly `shape`.
float* saved_f32(const char* op, const at::Tensor& t, at::IntArrayRef shape, const char* name);

// Sizes, threads (at::parallel_for) and GEMM (at::native::cpublas::brgemm); splits = 1.
LinearPlan linear_plan(int64_t B, int64_t H, int64_t D, int64_t Dv, int64_t M);
// Splits per (b, h) of n tokens so that B·H·splits tasks keep every thread busy (whole blocks
// of kLinearBlock tokens per split; 1 when B·H alone divides well among the threads).
int64_t choose_splits(int64_t bh, int64_t n);
// (B·H·splits, …) partials → (B·H, …) sums.
at::Tensor sum_splits(const at::Tensor& parts, int64_t bh, int64_t splits);

}  // namespace linear
}  // namespace armour
