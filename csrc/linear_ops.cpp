// Torch side of the CPU Nyström / Performer forward kernels: checks, strides, outputs, threads.
#include "linear_ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "kernels/linear_api.h"

namespace armour {
namespace {

void linear_parallel_for(int64_t n, void* ctx, ParallelBody body) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
}

Strided4 strided4(const at::Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

void check_mode(const char* op, const std::string& mode) {
  TORCH_CHECK(mode == "seed" || mode == "clean", "armour_kernels._C.", op, ": mode must be 'seed' or 'clean', got '",
              mode, "'");
}

// What both argument structs share: sizes B, H, D, Dv, the q / k / value strides, the threads.
template <class Args>
void describe_qkv(Args& a, const at::Tensor& q, const at::Tensor& k, const at::Tensor& val) {
  a.B = q.size(0);
  a.H = q.size(2);
  a.D = q.size(3);
  a.Dv = val.size(3);
  a.q = strided4(q);
  a.k = strided4(k);
  a.v = strided4(val);
  a.parallel_for = linear_parallel_for;
}

void check_f32_4d(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "armour_kernels._C.", op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 4, "armour_kernels._C.", op, ": ", name, " must be 4-D (B, N, H, D), got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "armour_kernels._C.", op, ": ", name,
              " must be float32 (the Python launcher converts other dtypes), got ", t.scalar_type());
  TORCH_CHECK(t.numel() > 0, "armour_kernels._C.", op, ": ", name, " is empty, shape ", t.sizes());
}

// The value tensor: v, or q itself for value "q" (v absent).
const at::Tensor& value_of(const char* op, const at::Tensor& q, const at::Tensor& k,
                           const std::optional<at::Tensor>& v) {
  if (!v.has_value() || !v->defined()) {
    TORCH_CHECK(q.size(1) == k.size(1), "armour_kernels._C.", op, ": value 'q' needs as many queries as keys, got ",
                q.size(1), " and ", k.size(1));
    return q;
  }
  check_f32_4d(op, *v, "v");
  TORCH_CHECK(v->size(0) == k.size(0) && v->size(1) == k.size(1) && v->size(2) == k.size(2),
              "armour_kernels._C.", op, ": v ", v->sizes(), " must match k ", k.sizes(), " in B, N and H");
  return *v;
}

void check_qk(const char* op, const at::Tensor& q, const at::Tensor& k) {
  check_f32_4d(op, q, "q");
  check_f32_4d(op, k, "k");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3), "armour_kernels._C.", op,
              ": q ", q.sizes(), " and k ", k.sizes(), " must agree in B, H and D");
}

}  // namespace

namespace {

// Checks and describes the Performer inputs (forward and backward alike); proj keeps the fp32 copy alive.
PerformerArgs describe_performer(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                 const at::Tensor& projection, const std::string& kernel, const std::string& mode,
                                 at::Tensor* proj) {
  const char* op = "performer_attention";
  check_qk(op, q, k);
  const at::Tensor& val = value_of(op, q, k, v);
  TORCH_CHECK(kernel == "softmax" || kernel == "relu", "armour_kernels._C.", op,
              ": kernel must be 'softmax' or 'relu', got '", kernel, "'");
  check_mode(op, mode);
  TORCH_CHECK(projection.device().is_cpu() && projection.dim() == 2 && projection.size(1) == q.size(3) &&
                  projection.size(0) >= 1,
              "armour_kernels._C.", op, ": projection must be a CPU (m, D) tensor with D = ", q.size(3), ", got ",
              projection.sizes());
  *proj = projection.to(at::kFloat).contiguous();
  PerformerArgs a;
  describe_qkv(a, q, k, val);
  a.Nq = q.size(1);
  a.Nk = k.size(1);
  a.M = proj->size(0);
  a.proj = proj->data_ptr<float>();
  a.softmax = kernel == "softmax";
  a.seed = mode == "seed";
  return a;
}

float* f32_ptr(const at::Tensor& t, std::initializer_list<int64_t> shape, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.sizes().vec() == std::vector<int64_t>(shape),
              "armour_kernels._C.performer_attention_backward: ", name, " must be contiguous float32 of shape ",
              at::IntArrayRef(shape), " (as the forward returned it), got ", t.sizes());
  return t.data_ptr<float>();
}

}  // namespace

std::vector<at::Tensor> performer_forward(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                          const at::Tensor& projection, const std::string& kernel,
                                          const std::string& mode) {
  at::Tensor proj;
  PerformerArgs a = describe_performer(q, k, v, projection, kernel, mode, &proj);
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor out = at::empty({a.B, a.Nq, a.H, a.Dv}, f32);
  at::Tensor ctx = at::empty({a.B * a.H, a.M, a.Dv}, f32);
  at::Tensor ksum = at::empty({a.B * a.H, a.M}, f32);
  at::Tensor stab = at::empty({a.B * a.H}, f32);
  a.out = out.data_ptr<float>();
  a.ctx = ctx.data_ptr<float>();
  a.ksum = ksum.data_ptr<float>();
  a.stab = stab.data_ptr<float>();
  current_linear_kernels().performer_forward(a);
  return {out, ctx, ksum, stab};
}

