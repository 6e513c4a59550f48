// Performer (FAVOR+) backward on CPU, fused like the forward (φ recomputed per block of tokens,
// never stored), softmax (both modes) and relu features.
// With den = φ(q)·z, out = φ(q)·C / den and s = dO·out:
//   dφ(q) = (C dO − s z) / den,  dC = Σ_q φ(q) dOᵀ / den,  dz = −Σ_q φ(q) s / den,
//   dφ(k) = dC v + dz,  dv = dCᵀ φ(k),
// and through φ: g = dφ ∘ (φ − 1e-4) (softmax) or dφ ∘ [u > 0] (relu); u = (dn x)Pᵀ gives
// dx = g·(dn P); softmax's −‖dn x‖²/2 adds −Σg · dn² · x. Passes:
//   performer_query_grad  per split of the queries: dq, and [dCᵀ; dzᵀ] partial sums;
//   [torch: sum the splits]
//   performer_key_grad    per split of the keys: dk, dv (value "q": added into dq);
//   performer_stab_grad   seed mode: the key stabiliser M = max of u over everything is attached
//                         to autograd: dM = −Σ g over all keys and features, routed (as torch's
//                         max does) evenly to the elements equal to M. The key pass records per
//                         task Σ g, its max of u and how many u equal it; the torch side picks
//                         the global max; this pass recomputes u (same blocks, same GEMM calls,
//                         so the same bits) in the tasks that hold it and adds dM / count · dn P[j]
//                         to those dk rows.
// Included inside armour::<ISA> after performer_kernel.h.
#pragma once

namespace lin {

inline void perf_query_grad_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerArgs& a = *static_cast<const PerformerArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), D = p.D, Dv = p.Dv, Dv1 = Dv + 1;
  constexpr int64_t R = kPerfBlock;
  const int64_t Rp = up(R, VecF::W);
  const float dn = performer_dn(a);
  // ct = Cᵀ (Dv × Mp), z = ksum (Mp, padding 0); at: [dO / den ; −s / den]ᵀ ((Dv + 1) × Rp)
  Buf pdn(M * D), pdnt(D * Mp), ct(Dv * Mp), z(Mp), u(R * Mp), phi(R * Mp), num(R * Dv1), g(R * Mp);
  Buf at(Dv1 * Rp), gsum(R), qcopy(R * D), dcopy(R * Dv), dct(Dv1 * Mp);
  scaled_projection(a, pdn.p, pdnt.p, Mp);
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.Nq, R);
    const float* ce = a.ctx_ext + t.bh * M * Dv1;
    transpose_into(ce, Dv1, M, Dv, 1.f, ct.p, Mp);
    for (int64_t j = 0; j < M; ++j) z.p[j] = ce[j * Dv1 + Dv];
    std::memset(dct.p, 0, sizeof(float) * Dv1 * Mp);
    for (int64_t i0 = t.begin; i0 < t.end; i0 += R) {
      const int64_t nb = imin(R, t.end - i0);
      const Rows q = rows_of(a.q, t.b, i0, t.h, nb, D, qcopy.p);
      p.gemm(nb, M, D, q.p, q.ld, pdnt.p, Mp, u.p, Mp, false);
      for (int64_t r = 0; r < nb; ++r) {
        const float* qr = q.p + r * q.ld;
        feature_row(a, u.p + r * Mp, 0.5f * dn * dn * dot_n(qr, qr, D), 0.f, true, phi.p + r * Mp, Mp);
      }
      p.gemm(nb, Dv1, M, phi.p, Mp, ce, Dv1, num.p, Dv1, false);  // [num | den]
      const Rows dout = rows_of(a.dout, t.b, i0, t.h, nb, Dv, dcopy.p);
      p.gemm(nb, M, Dv, dout.p, dout.ld, ct.p, Mp, g.p, Mp, false);  // C dO per row
      for (int64_t r = 0; r < nb; ++r) {
        const float* nr = num.p + r * Dv1;
        const float* dr = dout.p + r * dout.ld;
        const float inv = 1.f / nr[Dv];
        const float s = dot_n(dr, nr, Dv) * inv;  // dO·out
        float* gr = g.p + r * Mp;
        const float* fr = phi.p + r * Mp;
        const float* ur = u.p + r * Mp;
        const VecF sz = VecF::set1(s), iv = VecF::set1(inv), eps = VecF::set1(1e-4f);
        VecF gs = VecF::zero();
        for (int64_t j = 0; j < Mp; j += VecF::W) {
          VecF dphi = (VecF::load(gr + j) - sz * VecF::load(z.p + j)) * iv;
          if (a.softmax) dphi = dphi * (VecF::load(fr + j) - eps);  // relu: the mask below
          dphi.store(gr + j);
        }
        if (!a.softmax)  // relu's mask as torch's: 0 where u ≤ 0 (a NaN u passes its NaN gradient)
          for (int64_t j = 0; j < M; ++j) gr[j] = ur[j] <= 0.f ? 0.f : gr[j];
        for (int64_t j = M; j < Mp; ++j) gr[j] = 0.f;
        for (int64_t j = 0; j < Mp; j += VecF::W) gs = gs + VecF::load(gr + j);
        gsum.p[r] = hsum(gs);
        for (int64_t d = 0; d < Dv; ++d) at.p[d * Rp + r] = dr[d] * inv;
        at.p[Dv * Rp + r] = -s * inv;
      }
      float* dq = a.dq + ((t.b * a.Nq + i0) * p.H + t.h) * D;
      p.gemm(nb, D, M, g.p, Mp, pdn.p, D, dq, p.H * D, false);  // g·(dn P)
      if (a.softmax)
        for (int64_t r = 0; r < nb; ++r) axpy_n(-dn * dn * gsum.p[r], q.p + r * q.ld, dq + r * p.H * D, D);
      p.gemm(Dv1, M, nb, at.p, Rp, phi.p, Mp, dct.p, Mp, true);  // [dCᵀ; dzᵀ] += [dO/den; −s/den]ᵀ φ
    }
    for (int64_t d = 0; d < Dv1; ++d)
      std::memcpy(a.part_dctx + (task * Dv1 + d) * M, dct.p + d * Mp, sizeof(float) * M);
  }
}

