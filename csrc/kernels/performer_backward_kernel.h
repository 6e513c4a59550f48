// Performer (FAVOR+) backward on CPU, fused like the forward (φ recomputed per token, never
// stored), softmax (both modes) and relu features.
// With den = φ(q)·z, out = φ(q)·C / den and s = dO·out:
//   dφ(q) = (C dO − s z) / den,  dC = Σ_q φ(q) dOᵀ / den,  dz = −Σ_q φ(q) s / den,
//   dφ(k) = dC v + dz,  dv = dCᵀ φ(k),
// and through φ: g = dφ ∘ (φ − 1e-4) (softmax) or dφ ∘ [u > 0] (relu); u = (dn x)Pᵀ gives
// dx = dn (g·P); softmax's −‖dn x‖²/2 adds −Σg · dn · (dn x). Query sweep per (b, h) (dq, dC, dz),
// then key sweep per (b, h) (dk, dv; value "q": dv is added into dq).
// Seed mode's key stabiliser M = max of u over everything is attached to autograd: dM = −Σ g over
// all keys and features, routed (as torch's max does) evenly to the elements equal to M: the key
// sweep sums g and counts those elements per (b, h); the host thread adds dn·dM/count·P[j] to
// their dk rows at the end.
// Included inside armour::<ISA> after performer_kernel.h.
#pragma once

namespace lin {

struct PerformerGrad {
  const PerformerPlan* pl;
  const float* p;  // P (M × Dp), zero-padded columns
  float* dctx;     // (B·H, M, Dvp) per-(b, h) dC from the query sweep
  float* dz;       // (B·H, Mp)
  float* gsum;     // (B·H) seed: Σ g over the (b, h)'s keys
  float* hits;     // (B·H) seed: how many of its u equal the global stabiliser (exact below 2^24)
};

// g[0, Mp) = dφ ∘ ∂φ/∂u, and the gradient of the (dn-scaled) row x into dst[0, D), added when `add`.
// Returns Σ g (what the stabiliser's gradient needs).
inline float feature_grad(const PerformerPlan& pl, const float* p, const float* x, const float* u, const float* phi,
                          float* g, float* dx, float* dst, bool add) {
  const PerformerArgs& a = *pl.a;
  float gsum = 0.f;
  for (int64_t j = 0; j < a.M; ++j) {
    g[j] *= a.softmax ? phi[j] - 1e-4f : (u[j] > 0.f ? 1.f : 0.f);
    gsum += g[j];
  }
  for (int64_t j = a.M; j < pl.Mp; ++j) g[j] = 0.f;
  row_gemv(g, a.M, p, pl.Dp, pl.Dp, dx, false);
  const float diag = a.softmax ? gsum : 0.f;
  for (int64_t d = 0; d < a.D; ++d) {
    const float v = pl.dn * (dx[d] - diag * x[d]);
    dst[d] = add ? dst[d] + v : v;
  }
  return gsum;
}

inline void query_grad_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerGrad& gr = *static_cast<PerformerGrad*>(ctx);
  const PerformerPlan& pl = *gr.pl;
  const PerformerArgs& a = *pl.a;
  const int64_t M = a.M, Mp = pl.Mp, Dvp = pl.Dvp;
  Buf x(pl.Dp), u(Mp), phi(Mp), cp(M * Dvp), ct(a.Dv * Mp), z(Mp), dO(Dvp), num(Dvp), g(Mp), dx(pl.Dp);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    float* dC = gr.dctx + bh * M * Dvp;
    float* dz = gr.dz + bh * Mp;
    for (int64_t j = 0; j < M; ++j) {
      for (int64_t d = 0; d < a.Dv; ++d) {
        cp.p[j * Dvp + d] = a.ctx[(bh * M + j) * a.Dv + d];
        ct.p[d * Mp + j] = cp.p[j * Dvp + d];
      }
      z.p[j] = a.ksum[bh * M + j];
    }
    for (int64_t i = 0; i < a.Nq; ++i) {
      load_row(a.q, b, i, h, a.D, pl.dn, x.p);
      features(pl, x.p, 0.f, true, u.p, phi.p);
      const float inv = 1.f / dot(phi.p, z.p, Mp);
      row_gemv(phi.p, M, cp.p, Dvp, Dvp, num.p, false);
      load_row(a.dout, b, i, h, a.Dv, 1.f, dO.p);
      const float s = dot(dO.p, num.p, Dvp) * inv;  // dO·out
      for (int64_t j = 0; j < M; ++j) axpy(phi.p[j] * inv, dO.p, dC + j * Dvp, Dvp);
      axpy(-s * inv, phi.p, dz, Mp);
      row_gemv(dO.p, a.Dv, ct.p, Mp, Mp, g.p, false);  // C dO
      for (int64_t j = 0; j < M; ++j) g.p[j] = (g.p[j] - s * z.p[j]) * inv;
      feature_grad(pl, gr.p, x.p, u.p, phi.p, g.p, dx.p, a.dq + ((b * a.Nq + i) * a.H + h) * a.D, false);
    }
  }
}

