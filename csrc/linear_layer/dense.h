// The serving dense layer: y = act(act_in(x) · Wᵀ + b) + residual with the weight packed once for
// oneDNN's batch-reduce GEMM micro-kernels and the epilogue applied to each output tile while it
// is in cache (docs/dense.md). Inference only: no autograd.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace armour {

// The weight (out, in) in the layout `dense` runs fastest with on this CPU under the current ISA
// dispatch: fp32 blocks (n_blocks, in, 64) for oneDNN's AVX-512 / AVX2 micro-kernel, bf16 VNNI
// blocks (n_blocks, in / 2, 64, 2) for AMX, or the weight itself (contiguous) where neither applies
// (float64, float16, bf16 without AMX, odd `in` in bf16, torch without brgemm).
at::Tensor dense_pack(const at::Tensor& weight);

// x (..., in) → (..., out_features). weight: what dense_pack returned (or a plain (out, in) weight),
// bias (out,), residual (..., out) in x's dtype. act: kernels' Act code; act_in: Hardswish on x first.
// norm_eps given: LayerNorm(x) over `in` first (norm_weight / norm_bias (in,) in x's dtype, or none),
// the pre-norm block's LayerNorm; it excludes act_in.
at::Tensor dense(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 const std::optional<at::Tensor>& residual, int64_t act, bool act_in, int64_t out_features,
                 const std::optional<at::Tensor>& norm_weight = std::nullopt,
                 const std::optional<at::Tensor>& norm_bias = std::nullopt,
                 std::optional<double> norm_eps = std::nullopt);

// The MLP fc2(act(fc1(norm(x)))) + residual as one call: per block of rows the hidden rows stay in the
// thread's scratch (docs/dense.md). weight1 / weight2: dense_pack'ed in one layout (or plain: then it
// is two dense calls, as it is with fewer row blocks than threads). act: Act code of the first layer.
at::Tensor dense_mlp(const at::Tensor& x, const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                     int64_t act, int64_t hidden_features, const at::Tensor& weight2,
                     const std::optional<at::Tensor>& bias2, int64_t out_features,
                     const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& norm_weight,
                     const std::optional<at::Tensor>& norm_bias, std::optional<double> norm_eps);

// y = act(y + bias) + residual in place over a (rows, cols) row-major y, with the dense layer's
// per-ISA epilogue (kernels/dense_epilogue.h); bias (cols,) and residual (rows, cols, unit column
// stride) in y's dtype, either undefined. act: the kernels' Act code. Used after a GEMM that did not
// apply them (the plain path here, the Linear + Hardswish layer's ATen / oneDNN GEMMs).
void epilogue_in_place(const at::Tensor& y, const at::Tensor& bias, const at::Tensor& residual, int64_t act);

// The task kernels of our own (kernel_api.h, DenseTask): bf16 on AMX (kernels/dense_amx.h) and fp32
// on AVX-512 and AVX2 for layers of at most kDenseF32MaxRows rows (kernels/dense_f32.h). Each is on by default
// where compiled and its dispatch runs; off, every tile goes through oneDNN's brgemm micro-kernel and
// then the epilogue (tests and A/B runs).
void set_dense_amx(bool on);
bool dense_amx_enabled();
bool dense_amx_available();
void set_dense_f32(bool on);
bool dense_f32_enabled();
bool dense_f32_available();

// What dense_pack chooses for `weight` now: "fp32-brgemm", "bf16-amx" or "plain".
const char* dense_layout(const at::Tensor& weight);

}  // namespace armour