// u = (dn k)Pᵀ for one block of keys (the same call in the key pass and the stabiliser pass).
inline Rows key_features(const PerformerArgs& a, const Task& t, int64_t j0, int64_t nb, const float* pdnt,
                         int64_t Mp, float* u, float* kcopy) {
  const Rows k = rows_of(a.k, t.b, j0, t.h, nb, a.p.D, kcopy);
  a.p.gemm(nb, a.p.M, a.p.D, k.p, k.ld, pdnt, Mp, u, Mp, false);
  return k;
}

inline void perf_key_grad_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerArgs& a = *static_cast<const PerformerArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), D = p.D, Dv = p.Dv;
  constexpr int64_t KB = kPerfBlock;
  const float dn = performer_dn(a);
  // dc = dC (M × Dv) for dv = φ dC; dz (Mp, padding 0); dCᵀ is read in place from dctx_ext
  Buf pdn(M * D), pdnt(D * Mp), dc(M * Dv), dz(Mp), u(KB * Mp), phi(KB * Mp), g(KB * Mp), kcopy(KB * D);
  Buf vcopy(KB * Dv), gsum(KB);
  scaled_projection(a, pdn.p, pdnt.p, Mp);
  const bool track = a.softmax && a.seed;
  for (int64_t task = begin; task < end; ++task) {
    const Task t = task_of(p, task, a.Nk, KB);
    const float* dce = a.dctx_ext + t.bh * (Dv + 1) * M;
    transpose_into(dce, M, Dv, M, 1.f, dc.p, Dv);
    for (int64_t j = 0; j < M; ++j) dz.p[j] = dce[Dv * M + j];
    const float stab = a.stab[t.bh];
    double gtotal = 0.0;
    float umax = -INFINITY, hits = 0.f;
    for (int64_t j0 = t.begin; j0 < t.end; j0 += KB) {
      const int64_t nb = imin(KB, t.end - j0);
      const Rows k = key_features(a, t, j0, nb, pdnt.p, Mp, u.p, kcopy.p);
      const Rows v = rows_of(a.v, t.b, j0, t.h, nb, Dv, vcopy.p);
      p.gemm(nb, M, Dv, v.p, v.ld, dce, M, g.p, Mp, false);  // dC v per row
      for (int64_t r = 0; r < nb; ++r) {
        const float* kr = k.p + r * k.ld;
        float* ur = u.p + r * Mp;
        float* fr = phi.p + r * Mp;
        float* gr = g.p + r * Mp;
        feature_row(a, ur, 0.5f * dn * dn * dot_n(kr, kr, D), stab, false, fr, Mp);
        for (int64_t j = 0; j < M; ++j) {
          const float dphi = gr[j] + dz.p[j];
          gr[j] = a.softmax ? dphi * (fr[j] - 1e-4f) : (ur[j] <= 0.f ? 0.f : dphi);  // relu: as above
        }
        for (int64_t j = M; j < Mp; ++j) gr[j] = 0.f;
        VecF gs = VecF::zero();
        for (int64_t j = 0; j < Mp; j += VecF::W) gs = gs + VecF::load(gr + j);
        gsum.p[r] = hsum(gs);
        if (track) {
          gtotal += gsum.p[r];
          for (int64_t j = 0; j < M; ++j) {
            if (ur[j] > umax) {
              umax = ur[j];
              hits = 1.f;
            } else if (ur[j] == umax) {
              hits += 1.f;
            }
          }
        }
      }
      float* dk = a.dk + ((t.b * a.Nk + j0) * p.H + t.h) * D;
      p.gemm(nb, D, M, g.p, Mp, pdn.p, D, dk, p.H * D, false);  // g·(dn P)
      if (a.softmax)
        for (int64_t r = 0; r < nb; ++r) axpy_n(-dn * dn * gsum.p[r], k.p + r * k.ld, dk + r * p.H * D, D);
      float* dst = a.dv ? a.dv + ((t.b * a.Nk + j0) * p.H + t.h) * Dv : a.dq + ((t.b * a.Nk + j0) * p.H + t.h) * D;
      p.gemm(nb, Dv, M, phi.p, Mp, dc.p, Dv, dst, p.H * (a.dv ? Dv : D), a.dv == nullptr);  // dv (+)= φ(k) dC
    }
    if (track) {
      a.part_gsum[task] = static_cast<float>(gtotal);
      a.part_umax[task] = umax;
      a.part_hits[task] = hits;
    }
  }
}

