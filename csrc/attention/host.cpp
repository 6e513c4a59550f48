// Torch side of the CPU kernels: checks the tensors, describes them to the ISA kernels as raw
// pointers + strides (kernels/kernel_api.h), provides at::parallel_for, allocates the outputs.
#include "attention/host.h"

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <ATen/core/dispatch/Dispatcher.h>

#include "kernels/kernel_api.h"
#include "torch_glue.h"
#include "torch_ops/bias_index.h"

namespace armour {
namespace {

// How Python spells a dtype, so the messages read like the rest of the package's.
std::string py_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "torch.float16";
    case at::kFloat: return "torch.float32";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kDouble: return "torch.float64";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    default: return std::string("torch.") + c10::toString(t);
  }
}

std::string py_shape(at::IntArrayRef s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

Strided4 strided(const at::Tensor& t) {
  Strided4 s;
  s.ptr = t.data_ptr();
  s.sb = t.stride(0);
  s.sn = t.stride(1);
  s.sh = t.stride(2);
  s.sd = t.stride(3);
  return s;
}

constexpr int64_t kMaxHeadDim = 256;  // armour_kernels.constants.MAX_HEAD_DIM

// The op's argument checks (the errors armour_kernels.attention raises on the cpu backend, and
// tests/attention/test_attention_errors.py matches): TypeError for a wrong type or dtype,
// ValueError for a wrong shape or value. `like` is q for the other inputs.
void check_4d(const at::Tensor& t, const char* name, const at::Tensor* like = nullptr, bool head = true) {
  TORCH_CHECK_VALUE(t.dim() == 4, "attention: ", name, " must be 4-D (B, N, H, D), got shape ", py_shape(t.sizes()));
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "attention: ", name,
                   " must be a floating-point tensor (float16, float32, bfloat16 or float64), got ",
                   py_dtype(t.scalar_type()));
  if (like != nullptr)
    TORCH_CHECK_TYPE(t.scalar_type() == like->scalar_type() && t.device() == like->device(), "attention: ", name,
                     " dtype ", py_dtype(t.scalar_type()), " on ", t.device(), " but q is ",
                     py_dtype(like->scalar_type()), " on ", like->device());
  TORCH_CHECK_VALUE(!head || (t.size(3) >= 1 && t.size(3) <= kMaxHeadDim), "attention: head dims from 1 to ", kMaxHeadDim,
                    " are supported, ", name, " has ", t.size(3));
}