std::vector<at::Tensor> performer_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                           const std::optional<at::Tensor>& v, const at::Tensor& projection,
                                           const at::Tensor& ctx, const at::Tensor& ksum, const at::Tensor& stab,
                                           const std::string& kernel, const std::string& mode) {
  at::Tensor proj;
  PerformerArgs a = describe_performer(q, k, v, projection, kernel, mode, &proj);
  check_f32_4d("performer_attention_backward", dout, "dout");
  TORCH_CHECK(dout.size(0) == a.B && dout.size(1) == a.Nq && dout.size(2) == a.H && dout.size(3) == a.Dv,
              "armour_kernels._C.performer_attention_backward: dout must be (B, Nq, H, Dv) = (", a.B, ", ", a.Nq,
              ", ", a.H, ", ", a.Dv, "), got ", dout.sizes());
  const int64_t BH = a.B * a.H;
  a.ctx = f32_ptr(ctx, {BH, a.M, a.Dv}, "ctx");
  a.ksum = f32_ptr(ksum, {BH, a.M}, "ksum");
  a.stab = f32_ptr(stab, {BH}, "stab");
  a.dout = strided4(dout);
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor dq = at::empty({a.B, a.Nq, a.H, a.D}, f32), dk = at::empty({a.B, a.Nk, a.H, a.D}, f32);
  at::Tensor dv;
  a.dq = dq.data_ptr<float>();
  a.dk = dk.data_ptr<float>();
  if (v.has_value() && v->defined()) {
    dv = at::empty({a.B, a.Nk, a.H, a.Dv}, f32);
    a.dv = dv.data_ptr<float>();
  }
  current_linear_kernels().performer_backward(a);
  return {dq, dk, dv};
}

std::vector<at::Tensor> nystrom_forward(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                        const std::optional<at::Tensor>& conv_weight, int64_t num_landmarks,
                                        int64_t pinv_iterations, const std::string& mode) {
  const char* op = "nystrom_attention";
  check_qk(op, q, k);
  TORCH_CHECK(q.size(1) == k.size(1), "armour_kernels._C.", op, ": q and k must have the same length, got ",
              q.size(1), " and ", k.size(1));
  const at::Tensor& val = value_of(op, q, k, v);
  TORCH_CHECK(num_landmarks >= 1, "armour_kernels._C.", op, ": num_landmarks must be ≥ 1, got ", num_landmarks);
  TORCH_CHECK(pinv_iterations >= 0, "armour_kernels._C.", op, ": pinv_iterations must be ≥ 0, got ", pinv_iterations);
  check_mode(op, mode);
  NystromArgs a;
  describe_qkv(a, q, k, val);
  a.N = q.size(1);
  a.M = num_landmarks;
  a.iterations = static_cast<int>(pinv_iterations);
  a.seed = mode == "seed";
  at::Tensor conv;
  if (conv_weight.has_value() && conv_weight->defined()) {
    const at::Tensor& w = *conv_weight;
    TORCH_CHECK(w.device().is_cpu() && w.dim() == 4 && w.size(0) == a.H && w.size(1) == 1 && w.size(3) == 1 &&
                    w.size(2) % 2 == 1,
                "armour_kernels._C.", op, ": conv_weight must be a CPU (H, 1, K, 1) tensor with H = ", a.H,
                " and K odd, got ", w.sizes());
    conv = w.to(at::kFloat).reshape({a.H, w.size(2)}).contiguous();
    a.conv = conv.data_ptr<float>();
    a.K = w.size(2);
  }
  const int64_t BH = a.B * a.H, M = a.M;
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor out = at::empty({a.B, a.N, a.H, a.Dv}, f32);
  at::Tensor ql = at::empty({BH, M, a.D}, f32), kl = at::empty({BH, M, a.D}, f32);
  at::Tensor w = at::empty({BH, M, a.Dv}, f32), y = at::empty({BH, M, a.Dv}, f32), lse = at::empty({BH, M}, f32);
  at::Tensor a2 = at::empty({BH, M, M}, f32), absmax = at::empty({BH, 2}, f32);
  a.out = out.data_ptr<float>();
  a.ql = ql.data_ptr<float>();
  a.kl = kl.data_ptr<float>();
  a.w = w.data_ptr<float>();
  a.y = y.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  a.a2 = a2.data_ptr<float>();
  a.absmax = absmax.data_ptr<float>();
  current_linear_kernels().nystrom_forward(a);
  return {out, ql, kl, w, y, lse};
}

}  // namespace armour
