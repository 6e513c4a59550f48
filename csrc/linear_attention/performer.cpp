// Torch side of the CPU Performer kernels (docs/performer.md): checks, outputs, and the order of
// the passes (kernels/performer_kernel.h, performer_backward_kernel.h) with the (B·H, m, ·)-sized
// work between them in ATen: merging the per-split key sums into ctx, ksum and the key
// stabiliser, summing the per-split gradient partials, seed mode's global stabiliser.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "linear_attention/host.h"
#include "linear_attention/ops.h"

namespace armour {
namespace {

using namespace linear;

// Checks and describes the Performer inputs (forward and backward alike); proj keeps the fp32 copy alive.
PerformerArgs describe_performer(const char* op, const at::Tensor& q, const at::Tensor& k,
                                 const std::optional<at::Tensor>& v, const at::Tensor& projection,
                                 const std::string& kernel, const std::string& mode, at::Tensor* proj) {
  check_qk(op, q, k);
  const at::Tensor& val = value_of(op, q, k, v);
  TORCH_CHECK(kernel == "softmax" || kernel == "relu", "armour_kernels::", op,
              ": kernel must be 'softmax' or 'relu', got '", kernel, "'");
  check_mode(op, mode);
  TORCH_CHECK(projection.device().is_cpu() && projection.dim() == 2 && projection.size(1) == q.size(3) &&
                  projection.size(0) >= 1,
              "armour_kernels::", op, ": projection must be a CPU (m, D) tensor with D = ", q.size(3), ", got ",
              projection.sizes());
  *proj = projection.to(at::kFloat).contiguous();
  PerformerArgs a;
  a.p = linear_plan(q.size(0), q.size(2), q.size(3), val.size(3), proj->size(0));
  a.q = strided4(q);
  a.k = strided4(k);
  a.v = strided4(val);
  a.Nq = q.size(1);
  a.Nk = k.size(1);
  a.proj = proj->data_ptr<float>();
  a.softmax = kernel == "softmax";
  a.seed = mode == "seed";
  return a;
}

// Seed mode's stabiliser gradient, from the key pass's per-task partials: the global maximum of u,
// dM = −Σ g, and dM's share for each u equal to the maximum (ties split evenly, as torch's max
// backward). Three scalars from B·H·splits floats, read in place (no tensor ops or .item()); a NaN
// maximum stays NaN, so that no u matches it and no share is added, as the tensor ops gave.
void seed_stab_share(PerformerArgs& a, int64_t tasks) {
  float umax = -INFINITY;
  for (int64_t t = 0; t < tasks; ++t) {
    const float u = a.part_umax[t];
    if (std::isnan(u)) {
      umax = u;
      break;
    }
    umax = std::max(umax, u);
  }
  double hits = 0.0, gsum = 0.0;
  for (int64_t t = 0; t < tasks; ++t) {
    if (a.part_umax[t] == umax) hits += a.part_hits[t];
    gsum += a.part_gsum[t];
  }
  a.umax = umax;
  a.share = static_cast<float>(-gsum / hits);
}

// The passes on float32 q, k, v (performer_fwd_cpu converts): {out, ctx, ksum, stab}.
std::vector<at::Tensor> performer_forward(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                          const at::Tensor& projection, const std::string& kernel,
                                          const std::string& mode) {
  at::Tensor proj;
  PerformerArgs a = describe_performer("performer_fwd", q, k, v, projection, kernel, mode, &proj);
  const LinearKernelTable& kernels = current_linear_kernels();
  const int64_t BH = a.p.B * a.p.H, M = a.p.M, Dv = a.p.Dv;
  const auto f32 = q.options().dtype(at::kFloat);

  // 1. keys: per split Σ e vᵀ, Σ e, Σ v and the running max of u
  const int64_t S = a.p.splits = choose_splits(BH, a.Nk), T = BH * S;
  at::Tensor part_ctx = at::empty({T, M, Dv}, f32), part_ksum = at::empty({T, M}, f32);
  at::Tensor part_max = at::empty({T}, f32), part_vsum = at::empty({T, Dv}, f32);
  a.part_ctx = part_ctx.data_ptr<float>();
  a.part_ksum = part_ksum.data_ptr<float>();
  a.part_max = part_max.data_ptr<float>();
  a.part_vsum = part_vsum.data_ptr<float>();
  kernels.performer_context(a);
  at::Tensor ctx, ksum, stab;
  if (a.softmax) {
    const at::Tensor mx = part_max.view({BH, S});
    const at::Tensor top = S == 1 ? part_max : mx.amax(1);  // max of u per (b, h)
    stab = a.seed ? top.max().expand({BH}).contiguous() : top;
    at::Tensor sum_ev = part_ctx, sum_e = part_ksum;  // one split at its own maximum: factor 1
    if (S > 1 || a.seed) {
      const at::Tensor f = (mx - stab.unsqueeze(1)).exp_();  // e^(M_split − stab)
      sum_ev = (part_ctx.view({BH, S, M, Dv}) * f.view({BH, S, 1, 1})).sum(1);
      sum_e = (part_ksum.view({BH, S, M}) * f.unsqueeze(-1)).sum(1);
    }
    ctx = sum_ev + 1e-4 * sum_splits(part_vsum, BH, S).unsqueeze(1);
    ksum = sum_e + 1e-4 * static_cast<double>(a.Nk);
  } else {
    ctx = sum_splits(part_ctx, BH, S);
    ksum = sum_splits(part_ksum, BH, S);
    stab = at::zeros({BH}, f32);
  }
  ctx = ctx.contiguous();
  ksum = ksum.contiguous();
  const at::Tensor ctx_ext = at::cat({ctx, ksum.unsqueeze(-1)}, -1).contiguous();

  // 2. queries: out = φ(q)·ctx / φ(q)·ksum
  a.p.splits = choose_splits(BH, a.Nq);
  at::Tensor out = at::empty({a.p.B, a.Nq, a.p.H, Dv}, f32);
  a.ctx_ext = ctx_ext.data_ptr<float>();
  a.out = out.data_ptr<float>();
  kernels.performer_output(a);
  return {out, ctx, ksum, stab};
}

// The gradient passes on float32 dout, q, k, v: {dq, dk, dv (undefined without v)}, all float32.
std::vector<at::Tensor> performer_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                           const std::optional<at::Tensor>& v, const at::Tensor& projection,
                                           const at::Tensor& ctx, const at::Tensor& ksum, const at::Tensor& stab,
                                           const std::string& kernel, const std::string& mode) {
  const char* op = "performer_bwd";
  at::Tensor proj;
  PerformerArgs a = describe_performer(op, q, k, v, projection, kernel, mode, &proj);
  const LinearKernelTable& kernels = current_linear_kernels();
  const int64_t B = a.p.B, H = a.p.H, D = a.p.D, Dv = a.p.Dv, BH = B * H, M = a.p.M;
  check_f32_4d(op, dout, "dout");
  TORCH_CHECK(dout.size(0) == B && dout.size(1) == a.Nq && dout.size(2) == H && dout.size(3) == Dv,
              "armour_kernels::", op, ": dout must be (B, Nq, H, Dv) = (", B, ", ", a.Nq, ", ", H, ", ", Dv,
              "), got ", dout.sizes());
  saved_f32(op, ctx, {BH, M, Dv}, "ctx");
  saved_f32(op, ksum, {BH, M}, "ksum");
  a.stab = saved_f32(op, stab, {BH}, "stab");
  a.dout = strided4(dout);
  const auto f32 = q.options().dtype(at::kFloat);
  const at::Tensor ctx_ext = at::cat({ctx, ksum.unsqueeze(-1)}, -1).contiguous();
  a.ctx_ext = ctx_ext.data_ptr<float>();

  // 1. queries: dq, and per split [dCᵀ; dzᵀ]
  int64_t S = a.p.splits = choose_splits(BH, a.Nq);
  at::Tensor dq = at::empty({B, a.Nq, H, D}, f32), part_dctx = at::empty({BH * S, Dv + 1, M}, f32);
  a.dq = dq.data_ptr<float>();
  a.part_dctx = part_dctx.data_ptr<float>();
  kernels.performer_query_grad(a);
  const at::Tensor dctx_ext = sum_splits(part_dctx, BH, S).contiguous();
  a.dctx_ext = dctx_ext.data_ptr<float>();

  // 2. keys: dk, dv (value "q": into dq)
  S = a.p.splits = choose_splits(BH, a.Nk);
  at::Tensor dk = at::empty({B, a.Nk, H, D}, f32), dv;
  if (v.has_value() && v->defined()) dv = at::empty({B, a.Nk, H, Dv}, f32);
  a.dk = dk.data_ptr<float>();
  a.dv = dv.defined() ? dv.data_ptr<float>() : nullptr;
  const bool attached = a.softmax && a.seed;
  at::Tensor part_gsum, part_umax, part_hits;
  if (attached) {
    part_gsum = at::empty({BH * S}, f32);
    part_umax = at::empty({BH * S}, f32);
    part_hits = at::empty({BH * S}, f32);
    a.part_gsum = part_gsum.data_ptr<float>();
    a.part_umax = part_umax.data_ptr<float>();
    a.part_hits = part_hits.data_ptr<float>();
  }
  kernels.performer_key_grad(a);

  // 3. seed mode: the global stabiliser's gradient, evenly to the u equal to it
  if (attached) {
    seed_stab_share(a, BH * S);
    kernels.performer_stab_grad(a);
  }
  return {dq, dk, dv};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> performer_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                           const std::optional<at::Tensor>& v,
                                                                           const at::Tensor& projection,
                                                                           c10::string_view kernel,
                                                                           c10::string_view mode) {
  const char* op = "performer_fwd";
  std::vector<at::Tensor> r = performer_forward(to_f32(op, q, "q"), to_f32(op, k, "k"), to_f32(op, v, "v"),
                                                projection, std::string(kernel), std::string(mode));
  return {r[0].to(q.scalar_type()), r[1], r[2], r[3]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> performer_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
    const at::Tensor& projection, const at::Tensor& ctx, const at::Tensor& ksum, const at::Tensor& stab,
    c10::string_view kernel, c10::string_view mode) {
  const char* op = "performer_bwd";
  std::vector<at::Tensor> g =
      performer_backward(to_f32(op, dout, "dout"), to_f32(op, q, "q"), to_f32(op, k, "k"), to_f32(op, v, "v"),
                         projection, ctx, ksum, stab, std::string(kernel), std::string(mode));
  return {g[0].to(q.scalar_type()), g[1].to(k.scalar_type()),
          g[2].defined() ? g[2].to(v->scalar_type()) : at::empty({0}, q.options())};
}

}  // namespace armour
