// Performer (FAVOR+) forward on CPU (docs/performer.md), fused like the Triton kernels: the features φ(x)
// of one token are computed in registers / a one-row buffer and used at once, φ(q), φ(k) (n×m)
// never exist in memory. Three sweeps:
//   1. key stabiliser M = max of u = (dn·k)Pᵀ per (b, h) (softmax only; seed: max over all),
//   2. ctx = Σₙ φ(kₙ) vₙᵀ and ksum = Σₙ φ(kₙ) in one pass over the keys, per (b, h),
//   3. out = φ(q)·ctx / φ(q)·ksum per (b, h, block of queries).
// Included inside armour::<ISA> after linear_util.h. fp32 only (the host converts bf16 / fp16).
#pragma once

namespace lin {

struct PerformerPlan {
  const PerformerArgs* a;
  const float* pt;  // Pᵀ (D × Mp), zero-padded columns
  int64_t Mp, Dp, Dvp;
  float dn;
};

// φ of the row x (already scaled by dn, zero-padded to Dp) into phi[0, Mp), padding lanes 0.
// softmax: exp(u − ‖x‖²/2 − stab) + 1e-4, with stab the row max of u when `row_stab`.
inline void features(const PerformerPlan& pl, const float* x, float stab, bool row_stab, float* u, float* phi) {
  const PerformerArgs& a = *pl.a;
  row_gemv(x, a.D, pl.pt, pl.Mp, pl.Mp, u, false);
  if (a.softmax) {
    if (row_stab) stab = row_max(u, a.M);
    const VecF shift = VecF::set1(0.5f * dot(x, x, pl.Dp) + stab), eps = VecF::set1(1e-4f);
    for (int64_t j = 0; j < pl.Mp; j += VecF::W) (vexp(VecF::load(u + j) - shift) + eps).store(phi + j);
  } else {
    const VecF eps = VecF::set1(1e-3f);
    for (int64_t j = 0; j < pl.Mp; j += VecF::W) (vmax(VecF::zero(), VecF::load(u + j)) + eps).store(phi + j);
  }
  for (int64_t j = a.M; j < pl.Mp; ++j) phi[j] = 0.f;
}

inline void key_max_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerPlan& pl = *static_cast<PerformerPlan*>(ctx);
  const PerformerArgs& a = *pl.a;
  Buf x(pl.Dp), u(pl.Mp);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    float mx = -INFINITY;
    for (int64_t n = 0; n < a.Nk; ++n) {
      load_row(a.k, b, n, h, a.D, pl.dn, x.p);
      row_gemv(x.p, a.D, pl.pt, pl.Mp, pl.Mp, u.p, false);
      const float r = row_max(u.p, a.M);
      mx = r > mx ? r : mx;
    }
    a.stab[bh] = mx;
  }
}

constexpr int64_t kPerfBlockK = 16;

// ctx += Φᵀ V a block of kPerfBlockK keys at a time (each ctx row loaded / stored once per block).
inline void context_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerPlan& pl = *static_cast<PerformerPlan*>(ctx);
  const PerformerArgs& a = *pl.a;
  constexpr int64_t T = kPerfBlockK;
  Buf x(pl.Dp), u(pl.Mp), phi(pl.Mp), phit(a.M * T), vb(T * pl.Dvp), acc(a.M * pl.Dvp), ks(pl.Mp);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    std::memset(acc.p, 0, sizeof(float) * a.M * pl.Dvp);
    std::memset(ks.p, 0, sizeof(float) * pl.Mp);
    for (int64_t n0 = 0; n0 < a.Nk; n0 += T) {
      const int64_t nb = a.Nk - n0 < T ? a.Nk - n0 : T;
      for (int64_t t = 0; t < nb; ++t) {
        load_row(a.k, b, n0 + t, h, a.D, pl.dn, x.p);
        features(pl, x.p, a.stab[bh], false, u.p, phi.p);
        for (int64_t j = 0; j < a.M; ++j) phit.p[j * T + t] = phi.p[j];
        axpy(1.f, phi.p, ks.p, pl.Mp);
        load_row(a.v, b, n0 + t, h, a.Dv, 1.f, vb.p + t * pl.Dvp);
      }
      for (int64_t j = 0; j < a.M; ++j) row_gemv(phit.p + j * T, nb, vb.p, pl.Dvp, pl.Dvp, acc.p + j * pl.Dvp, true);
    }
    for (int64_t j = 0; j < a.M; ++j) {
      std::memcpy(a.ctx + (bh * a.M + j) * a.Dv, acc.p + j * pl.Dvp, sizeof(float) * a.Dv);
      a.ksum[bh * a.M + j] = ks.p[j];
    }
  }
}