inline void perf_stab_grad_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerArgs& a = *static_cast<const PerformerArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), D = p.D;
  constexpr int64_t KB = kPerfBlock;
  Buf pdn(M * D), pdnt(D * Mp), u(KB * Mp), kcopy(KB * D);
  bool planned = false;
  for (int64_t task = begin; task < end; ++task) {
    if (a.part_umax[task] != a.umax) continue;
    if (!planned) scaled_projection(a, pdn.p, pdnt.p, Mp);
    planned = true;
    const Task t = task_of(p, task, a.Nk, KB);
    for (int64_t j0 = t.begin; j0 < t.end; j0 += KB) {
      const int64_t nb = imin(KB, t.end - j0);
      key_features(a, t, j0, nb, pdnt.p, Mp, u.p, kcopy.p);
      for (int64_t r = 0; r < nb; ++r)
        for (int64_t j = 0; j < M; ++j)
          if (u.p[r * Mp + j] == a.umax)
            axpy_n(a.share, pdn.p + j * D, a.dk + ((t.b * a.Nk + j0 + r) * p.H + t.h) * D, D);
    }
  }
}

}  // namespace lin

inline void performer_query_grad(const PerformerArgs& a) {
  lin::run_tasks(a, lin::perf_query_grad_body);
}

inline void performer_key_grad(const PerformerArgs& a) {
  lin::run_tasks(a, lin::perf_key_grad_body);
}

inline void performer_stab_grad(const PerformerArgs& a) {
  lin::run_tasks(a, lin::perf_stab_grad_body);
}
