// Nyström attention on CPU, backward passes (docs/nystrom.md), hand-derived like the forward is
// fused: A1 and A3 are recomputed one block of tokens at a time, never stored. With dO for the
// real rows and dS = A∘(dA − rowsum(A∘dA)) for each softmax:
//   1. nystrom_query_grad   A1 = softmax(qs k̃ᵀ) again; dA1 = dO Yᵀ → dS1;
//                           dq ← D^-1/2 dS1 k̃, and per split dYᵀ = Σ dOᵀA1, dk̃ᵀ = Σ qᵀdS1;
//   2. nystrom_pinv_grad    per (b, h): Z's iterations again, dZ = dY Wᵀ, dW = Zᵀ dY, and back
//                           through the iterations to dA2 (nystrom_pinv_kernel.h);
//   [torch: dA2 through the pinv's scale; A2's softmax → dq̃, dk̃; δ3 = rowsum(dW∘W)]
//   3. nystrom_key_grad     A3ᵀ = exp(k q̃ᵀ − lse3) (keys × landmarks, the layout that reads k
//                           and v in place); dA3ᵀ = v dWᵀ, dS3ᵀ = A3ᵀ∘(dA3ᵀ − δ3);
//                           dk = dS3ᵀ q̃ + dk̃[landmark] / l, dv = A3ᵀ dW + the conv's transpose
//                           applied to dO (value "q": added into dq), and per split
//                           dq̃ᵀ = Σ kᵀdS3ᵀ and the conv weight's gradient;
//   4. nystrom_landmark_grad dq += D^-1/2 dq̃[landmark] / l (dq̃ complete only after pass 3).
// The padded keys have k = v = 0: they add nothing to dq̃ and their dk, dv are dropped, so the
// key pass skips them (δ3 = rowsum(A3∘dA3) over all keys = dW·W includes them exactly).
#pragma once

namespace lin {

inline void nys_query_grad_body(void* ctx, int64_t begin, int64_t end) {
  const NystromArgs& a = *static_cast<const NystromArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), D = p.D, Dv = p.Dv;
  constexpr int64_t R = kNysBlock;
  const int64_t Rp = up(R, VecF::W);
  // kts = D^-1/2 k̃ᵀ (D × Mp), ks = D^-1/2 k̃ (M × D), yt = Yᵀ (Dv × Mp)
  Buf kts(D * Mp), ks(M * D), yt(Dv * Mp), s(R * Mp), da(R * Mp), qcopy(R * D), dcopy(R * Dv);
  Buf dot(Dv * Rp), qt(D * Rp), dyt(Dv * Mp), dklt(D * Mp);
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.N, R);
    const float* kl = a.kl + t.bh * M * D;
    transpose_into(kl, D, M, D, a.scale, kts.p, Mp);
    for (int64_t i = 0; i < M * D; ++i) ks.p[i] = a.scale * kl[i];
    transpose_into(a.y + t.bh * M * Dv, Dv, M, Dv, 1.f, yt.p, Mp);
    std::memset(dyt.p, 0, sizeof(float) * Dv * Mp);
    std::memset(dklt.p, 0, sizeof(float) * D * Mp);
    for (int64_t i0 = t.begin; i0 < t.end; i0 += R) {
      const int64_t nb = imin(R, t.end - i0);
      const Rows q = rows_of(a.q, t.b, i0, t.h, nb, D, qcopy.p);
      p.gemm(nb, M, D, q.p, q.ld, kts.p, Mp, s.p, Mp, false);  // S1
      for (int64_t r = 0; r < nb; ++r) softmax_row(s.p + r * Mp, M, Mp);  // A1 (padding lanes 0)
      const Rows dout = rows_of(a.dout, t.b, i0, t.h, nb, Dv, dcopy.p);
      p.gemm(nb, M, Dv, dout.p, dout.ld, yt.p, Mp, da.p, Mp, false);  // dA1 = dO Yᵀ
      for (int64_t r = 0; r < nb; ++r) softmax_grad_row(s.p + r * Mp, da.p + r * Mp, M, Mp);  // dS1
      float* dq = a.dq + ((t.b * a.N + i0) * p.H + t.h) * D;
      p.gemm(nb, D, M, da.p, Mp, ks.p, D, dq, p.H * D, false);  // dq = D^-1/2 dS1 k̃
      load_transposed(a.dout, t.b, i0, t.h, nb, Dv, 1.f, dot.p, Rp);
      p.gemm(Dv, M, nb, dot.p, Rp, s.p, Mp, dyt.p, Mp, true);  // dYᵀ += dOᵀ A1
      load_transposed(a.q, t.b, i0, t.h, nb, D, 1.f, qt.p, Rp);
      p.gemm(D, M, nb, qt.p, Rp, da.p, Mp, dklt.p, Mp, true);  // dk̃ᵀ += qᵀ dS1 (unscaled)
    }
    for (int64_t d = 0; d < Dv; ++d) std::memcpy(a.part_dyt + (task * Dv + d) * M, dyt.p + d * Mp, sizeof(float) * M);
    for (int64_t d = 0; d < D; ++d) std::memcpy(a.part_dklt + (task * D + d) * M, dklt.p + d * Mp, sizeof(float) * M);
  }
}