// Validates the inputs of forward and backward alike and fills everything but the outputs.
// The LeViT index is checked and widened to int64 by checked_bias_index (bias_index.h), once per
// index tensor version; *wide_index keeps that int64 index alive while the kernel reads it.
AttentionArgs describe(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                       const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_index,
                       const std::string& value, double scale, bool mask_diagonal, at::Tensor* dense_bias,
                       at::Tensor* wide_index) {
  TORCH_CHECK_VALUE(value == "v" || value == "q" || value == "k" || value == "q+v" || value == "q+k",
                    "attention: value must be one of ('v', 'q', 'k', 'q+v', 'q+k'), got '", value, "'");
  check_4d(q, "q");
  check_4d(k, "k", &q);
  TORCH_CHECK_TYPE(q.device().is_cpu(), "attention: the CPU kernels need CPU tensors, got ", q.device());
  AttentionArgs a;
  a.dtype = kernel_dtype(q, "q");
  a.B = q.size(0);
  a.Nq = q.size(1);
  a.H = q.size(2);
  a.Dk = q.size(3);
  a.Nk = k.size(1);
  TORCH_CHECK_VALUE(k.size(0) == a.B && k.size(2) == a.H && k.size(3) == a.Dk, "attention: k must be (B, Nk, H, Dk): q ",
                    py_shape(q.sizes()), " and k ", py_shape(k.sizes()), " must agree in B, H and D");
  const bool has_v_part = value.find('v') != std::string::npos;
  const bool has_q_part = value.find('q') != std::string::npos;
  const bool v_given = v.has_value() && v->defined();
  if (has_v_part) {
    TORCH_CHECK_VALUE(v_given, "attention: value='", value, "' needs v");
    check_4d(*v, "v", &q);
    TORCH_CHECK_VALUE(v->size(0) == a.B && v->size(1) == a.Nk && v->size(2) == a.H, "attention: v ",
                      py_shape(v->sizes()), " must match k ", py_shape(k.sizes()), " in B, N and H");
  } else {
    TORCH_CHECK_VALUE(!v_given, "attention: v is given but value='", value, "' does not use it");
  }
  TORCH_CHECK_VALUE(!has_q_part || a.Nq == a.Nk, "attention: value='", value,
                    "' needs as many queries as keys, got Nq=", a.Nq, ", Nk=", a.Nk);
  TORCH_CHECK_VALUE(std::isfinite(scale), "attention: scale must be a finite number, got ", scale);
  auto add_part = [&](const at::Tensor& t, ValueSrc src) {
    a.part[a.n_parts] = strided(t);
    a.part_width[a.n_parts] = t.size(3);
    a.part_src[a.n_parts] = src;
    a.Dv += t.size(3);
    ++a.n_parts;
  };
  if (has_q_part) add_part(q, ValueSrc::q);
  if (value == "k" || value == "q+k") add_part(k, ValueSrc::k);
  if (has_v_part) add_part(*v, ValueSrc::v);
  a.q = strided(q);
  a.k = strided(k);

  const bool index_given = bias_index.has_value() && bias_index->defined();
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& bt = *bias;
    TORCH_CHECK_TYPE(at::isFloatingType(bt.scalar_type()), "attention: bias must be a floating-point tensor, got ",
                     py_dtype(bt.scalar_type()));
    TORCH_CHECK_TYPE(bt.device() == q.device(), "attention: bias is on ", bt.device(), " but q is on ", q.device());
    a.bias_dtype = kernel_dtype(bt, "bias");
    if (index_given) {
      TORCH_CHECK_VALUE(bt.dim() == 2 && bt.size(0) == a.H, "attention: with bias_index the bias is the (H, R) table, H=",
                        a.H, "; got ", py_shape(bt.sizes()));
      *wide_index = checked_bias_index(*bias_index, a.Nq, a.Nk, bt.size(1), q.device());
      const at::Tensor& idx = *wide_index;
      a.bias_kind = BiasKind::table;
      a.bias = bt.data_ptr();
      a.bias_sh = bt.stride(0);
      a.bias_sj = bt.stride(1);
      a.table_R = bt.size(1);
      a.index = idx.data_ptr<int64_t>();
      a.index_si = idx.stride(0);
      a.index_sj = idx.stride(1);
    } else {
      std::vector<int64_t> full{a.B, a.H, a.Nq, a.Nk};
      bool broadcasts = bt.dim() <= 4;
      for (int64_t d = 0; broadcasts && d < bt.dim(); ++d) {
        const int64_t s = bt.size(bt.dim() - 1 - d);
        broadcasts = s == 1 || s == full[3 - d];
      }
      TORCH_CHECK_VALUE(broadcasts, "attention: bias of shape ", py_shape(bt.sizes()),
                        " does not broadcast to (B, H, Nq, Nk) = ", py_shape(full));
      at::Tensor e = bt.expand(full);
      *dense_bias = e;  // keeps the expanded view alive while the kernel reads it
      a.bias_kind = BiasKind::dense;
      a.bias = e.data_ptr();
      a.bias_sb = e.stride(0);
      a.bias_sh = e.stride(1);
      a.bias_si = e.stride(2);
      a.bias_sj = e.stride(3);
    }
  } else {
    TORCH_CHECK_VALUE(!index_given, "attention: bias_index needs the bias table (bias=(H, R) tensor)");
  }
  a.scale = scale;
  a.mask_diagonal = mask_diagonal;
  a.parallel_for = &torch_parallel_for;
  a.gemm = attention_gemm(a.dtype);
  a.n_chunks = attention_chunks(a.B, a.H, a.Nq, at::get_num_threads());
  return a;
}

// Nothing for a kernel to do: no query rows, or no keys (every row fully masked: out 0, lse +inf).
bool no_work(const AttentionArgs& a) { return a.B * a.H * a.Nq == 0 || a.Nk == 0; }

at::ScalarType acc_type(DType d) { return d == DType::f64 ? at::kDouble : at::kFloat; }