inline void key_grad_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerGrad& gr = *static_cast<PerformerGrad*>(ctx);
  const PerformerPlan& pl = *gr.pl;
  const PerformerArgs& a = *pl.a;
  const int64_t M = a.M, Mp = pl.Mp, Dvp = pl.Dvp;
  Buf x(pl.Dp), u(Mp), phi(Mp), dct(a.Dv * Mp), vr(Dvp), g(Mp), dx(pl.Dp), dvr(Dvp);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    const float* dC = gr.dctx + bh * M * Dvp;
    const float* dz = gr.dz + bh * Mp;
    for (int64_t j = 0; j < M; ++j)
      for (int64_t d = 0; d < a.Dv; ++d) dct.p[d * Mp + j] = dC[j * Dvp + d];
    float gsum = 0.f;
    int64_t hits = 0;
    for (int64_t n = 0; n < a.Nk; ++n) {
      load_row(a.k, b, n, h, a.D, pl.dn, x.p);
      features(pl, x.p, a.stab[bh], false, u.p, phi.p);
      load_row(a.v, b, n, h, a.Dv, 1.f, vr.p);
      row_gemv(vr.p, a.Dv, dct.p, Mp, Mp, g.p, false);  // dC v
      for (int64_t j = 0; j < M; ++j) g.p[j] += dz[j];
      gsum += feature_grad(pl, gr.p, x.p, u.p, phi.p, g.p, dx.p, a.dk + ((b * a.Nk + n) * a.H + h) * a.D, false);
      for (int64_t j = 0; j < M; ++j) hits += u.p[j] == a.stab[bh];  // same u as the forward's max sweep
      row_gemv(phi.p, M, dC, Dvp, Dvp, dvr.p, false);   // dCᵀ φ(k)
      float* dst = a.dv ? a.dv + ((b * a.Nk + n) * a.H + h) * a.Dv : a.dq + ((b * a.Nk + n) * a.H + h) * a.D;
      for (int64_t d = 0; d < a.Dv; ++d) dst[d] = a.dv ? dvr.p[d] : dst[d] + dvr.p[d];
    }
    gr.gsum[bh] = gsum;
    gr.hits[bh] = static_cast<float>(hits);
  }
}

// Seed mode: dk of the elements where u equals the global stabiliser += dn · dM / count · P[j].
inline void seed_stabiliser_grad(const PerformerGrad& gr) {
  const PerformerPlan& pl = *gr.pl;
  const PerformerArgs& a = *pl.a;
  const int64_t BH = a.B * a.H;
  double dm = 0.0;
  int64_t count = 0;
  for (int64_t bh = 0; bh < BH; ++bh) {
    dm -= gr.gsum[bh];
    count += static_cast<int64_t>(gr.hits[bh]);
  }
  if (count == 0) return;
  const float share = static_cast<float>(dm / static_cast<double>(count)) * pl.dn;
  Buf x(pl.Dp), u(pl.Mp);
  for (int64_t bh = 0; bh < BH; ++bh) {
    if (gr.hits[bh] == 0.f) continue;
    const int64_t b = bh / a.H, h = bh % a.H;
    for (int64_t n = 0; n < a.Nk; ++n) {
      load_row(a.k, b, n, h, a.D, pl.dn, x.p);
      row_gemv(x.p, a.D, pl.pt, pl.Mp, pl.Mp, u.p, false);
      float* dk = a.dk + ((b * a.Nk + n) * a.H + h) * a.D;
      for (int64_t j = 0; j < a.M; ++j)
        if (u.p[j] == a.stab[bh])
          for (int64_t d = 0; d < a.D; ++d) dk[d] += share * gr.p[j * pl.Dp + d];
    }
  }
}

}  // namespace lin

inline void performer_backward(const PerformerArgs& a) {
  lin::Buf pt(a.D * lin::up(a.M, VecF::W));
  lin::PerformerPlan pl = lin::plan_performer(a, pt.p);
  lin::Buf p(a.M * pl.Dp);  // P itself (M × Dp) for dx = g·P
  for (int64_t j = 0; j < a.M; ++j)
    for (int64_t d = 0; d < a.D; ++d) p.p[j * pl.Dp + d] = a.proj[j * a.D + d];
  const int64_t BH = a.B * a.H;
  lin::Buf dctx(BH * a.M * pl.Dvp), dz(BH * pl.Mp), gsum(BH), hits(BH);
  lin::PerformerGrad gr{&pl, p.p, dctx.p, dz.p, gsum.p, hits.p};
  a.parallel_for(BH, &gr, lin::query_grad_body);
  a.parallel_for(BH, &gr, lin::key_grad_body);
  if (a.softmax && a.seed) lin::seed_stabiliser_grad(gr);
}