inline void nys_key_grad_body(void* ctx, int64_t begin, int64_t end) {
  const NystromArgs& a = *static_cast<const NystromArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), D = p.D, Dv = p.Dv, Dvp = up(Dv, VecF::W);
  const int64_t half = a.K / 2;
  constexpr int64_t KB = kNysBlock;
  const int64_t KBp = up(KB, VecF::W);
  // qlt = q̃ᵀ (D × Mp), dwt = dWᵀ (Dv × Mp), lse / delta padded with +inf / 0 (A3ᵀ's padding lanes 0)
  Buf qlt(D * Mp), dwt(Dv * Mp), lse(Mp), delta(Mp), s(KB * Mp), da(KB * Mp), kcopy(KB * D), vcopy(KB * Dv);
  Buf kt(D * KBp), dqlt(D * Mp), dconv(a.conv ? a.K : 1), rtaps(a.conv ? a.K : 1);
  Buf vwin(a.conv ? KB * Dvp : 1), owin(a.conv ? (KB + a.K) * Dvp : 1), acc(Dvp);
  float* dst_base = a.dv ? a.dv : a.dq;  // value "q": v is q, its value gradient goes into dq
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.N, KB);
    const float* ql = a.ql + t.bh * M * D;
    const float* dw = a.dw + t.bh * M * Dv;
    const float* dkl = a.dkl + t.bh * M * D;
    transpose_into(ql, D, M, D, 1.f, qlt.p, Mp);
    transpose_into(dw, Dv, M, Dv, 1.f, dwt.p, Mp);
    for (int64_t i = 0; i < Mp; ++i) {
      lse.p[i] = i < M ? a.lse[t.bh * M + i] : INFINITY;
      delta.p[i] = i < M ? a.delta[t.bh * M + i] : 0.f;
    }
    std::memset(dqlt.p, 0, sizeof(float) * D * Mp);
    if (a.conv) {
      std::memset(dconv.p, 0, sizeof(float) * a.K);
      for (int64_t i = 0; i < a.K; ++i) rtaps.p[i] = a.conv[t.h * a.K + a.K - 1 - i];
    }
    for (int64_t j0 = t.begin; j0 < t.end; j0 += KB) {
      const int64_t nb = imin(KB, t.end - j0);
      const Rows k = rows_of(a.k, t.b, j0, t.h, nb, D, kcopy.p);
      p.gemm(nb, M, D, k.p, k.ld, qlt.p, Mp, s.p, Mp, false);  // S3ᵀ = k q̃ᵀ
      const Rows v = rows_of(a.v, t.b, j0, t.h, nb, Dv, vcopy.p);
      p.gemm(nb, M, Dv, v.p, v.ld, dwt.p, Mp, da.p, Mp, false);  // dA3ᵀ = v dWᵀ
      for (int64_t r = 0; r < nb; ++r) {
        float* sr = s.p + r * Mp;
        float* dr = da.p + r * Mp;
        for (int64_t j = 0; j < Mp; j += VecF::W) {
          const VecF pr = vexp(VecF::load(sr + j) - VecF::load(lse.p + j));  // A3ᵀ
          pr.store(sr + j);
          (pr * (VecF::load(dr + j) - VecF::load(delta.p + j))).store(dr + j);  // dS3ᵀ
        }
      }
      const int64_t ld_dst = p.H * (a.dv ? Dv : D);
      float* dst = dst_base + ((t.b * a.N + j0) * p.H + t.h) * (a.dv ? Dv : D);
      p.gemm(nb, Dv, M, s.p, Mp, dw, Dv, dst, ld_dst, a.dv == nullptr);  // dv (+)= A3ᵀ dW
      // dv[j] += Σ_t w[t] dO[j − t + half] = the conv with reversed taps over dO;
      // dw[t] += Σ_j v[j]·dO[j − t + half]
      if (a.conv && rows_in_place(a.dout, Dv) && rows_in_place(a.v, Dv)) {
        for (int64_t r = 0; r < nb; ++r)
          conv_row_in_place(rtaps.p, a.K, a.dout, t.b, t.h, j0 + r, a.N, Dv, dst + r * ld_dst, true);
        for (int64_t tap = 0; tap < a.K; ++tap) {
          VecF sum = VecF::zero();
          const int64_t r0 = imax(0, tap - half - j0), r1 = imin(nb, a.N + tap - half - j0);
          for (int64_t r = r0; r < r1; ++r) {
            const float* vr = row_ptr(a.v, t.b, j0 + r, t.h);
            const float* o = row_ptr(a.dout, t.b, j0 + r - tap + half, t.h);
            for (int64_t c = 0; c < Dv; c += VecF::W) sum = fmadd(VecF::load(vr + c), VecF::load(o + c), sum);
          }
          dconv.p[tap] += hsum(sum);
        }
      } else if (a.conv) {  // through a zero-padded window (window row j − j0 + 2·half − t)
        load_window(a.dout, t.b, t.h, j0, j0 + nb, half, a.N, Dv, owin.p, Dvp);
        conv_rows(rtaps.p, a.K, owin.p, Dvp, nb, Dv, dst, ld_dst, true, acc.p);
        for (int64_t r = 0; r < nb; ++r) load_row(a.v, t.b, j0 + r, t.h, Dv, 1.f, vwin.p + r * Dvp);
        for (int64_t tap = 0; tap < a.K; ++tap) {
          VecF sum = VecF::zero();
          for (int64_t r = 0; r < nb; ++r) {
            const float* o = owin.p + (r + 2 * half - tap) * Dvp;
            for (int64_t c = 0; c < Dvp; c += VecF::W) sum = fmadd(VecF::load(vwin.p + r * Dvp + c), VecF::load(o + c), sum);
          }
          dconv.p[tap] += hsum(sum);
        }
      }
      float* dk = a.dk + ((t.b * a.N + j0) * p.H + t.h) * D;
      for (int64_t r = 0; r < nb; ++r) {  // dk̃[landmark] / l, then += dS3ᵀ q̃
        const float* src = dkl + ((j0 + r + a.pad) / a.group) * D;
        float* row = dk + r * p.H * D;
        for (int64_t d = 0; d < D; ++d) row[d] = src[d] / a.group;
      }
      p.gemm(nb, D, M, da.p, Mp, ql, D, dk, p.H * D, true);
      load_transposed(a.k, t.b, j0, t.h, nb, D, 1.f, kt.p, KBp);
      p.gemm(D, M, nb, kt.p, KBp, da.p, Mp, dqlt.p, Mp, true);  // dq̃ᵀ += kᵀ dS3ᵀ
    }
    for (int64_t d = 0; d < D; ++d) std::memcpy(a.part_dqlt + (task * D + d) * M, dqlt.p + d * Mp, sizeof(float) * M);
    if (a.conv) std::memcpy(a.part_dconv + task * a.K, dconv.p, sizeof(float) * a.K);
  }
}

inline void nys_landmark_grad_body(void* ctx, int64_t begin, int64_t end) {
  const NystromArgs& a = *static_cast<const NystromArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t D = p.D;
  const float c = a.scale / a.group;
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.N, kNysBlock);
    const float* dql = a.dql + t.bh * p.M * D;
    for (int64_t i = t.begin; i < t.end; ++i)
      axpy_n(c, dql + ((i + a.pad) / a.group) * D, a.dq + ((t.b * a.N + i) * p.H + t.h) * D, D);
  }
}

}  // namespace lin

inline void nystrom_query_grad(const NystromArgs& a) {
  lin::run_tasks(a, lin::nys_query_grad_body);
}

inline void nystrom_key_grad(const NystromArgs& a) {
  lin::run_tasks(a, lin::nys_key_grad_body);
}

inline void nystrom_landmark_grad(const NystromArgs& a) {
  lin::run_tasks(a, lin::nys_landmark_grad_body);
}