// A LeViT table bias over a batch: the bias tile bias[h, idx[i, j]] is the same for every image, so
// gather it once into a (H, Nq, Nk) array in the accumulation type and read it as a dense bias
// broadcast over the batch (contiguous rows: vector adds) instead of one scalar gather per score
// per image. Exact (a gather and a widening). ~0.6 MB for LeViT's 14x14 stage. The index stays
// set for the backward's scattered table gradient.
void gather_table_once(AttentionArgs& a, const at::Tensor& table, const at::Tensor& index, at::Tensor* keep) {
  const at::ScalarType acc = acc_type(a.dtype);
  *keep = table.to(acc).index_select(1, index.reshape({-1})).view({a.H, a.Nq, a.Nk}).contiguous();
  a.bias_kind = BiasKind::dense;
  a.bias_dtype = a.dtype == DType::f64 ? DType::f64 : DType::f32;
  a.bias = keep->data_ptr();
  a.bias_sb = 0;
  a.bias_sh = a.Nq * a.Nk;
  a.bias_si = a.Nk;
  a.bias_sj = 1;
}

}  // namespace

namespace {

std::optional<at::Tensor> widen_half(const std::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined() && t->scalar_type() == at::kHalf) return t->to(at::kFloat);
  return t;
}

bool is_half_call(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v) {
  // float16 is computed in float32 (no fp16 engine on the CPUs served on) and rounded once. The
  // inputs' own checks run first, so that a dtype mismatch is not hidden by the widening.
  if (q.scalar_type() != at::kHalf) return false;
  check_4d(q, "q");
  check_4d(k, "k", &q);
  if (v.has_value() && v->defined()) check_4d(*v, "v", &q);
  return true;
}

}  // namespace

std::vector<at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                                          const std::optional<at::Tensor>& bias,
                                          const std::optional<at::Tensor>& bias_index, const std::string& value,
                                          double scale, bool mask_diagonal) {
  if (is_half_call(q, k, v)) {
    std::vector<at::Tensor> r = attention_forward(q.to(at::kFloat), k.to(at::kFloat), widen_half(v), bias,
                                                  bias_index, value, scale, mask_diagonal);
    return {r[0].to(at::kHalf), r[1]};
  }
  at::Tensor dense_bias, index;
  // The kernels read float32 / bfloat16 / float64 biases: a float16 bias is widened.
  const std::optional<at::Tensor> kbias = widen_half(bias);
  AttentionArgs a = describe(q, k, v, kbias, bias_index, value, scale, mask_diagonal, &dense_bias, &index);
  const auto lse_opts = q.options().dtype(acc_type(a.dtype));
  // The one place the empty cases are answered (docs/numerics.md): empty in, empty out; no keys:
  // every row fully masked, out 0 (as SDPA gives) and lse +inf.
  if (no_work(a))
    return {at::zeros({a.B, a.Nq, a.H, a.Dv}, q.options()),
            at::full({a.B, a.H, a.Nq}, std::numeric_limits<double>::infinity(), lse_opts)};
  if (a.bias_kind == BiasKind::table && a.B > 1) gather_table_once(a, *kbias, index, &dense_bias);
  at::Tensor out = at::empty({a.B, a.Nq, a.H, a.Dv}, q.options());
  at::Tensor lse = at::empty({a.B, a.H, a.Nq}, lse_opts);
  a.out = out.data_ptr();
  a.lse = lse.data_ptr();
  current_kernels().attention_forward(a);
  return {out, lse};
}

