// Nyström attention on CPU (docs/nystrom.md), forward passes. The torch side (linear_attention/nystrom.cpp)
// runs them in order, with the m×m work between them in ATen:
//   1. nystrom_landmarks    q̃ = landmark means of q·D^-1/2, k̃ = of k (the front padding counts
//                           as zero rows in the means without being stored);
//   [torch: A2 = softmax(q̃k̃ᵀ) and the scale c of the pinv's first iterate]
//   2. nystrom_key_forward  W = A3·v, A3 = softmax(q̃kᵀ), as an online softmax over key blocks,
//                           partial per split (the torch side merges them); the p padded keys
//                           score 0 and carry value 0: they start split 0 at running max 0,
//                           running sum p;
//   3. nystrom_pinv         per (b, h): Z = pinv(A2) by Razavi's iterations, Y = Z·W
//                           (nystrom_pinv_kernel.h);
//   4. nystrom_output       out = softmax(q·D^-1/2 k̃ᵀ)·Y + the depthwise residual conv of v.
// (A1 Z)(A3 v) = A1 (Z W): A1 (n×m) and A3 (m×n) only ever exist one block of tokens at a time.
// Each block's products are GEMM calls (a.p.gemm); the tokens are read in place when their rows
// are unit-stride. The backward passes are in nystrom_backward_kernel.h (included at the end).
// Included inside armour::<ISA> after linear_util.h. fp32 only (the host converts bf16 / fp16).
#pragma once

namespace lin {

constexpr int64_t kNysBlock = kLinearBlock;

inline void nys_landmarks_body(void* ctx, int64_t begin, int64_t end) {
  const NystromArgs& a = *static_cast<const NystromArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t D = p.D, Dp = up(D, VecF::W);
  Buf row(Dp), sq(Dp), sk(Dp);
  // adds row n of x to sum, in place when its features are unit-stride
  auto add_row = [&](const Strided4& x, int64_t b, int64_t n, int64_t h, float* sum) {
    if (x.sd == 1) {
      axpy_n(1.f, row_ptr(x, b, n, h), sum, D);
    } else {
      load_row(x, b, n, h, D, 1.f, row.p);
      axpy_n(1.f, row.p, sum, D);
    }
  };
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, p.M, 1);  // a split of the landmarks
    for (int64_t i = t.begin; i < t.end; ++i) {
      std::memset(sq.p, 0, sizeof(float) * Dp);
      std::memset(sk.p, 0, sizeof(float) * Dp);
      for (int64_t n = imax(0, i * a.group - a.pad); n < (i + 1) * a.group - a.pad; ++n) {
        add_row(a.q, t.b, n, t.h, sq.p);
        add_row(a.k, t.b, n, t.h, sk.p);
      }
      float* ql = a.ql + (t.bh * p.M + i) * D;
      float* kl = a.kl + (t.bh * p.M + i) * D;
      for (int64_t d = 0; d < D; ++d) {
        ql[d] = sq.p[d] * (a.scale / a.group);
        kl[d] = sk.p[d] / a.group;
      }
    }
  }
}

