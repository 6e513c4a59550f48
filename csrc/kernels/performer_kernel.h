// Performer (FAVOR+) forward on CPU (docs/performer.md). φ(q), φ(k) (n×m) only ever exist one
// block of tokens at a time. Two passes, with the torch side (linear_attention/performer.cpp) in between:
//   1. performer_context  per split of the keys: Σ e·vᵀ, Σ e (and Σ v), with
//                         e = exp(u − ‖dn k‖²/2 − M_run), u = (dn k)Pᵀ, M_run the running max of
//                         u (rescaled when it grows, like an online softmax), or e = φ (relu);
//      [torch: merge the splits; stab = max u per (b, h) (clean) or over the batch (seed);
//       ctx = e^(M − stab) Σ e vᵀ + 1e-4 Σ v, ksum = e^(M − stab) Σ e + 1e-4 n: exactly
//       Σ φ(k)vᵀ and Σ φ(k) with φ = exp(u − ‖dn k‖²/2 − stab) + 1e-4, in one pass over the keys]
//   2. performer_output   per block of queries: φ(q) (query stabiliser: its row max of u),
//                         [num | den] = φ(q)·[ctx | ksum], out = num / den.
// Each block's products are GEMM calls (a.p.gemm). Included inside armour::<ISA> after
// linear_util.h. fp32 only (the host converts bf16 / fp16).
#pragma once

namespace lin {

constexpr int64_t kPerfBlock = kLinearBlock;

inline float performer_dn(const PerformerArgs& a) {
  return static_cast<float>(std::pow(static_cast<double>(a.p.D), -0.25));
}

// pdn = dn·P (M × D) and its transpose pdnt (D × Mp, zero padding columns).
inline void scaled_projection(const PerformerArgs& a, float* pdn, float* pdnt, int64_t Mp) {
  const float dn = performer_dn(a);
  for (int64_t i = 0; i < a.p.M * a.p.D; ++i) pdn[i] = dn * a.proj[i];
  if (pdnt) transpose_into(pdn, a.p.D, a.p.M, a.p.D, 1.f, pdnt, Mp);
}

// Row r of u (Mp wide) → φ into phi (padding lanes 0; phi may be u itself). softmax: exp(u − half_norm − stab) + 1e-4,
// relu: max(u, 0) + 1e-3. Row stabiliser (queries): stab = max of the row's u.
inline void feature_row(const PerformerArgs& a, float* u, float half_norm, float stab, bool row_stab, float* phi,
                        int64_t Mp) {
  const int64_t M = a.p.M;
  if (a.softmax) {
    if (row_stab) stab = max_padded(u, M, Mp);  // u's padding lanes become −inf: unused past M
    const VecF shift = VecF::set1(half_norm + stab), eps = VecF::set1(1e-4f);
    for (int64_t j = 0; j < Mp; j += VecF::W) (vexp(VecF::load(u + j) - shift) + eps).store(phi + j);
  } else {
    const VecF eps = VecF::set1(1e-3f);
    for (int64_t j = 0; j < Mp; j += VecF::W) (vmax(VecF::zero(), VecF::load(u + j)) + eps).store(phi + j);
  }
  for (int64_t j = M; j < Mp; ++j) phi[j] = 0.f;
}

inline void perf_context_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerArgs& a = *static_cast<const PerformerArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, D = p.D, Dv = p.Dv, Dvp = up(Dv, VecF::W);
  constexpr int64_t KB = kPerfBlock;
  const int64_t KBp = up(KB, VecF::W);
  const float dn = performer_dn(a);
  Buf pdn(M * D), kt(D * KBp), ut(M * KBp), hn(KBp), acc(M * Dvp), es(M), vs(Dvp), vcopy(KB * Dv);
  scaled_projection(a, pdn.p, nullptr, 0);
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.Nk, KB);
    std::memset(acc.p, 0, sizeof(float) * M * Dvp);
    std::memset(es.p, 0, sizeof(float) * M);
    std::memset(vs.p, 0, sizeof(float) * Dvp);
    float run = -INFINITY;
    for (int64_t j0 = t.begin; j0 < t.end; j0 += KB) {
      const int64_t nb = imin(KB, t.end - j0);
      load_transposed(a.k, t.b, j0, t.h, nb, D, 1.f, kt.p, KBp);
      p.gemm(M, nb, D, pdn.p, D, kt.p, KBp, ut.p, KBp, false);  // uᵀ = (dn P) kᵀ: features × keys
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = nb; j < KBp; ++j) ut.p[i * KBp + j] = -INFINITY;  // e = 0 past the block
      if (a.softmax) {
        for (int64_t j = 0; j < KBp; j += VecF::W) {  // ‖dn k‖²/2 per key, from the kᵀ rows
          VecF s = VecF::zero();
          for (int64_t d = 0; d < D; ++d) s = fmadd(VecF::load(kt.p + d * KBp + j), VecF::load(kt.p + d * KBp + j), s);
          (VecF::set1(0.5f * dn * dn) * s).store(hn.p + j);
        }
        // A NaN u makes run NaN for good (the max of u that seed mode shares over the batch)
        const float bm = nan_max(max_n(ut.p, M * KBp), run);
        if (!(bm == run)) {  // rescale what was summed under the old maximum
          const float alpha = std::exp(run - bm);
          scale_inplace(alpha, acc.p, M * Dvp);
          for (int64_t i = 0; i < M; ++i) es.p[i] *= alpha;
          run = bm;
        }
        const VecF shift = VecF::set1(run);
        for (int64_t i = 0; i < M; ++i) {
          float* row = ut.p + i * KBp;
          VecF l = VecF::zero();
          for (int64_t j = 0; j < KBp; j += VecF::W) {
            const VecF e = vexp(VecF::load(row + j) - VecF::load(hn.p + j) - shift);
            e.store(row + j);
            l = l + e;
          }
          es.p[i] += hsum(l);
        }
      } else {
        const VecF eps = VecF::set1(1e-3f);
        for (int64_t i = 0; i < M; ++i) {
          float* row = ut.p + i * KBp;
          for (int64_t j = 0; j < KBp; j += VecF::W) (vmax(VecF::zero(), VecF::load(row + j)) + eps).store(row + j);
          for (int64_t j = nb; j < KBp; ++j) row[j] = 0.f;
          VecF l = VecF::zero();
          for (int64_t j = 0; j < KBp; j += VecF::W) l = l + VecF::load(row + j);
          es.p[i] += hsum(l);
        }
      }
      const Rows v = rows_of(a.v, t.b, j0, t.h, nb, Dv, vcopy.p);
      p.gemm(M, Dv, nb, ut.p, KBp, v.p, v.ld, acc.p, Dvp, true);  // Σ e vᵀ
      if (a.softmax)
        for (int64_t r = 0; r < nb; ++r) axpy_n(1.f, v.p + r * v.ld, vs.p, Dv);
    }
    for (int64_t i = 0; i < M; ++i) {
      std::memcpy(a.part_ctx + (task * M + i) * Dv, acc.p + i * Dvp, sizeof(float) * Dv);
      a.part_ksum[task * M + i] = es.p[i];
    }
    a.part_max[task] = run;
    std::memcpy(a.part_vsum + task * Dv, vs.p, sizeof(float) * Dv);
  }
}

