// The CPU kernels of the dispatcher ops armour_kernels::nystrom_fwd, nystrom_bwd, performer_fwd and
// performer_bwd (schemas in torch_ops/schemas.cpp, registered for the CPU key in
// torch_ops/linear_attention_cpu.cpp), implemented in linear_attention/nystrom.cpp and linear_attention/performer.cpp.
//
// Tensors float32, float16 or bfloat16 with any strides, computed in float32: out and the
// gradients come back in their input's dtype, what the forward saves for the backward in float32.
// v absent means value "q" (the query is the value; its gradient is inside dq). A gradient that does
// not exist (dv for value "q", dconv_weight without a conv) is an empty tensor: an op returns no None.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace armour {

// q, k (B, Nq|Nk, H, D), v (B, Nk, H, Dv) or none; projection (m, D).
// Returns (out (B, Nq, H, Dv), ctx (B·H, m, Dv), ksum (B·H, m), stab (B·H)).
using PerformerForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v, const at::Tensor& projection,
    c10::string_view kernel, c10::string_view mode);
// (dq, dk, dv) from dout (B, Nq, H, Dv) and the forward's ctx, ksum, stab.
using PerformerBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const at::Tensor& projection, const at::Tensor& ctx, const at::Tensor& ksum, const at::Tensor& stab,
    c10::string_view kernel, c10::string_view mode);

// q, k (B, N, H, D) unpadded, q unscaled, v (B, N, H, Dv) or none; conv_weight (H, 1, K, 1) or none.
// Returns (out (B, N, H, Dv), q̃, k̃ (B·H, m, D), W, Y (B·H, m, Dv), lse3 (B·H, m)).
using NystromForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& conv_weight, int64_t num_landmarks, int64_t pinv_iterations,
    c10::string_view mode);
// (dq, dk, dv, dconv_weight (H, 1, K, 1)) from dout (B, N, H, Dv) and the forward's q̃, k̃, W, Y, lse3.
using NystromBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const std::optional<at::Tensor>& conv_weight, const at::Tensor& q_landmarks, const at::Tensor& k_landmarks,
    const at::Tensor& w, const at::Tensor& y, const at::Tensor& lse, int64_t num_landmarks,
    int64_t pinv_iterations, c10::string_view mode);

PerformerForward performer_fwd_cpu;
PerformerBackward performer_bwd_cpu;
NystromForward nystrom_fwd_cpu;
NystromBackward nystrom_bwd_cpu;

}  // namespace armour