inline void nys_key_forward_body(void* ctx, int64_t begin, int64_t end) {
  const NystromArgs& a = *static_cast<const NystromArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, D = p.D, Dv = p.Dv, Dvp = up(Dv, VecF::W);
  constexpr int64_t KB = kNysBlock;
  const int64_t KBp = up(KB, VecF::W);
  Buf kt(D * KBp), s(M * KBp), acc(M * Dvp), mx(M), sum(M), vcopy(KB * Dv);
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.N, KB);
    const float* ql = a.ql + t.bh * M * D;
    const bool padded = t.split == 0 && a.pad > 0;
    for (int64_t i = 0; i < M; ++i) {
      mx.p[i] = padded ? 0.f : -INFINITY;
      sum.p[i] = padded ? static_cast<float>(a.pad) : 0.f;
    }
    std::memset(acc.p, 0, sizeof(float) * M * Dvp);
    for (int64_t j0 = t.begin; j0 < t.end; j0 += KB) {
      const int64_t nb = imin(KB, t.end - j0);
      load_transposed(a.k, t.b, j0, t.h, nb, D, 1.f, kt.p, KBp);
      p.gemm(M, nb, D, ql, D, kt.p, KBp, s.p, KBp, false);  // S3 = q̃ kᵀ
      for (int64_t i = 0; i < M; ++i) {
        float* si = s.p + i * KBp;
        for (int64_t j = nb; j < KBp; ++j) si[j] = -INFINITY;
        const float bm = max_n(si, KBp);
        const float m_new = nan_max(bm, mx.p[i]);
        const float l = exp_shifted(si, m_new, KBp);
        const float alpha = std::exp(mx.p[i] - m_new);  // 0 on the first block (−inf)
        if (alpha != 1.f) scale_inplace(alpha, acc.p + i * Dvp, Dvp);
        sum.p[i] = sum.p[i] * alpha + l;
        mx.p[i] = m_new;
      }
      const Rows v = rows_of(a.v, t.b, j0, t.h, nb, Dv, vcopy.p);
      p.gemm(M, Dv, nb, s.p, KBp, v.p, v.ld, acc.p, Dvp, true);  // acc += P3 v
    }
    for (int64_t i = 0; i < M; ++i) {
      a.part_max[task * M + i] = mx.p[i];
      a.part_sum[task * M + i] = sum.p[i];
      std::memcpy(a.part_acc + (task * M + i) * Dv, acc.p + i * Dvp, sizeof(float) * Dv);
    }
  }
}

inline void nys_output_body(void* ctx, int64_t begin, int64_t end) {
  const NystromArgs& a = *static_cast<const NystromArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), D = p.D, Dv = p.Dv, Dvp = up(Dv, VecF::W);
  const int64_t half = a.K / 2;
  constexpr int64_t R = kNysBlock;
  // kts = D^-1/2 k̃ᵀ (D × Mp); vwin: the value rows the block's conv taps reach.
  Buf kts(D * Mp), s(R * Mp), qcopy(R * D), vwin(a.conv ? (R + a.K) * Dvp : 1), acc(Dvp);
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.N, R);
    transpose_into(a.kl + t.bh * M * D, D, M, D, a.scale, kts.p, Mp);
    const float* y = a.y + t.bh * M * Dv;
    for (int64_t i0 = t.begin; i0 < t.end; i0 += R) {
      const int64_t nb = imin(R, t.end - i0);
      const Rows q = rows_of(a.q, t.b, i0, t.h, nb, D, qcopy.p);
      p.gemm(nb, M, D, q.p, q.ld, kts.p, Mp, s.p, Mp, false);  // S1 = q D^-1/2 k̃ᵀ
      for (int64_t r = 0; r < nb; ++r) softmax_row(s.p + r * Mp, M, Mp);
      float* o = a.out + ((t.b * a.N + i0) * p.H + t.h) * Dv;
      if (a.conv && rows_in_place(a.v, Dv)) {
        for (int64_t r = 0; r < nb; ++r)
          conv_row_in_place(a.conv + t.h * a.K, a.K, a.v, t.b, t.h, i0 + r, a.N, Dv, o + r * p.H * Dv, false);
      } else if (a.conv) {
        load_window(a.v, t.b, t.h, i0, i0 + nb, half, a.N, Dv, vwin.p, Dvp);
        conv_rows(a.conv + t.h * a.K, a.K, vwin.p, Dvp, nb, Dv, o, p.H * Dv, false, acc.p);
      }
      p.gemm(nb, Dv, M, s.p, Mp, y, Dv, o, p.H * Dv, a.conv != nullptr);  // out (+)= A1 Y
    }
  }
}

}  // namespace lin

inline void nystrom_landmarks(const NystromArgs& a) {
  lin::run_tasks(a, lin::nys_landmarks_body);
}

inline void nystrom_key_forward(const NystromArgs& a) {
  lin::run_tasks(a, lin::nys_key_forward_body);
}

inline void nystrom_output(const NystromArgs& a) {
  lin::run_tasks(a, lin::nys_output_body);
}

// isa_*.cpp include this header only
#include "nystrom_pinv_kernel.h"
#include "nystrom_backward_kernel.h"