inline void perf_output_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerArgs& a = *static_cast<const PerformerArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), D = p.D, Dv = p.Dv, Dv1 = Dv + 1;
  constexpr int64_t R = kPerfBlock;
  const float dn = performer_dn(a);
  Buf pdn(M * D), pdnt(D * Mp), u(R * Mp), num(R * Dv1), qcopy(R * D);
  scaled_projection(a, pdn.p, pdnt.p, Mp);
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.Nq, R);
    const float* ce = a.ctx_ext + t.bh * M * Dv1;
    for (int64_t i0 = t.begin; i0 < t.end; i0 += R) {
      const int64_t nb = imin(R, t.end - i0);
      const Rows q = rows_of(a.q, t.b, i0, t.h, nb, D, qcopy.p);
      p.gemm(nb, M, D, q.p, q.ld, pdnt.p, Mp, u.p, Mp, false);  // u = (dn q) Pᵀ
      for (int64_t r = 0; r < nb; ++r) {
        const float* qr = q.p + r * q.ld;
        float* ur = u.p + r * Mp;
        feature_row(a, ur, 0.5f * dn * dn * dot_n(qr, qr, D), 0.f, true, ur, Mp);
      }
      p.gemm(nb, Dv1, M, u.p, Mp, ce, Dv1, num.p, Dv1, false);  // [num | den] = φ(q) [ctx | ksum]
      for (int64_t r = 0; r < nb; ++r) {
        const float* nr = num.p + r * Dv1;
        const float inv = 1.f / nr[Dv];
        float* o = a.out + ((t.b * a.Nq + i0 + r) * p.H + t.h) * Dv;
        for (int64_t d = 0; d < Dv; ++d) o[d] = nr[d] * inv;
      }
    }
  }
}

}  // namespace lin

inline void performer_context(const PerformerArgs& a) {
  lin::run_tasks(a, lin::perf_context_body);
}

inline void performer_output(const PerformerArgs& a) {
  lin::run_tasks(a, lin::perf_output_body);
}