std::vector<at::Tensor> attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                           const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& bias,
                                           const std::optional<at::Tensor>& bias_index, const at::Tensor& out,
                                           const at::Tensor& lse, const std::string& value, double scale,
                                           bool mask_diagonal, bool need_dbias) {
  if (is_half_call(q, k, v)) {
    std::vector<at::Tensor> r =
        attention_backward(dout.to(at::kFloat), q.to(at::kFloat), k.to(at::kFloat), widen_half(v), bias, bias_index,
                           out.to(at::kFloat), lse, value, scale, mask_diagonal, need_dbias);
    for (int i = 0; i < 3; ++i)
      if (r[i].defined() && r[i].numel() > 0) r[i] = r[i].to(at::kHalf);
    return r;
  }
  at::Tensor dense_bias, index;
  const std::optional<at::Tensor> kbias = widen_half(bias);
  AttentionArgs a = describe(q, k, v, kbias, bias_index, value, scale, mask_diagonal, &dense_bias, &index);
  for (const at::Tensor* t : {&dout, &out}) {
    check_4d(*t, t == &dout ? "dout" : "out", &q, /*head=*/false);  // Dv_total wide
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef({a.B, a.Nq, a.H, a.Dv}),
                      "attention_backward: dout/out must be (B, Nq, H, Dv) = (", a.B, ", ", a.Nq, ", ", a.H, ", ",
                      a.Dv, "), got ", t->sizes());
  }
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef({a.B, a.H, a.Nq}), "attention_backward: lse must be (B, H, Nq), got ",
                    lse.sizes());
  const auto acc_opts = q.options().dtype(acc_type(a.dtype));
  const bool has_dv = value.find('v') != std::string::npos;
  // Absent outputs (no v part, no bias gradient wanted) are empty tensors: the schema returns Tensors.
  at::Tensor dq, dk, dv = at::empty({0}, q.options()), dbias = at::empty({0}, acc_opts);
  need_dbias = need_dbias && a.bias_kind != BiasKind::none;
  if (no_work(a)) {  // no query rows or no keys: nothing flows anywhere
    dq = at::zeros_like(q, at::MemoryFormat::Contiguous);
    dk = at::zeros_like(k, at::MemoryFormat::Contiguous);
    if (has_dv) dv = at::zeros_like(*v, at::MemoryFormat::Contiguous);
    if (need_dbias) dbias = at::zeros(bias->sizes(), acc_opts);
    return {dq, dk, dv, dbias};
  }
  if (a.bias_kind == BiasKind::table && a.B > 1) gather_table_once(a, *kbias, index, &dense_bias);
  at::Tensor lse_c = lse.to(acc_type(a.dtype)).contiguous();
  a.dout = strided(dout);
  a.o = strided(out);
  a.lse_in = lse_c.data_ptr();
  dq = at::empty_like(q, at::MemoryFormat::Contiguous);
  dk = at::empty_like(k, at::MemoryFormat::Contiguous);
  at::Tensor partial, dtable;
  a.dq = dq.data_ptr();
  a.dk = dk.data_ptr();
  if (has_dv) {
    dv = at::empty_like(*v, at::MemoryFormat::Contiguous);
    a.dv = dv.data_ptr();
    a.dv_width = dv.size(3);
  }
  if (a.n_chunks > 1) {
    a.partial_size = a.Nq * a.Dk + a.Dk * a.Nk + a.Dv * a.Nk;
    partial = at::empty({2 * a.n_chunks, a.partial_size}, acc_opts);
    a.partial = partial.data_ptr();
  }
  const bool table = bias_index.has_value() && bias_index->defined();
  if (need_dbias && !table) {
    dbias = at::empty({a.B, a.H, a.Nq, a.Nk}, acc_opts);
    a.dbias = dbias.data_ptr();
  } else if (need_dbias) {
    // The table gradient: summed over the batch per (h, i, j) in each chunk's slice, then scattered
    // into the table once; past ~16 M accumulators (long sequences) scattered per score instead.
    a.dtable_scatter = a.n_chunks * a.H * a.Nq * a.Nk > (int64_t{1} << 24);
    const std::vector<int64_t> shape = a.dtable_scatter ? std::vector<int64_t>{a.n_chunks, a.H, a.table_R}
                                                        : std::vector<int64_t>{a.n_chunks, a.H, a.Nq, a.Nk};
    dtable = at::zeros(shape, acc_opts);
    a.dtable = dtable.data_ptr();
  }
  current_kernels().attention_backward(a);
  if (need_dbias && !table) {
    // Written at (B, H, Nq, Nk), one slice per task (race-free); reduced to the shape the caller gave.
    dbias = at::sum_to(dbias, bias->sizes());
  } else if (need_dbias && a.dtable_scatter) {
    dbias = dtable.sum(0);
  } else if (need_dbias) {
    dbias = at::zeros({a.H, a.table_R}, acc_opts).index_add_(1, index.reshape({-1}),
                                                             dtable.sum(0).reshape({a.H, a.Nq * a.Nk}));
  }
  // dbias is in the accumulation type (float64 for float64 inputs); autograd casts it to the bias dtype.
  return {dq, dk, dv, dbias};
}

}  // namespace armour