constexpr int64_t kPerfBlockQ = 64;

inline void output_body(void* ctx, int64_t begin, int64_t end) {
  const PerformerPlan& pl = *static_cast<PerformerPlan*>(ctx);
  const PerformerArgs& a = *pl.a;
  const int64_t blocks = (a.Nq + kPerfBlockQ - 1) / kPerfBlockQ;
  Buf x(pl.Dp), u(pl.Mp), phi(pl.Mp), num(pl.Dvp), cp(a.M * pl.Dvp), ks(pl.Mp);
  int64_t loaded = -1;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / blocks, blk = task % blocks, b = bh / a.H, h = bh % a.H;
    if (bh != loaded) {  // the (b, h) context, zero-padded to Dvp columns / Mp entries
      for (int64_t j = 0; j < a.M; ++j) {
        std::memcpy(cp.p + j * pl.Dvp, a.ctx + (bh * a.M + j) * a.Dv, sizeof(float) * a.Dv);
        ks.p[j] = a.ksum[bh * a.M + j];
      }
      loaded = bh;
    }
    const int64_t n_end = (blk + 1) * kPerfBlockQ < a.Nq ? (blk + 1) * kPerfBlockQ : a.Nq;
    for (int64_t n = blk * kPerfBlockQ; n < n_end; ++n) {
      load_row(a.q, b, n, h, a.D, pl.dn, x.p);
      features(pl, x.p, 0.f, true, u.p, phi.p);
      row_gemv(phi.p, a.M, cp.p, pl.Dvp, pl.Dvp, num.p, false);
      const float inv = 1.f / dot(phi.p, ks.p, pl.Mp);
      float* o = a.out + ((b * a.Nq + n) * a.H + h) * a.Dv;
      for (int64_t d = 0; d < a.Dv; ++d) o[d] = num.p[d] * inv;
    }
  }
}

}  // namespace lin

namespace lin {

// Padded sizes, dn, and Pᵀ (D × Mp) copied into `pt` (allocated by the caller: D·up(M, W) floats).
inline PerformerPlan plan_performer(const PerformerArgs& a, float* pt) {
  PerformerPlan pl;
  pl.a = &a;
  pl.Mp = up(a.M, VecF::W);
  pl.Dp = up(a.D, VecF::W);
  pl.Dvp = up(a.Dv, VecF::W);
  pl.dn = static_cast<float>(std::pow(static_cast<double>(a.D), -0.25));
  for (int64_t j = 0; j < a.M; ++j)
    for (int64_t d = 0; d < a.D; ++d) pt[d * pl.Mp + j] = a.proj[j * a.D + d];
  pl.pt = pt;
  return pl;
}

}  // namespace lin

inline void performer_forward(const PerformerArgs& a) {
  lin::Buf pt(a.D * lin::up(a.M, VecF::W));
  lin::PerformerPlan pl = lin::plan_performer(a, pt.p);
  const int64_t BH = a.B * a.H;
  if (a.softmax) {
    a.parallel_for(BH, &pl, lin::key_max_body);
    if (a.seed) {
      const float mx = lin::row_max(a.stab, BH);
      for (int64_t i = 0; i < BH; ++i) a.stab[i] = mx;
    }
  } else {
    for (int64_t i = 0; i < BH; ++i) a.stab[i] = 0.f;
  }
  a.parallel_for(BH, &pl, lin::context_body);
  a.parallel_for(BH * ((a.Nq + lin::kPerfBlockQ - 1) / lin::kPerfBlockQ), &pl,
                 lin::output_body);
}
