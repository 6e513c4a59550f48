// Torch side shared by the CPU Nyström / Performer entry points (see linear_attention/host.h).
#include "linear_attention/host.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

namespace armour {
namespace linear {
namespace {

void parallel_tasks(int64_t n, void* ctx, ParallelBody body) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
}

// The kernels' GEMM: oneDNN's brgemm micro-kernel as ATen ships it (AVX-512 / AVX2 code chosen by
// oneDNN for this CPU; ATen falls back to its BLAS where the micro-kernel is missing). Torch
// older than 2.6 lacks the fp32 overload: at::mm on views of the same memory instead.
void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
              int64_t ldc, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, A, B, C, /*is_vnni=*/false);
#else
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor a = at::from_blob(const_cast<float*>(A), {M, K}, {lda, 1}, opts);
  at::Tensor b = at::from_blob(const_cast<float*>(B), {K, N}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (accumulate) {
    c.addmm_(a, b);
  } else {
    at::mm_out(c, a, b);
  }
#endif
}

}  // namespace

Strided4 strided4(const at::Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

void check_mode(const char* op, const std::string& mode) {
  TORCH_CHECK(mode == "seed" || mode == "clean", "armour_kernels::", op, ": mode must be 'seed' or 'clean', got '",
              mode, "'");
}

at::Tensor to_f32(const char* op, const at::Tensor& t, const char* name) {
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16, "armour_kernels::", op, ": ", name,
              " must be float32, float16 or bfloat16, got ", type);
  return type == at::kFloat ? t : t.to(at::kFloat);
}

std::optional<at::Tensor> to_f32(const char* op, const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return to_f32(op, *t, name);
}

void check_f32_4d(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "armour_kernels::", op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 4, "armour_kernels::", op, ": ", name, " must be 4-D (B, N, H, D), got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "armour_kernels::", op, ": ", name,
              " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.numel() > 0, "armour_kernels::", op, ": ", name, " is empty, shape ", t.sizes());
}

void check_qk(const char* op, const at::Tensor& q, const at::Tensor& k) {
  check_f32_4d(op, q, "q");
  check_f32_4d(op, k, "k");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3), "armour_kernels::", op,
              ": q ", q.sizes(), " and k ", k.sizes(), " must agree in B, H and D");
}

const at::Tensor& value_of(const char* op, const at::Tensor& q, const at::Tensor& k,
                           const std::optional<at::Tensor>& v) {
  if (!v.has_value() || !v->defined()) {
    TORCH_CHECK(q.size(1) == k.size(1), "armour_kernels::", op, ": value 'q' needs as many queries as keys, got ",
                q.size(1), " and ", k.size(1));
    return q;
  }
  check_f32_4d(op, *v, "v");
  TORCH_CHECK(v->size(0) == k.size(0) && v->size(1) == k.size(1) && v->size(2) == k.size(2),
              "armour_kernels::", op, ": v ", v->sizes(), " must match k ", k.sizes(), " in B, N and H");
  return *v;
}

float* saved_f32(const char* op, const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.sizes() == shape,
              "armour_kernels::", op, ": ", name, " must be contiguous float32 of shape ", shape,
              " (as the forward returned it), got ", t.scalar_type(), " ", t.sizes());
  return t.data_ptr<float>();
}

LinearPlan linear_plan(int64_t B, int64_t H, int64_t D, int64_t Dv, int64_t M) {
  LinearPlan p;
  p.B = B;
  p.H = H;
  p.D = D;
  p.Dv = Dv;
  p.M = M;
  p.parallel_for = parallel_tasks;
  p.gemm = gemm_f32;
  return p;
}

int64_t choose_splits(int64_t bh, int64_t n) {
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = (n + kLinearBlock - 1) / kLinearBlock;
  // The fewest splits whose tasks fill the threads to ≥ 85% (at::parallel_for hands each thread
  // a contiguous run of ceil(tasks / threads) tasks): fewer splits, less merging.
  int64_t best = 1;
  double best_fill = 0.0;
  for (int64_t s = 1; s <= blocks; ++s) {
    const int64_t tasks = bh * s;
    const double fill = static_cast<double>(tasks) / static_cast<double>(threads * ((tasks + threads - 1) / threads));
    if (fill >= 0.85) return s;
    if (fill > best_fill) {
      best = s;
      best_fill = fill;
    }
  }
  return best;
}

at::Tensor sum_splits(const at::Tensor& parts, int64_t bh, int64_t splits) {
  std::vector<int64_t> shape{bh, splits};
  for (int64_t d = 1; d < parts.dim(); ++d) shape.push_back(parts.size(d));
  at::Tensor grouped = parts.view(shape);
  return splits == 1 ? grouped.select(1, 0) : grouped.sum(1);
}

}  // namespace linear
}  // namespace armour
