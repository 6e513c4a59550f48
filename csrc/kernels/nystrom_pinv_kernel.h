// Nyström's m×m part on CPU: Razavi's iterative pseudo-inverse Z = pinv(A2) and its backward, one
// (b, h) per task so that an iteration's matrices (and, backward, the whole trace: 4 per
// iteration, 384 KiB at m = 64) stay in the core's L2 while the GEMM micro-kernel runs on them.
//
// One iteration, as the products it is made of (each one GEMM into a pre-scaled accumulator):
//   AZ = A Z,  U1 = 7 AZ − AZ AZ,  U2 = 15 AZ − AZ U1,  Z' = 13/4 Z − 1/4 Z U2
// (= ¼ Z (13I − AZ(15I − AZ(7I − AZ))), python_ref's form). Backward of one iteration, G = dZ':
//   dZ = 13/4 G − 1/4 G U2ᵀ,  dU2 = −1/4 Zᵀ G,
//   dAZ = 15 dU2 − dU2 U1ᵀ,   dU1 = −AZᵀ dU2,   dAZ += 7 dU1 − dU1 AZᵀ − AZᵀ dU1,
//   dA += dAZ Zᵀ,  dZ += Aᵀ dAZ;
// and Z₀ = Aᵀ / c: dA += dZ₀ᵀ / c, dc = −Σ dZ₀∘Z₀ / c. The scale c's own gradient (through the
// maxima of A's row and column abs-sums, batch-wide in seed mode) is the torch side's
// (nystrom_pinv.cpp). Matrices are kept M × Mp (rows padded to whole vectors, padding zero).
#pragma once

namespace lin {

struct Pinv {  // one task's m×m matrices, row stride Mp
  int64_t M, Mp;
  float* at(float* base, int64_t i) const { return base + i * M * Mp; }
};

// dst = c · src over the M × Mp block (padding lanes stay zero).
inline void scaled_copy(float c, const float* src, float* dst, int64_t n) {
  const VecF cv = VecF::set1(c);
  for (int64_t i = 0; i < n; i += VecF::W) (cv * VecF::load(src + i)).store(dst + i);
}

inline void add_scaled(float c, const float* src, float* dst, int64_t n) {
  const VecF cv = VecF::set1(c);
  for (int64_t i = 0; i < n; i += VecF::W) fmadd(cv, VecF::load(src + i), VecF::load(dst + i)).store(dst + i);
}

// Z₀ = Aᵀ / c into z; A (M × M, contiguous) into a (M × Mp).
inline void pinv_start(const float* a2, float c, int64_t M, int64_t Mp, float* a, float* z) {
  for (int64_t i = 0; i < M; ++i) {
    std::memcpy(a + i * Mp, a2 + i * M, sizeof(float) * M);
    for (int64_t j = 0; j < M; ++j) z[j * Mp + i] = a2[i * M + j] / c;
  }
}

// One forward iteration from z into next; az, u1, u2 (and scratch t) are its products.
inline void pinv_iteration(const GemmFn gemm, int64_t M, int64_t Mp, const float* a, const float* z, float* az,
                           float* u1, float* u2, float* t, float* next) {
  const int64_t n = M * Mp;
  gemm(M, M, M, a, Mp, z, Mp, az, Mp, false);  // AZ
  scaled_copy(-1.f, az, t, n);                 // −AZ
  scaled_copy(7.f, az, u1, n);
  gemm(M, M, M, t, Mp, az, Mp, u1, Mp, true);  // U1 = 7 AZ − AZ AZ
  scaled_copy(15.f, az, u2, n);
  gemm(M, M, M, t, Mp, u1, Mp, u2, Mp, true);  // U2 = 15 AZ − AZ U1
  scaled_copy(-0.25f, z, t, n);
  scaled_copy(3.25f, z, next, n);
  gemm(M, M, M, t, Mp, u2, Mp, next, Mp, true);  // Z' = 13/4 Z − 1/4 Z U2
}

inline void nys_pinv_body(void* ctx, int64_t begin, int64_t end) {
  const NystromArgs& a = *static_cast<const NystromArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), Dv = p.Dv, n = M * Mp;
  Buf am(n), z(n), next(n), az(n), u1(n), u2(n), t(n);
  for (int64_t bh = begin; bh < end; ++bh) {
    pinv_start(a.a2 + bh * M * M, a.denom[bh], M, Mp, am.p, z.p);
    for (int it = 0; it < a.iterations; ++it) {
      pinv_iteration(p.gemm, M, Mp, am.p, z.p, az.p, u1.p, u2.p, t.p, next.p);
      float* tmp = z.p;  // (no std::swap: no std template is instantiated in ISA code)
      z.p = next.p;
      next.p = tmp;
    }
    p.gemm(M, Dv, M, z.p, Mp, a.w + bh * M * Dv, Dv, a.y + bh * M * Dv, Dv, false);  // Y = Z W
  }
}

inline void nys_pinv_grad_body(void* ctx, int64_t begin, int64_t end) {
  const NystromArgs& a = *static_cast<const NystromArgs*>(ctx);
  const LinearPlan& p = a.p;
  const int64_t M = p.M, Mp = up(M, VecF::W), Dv = p.Dv, n = M * Mp;
  const int iters = a.iterations;
  // trace: Z, AZ, U1, U2 of every iteration (+ the final Z)
  Buf am(n), amt(n), trace((4 * iters + 1) * n), t(n), g(n), dzp(n), ng(n), du(n), ndu(n), daz(n), da(n);
  Buf azt(n), u1t(n), u2t(n);
  Buf wt(Dv * Mp), zt(n);
  const Pinv pv{M, Mp};
  for (int64_t bh = begin; bh < end; ++bh) {
    const float* a2 = a.a2 + bh * M * M;
    const float c = a.denom[bh];
    pinv_start(a2, c, M, Mp, am.p, pv.at(trace.p, 0));
    transpose_into(am.p, Mp, M, M, 1.f, amt.p, Mp);  // Aᵀ
    for (int it = 0; it < iters; ++it)
      pinv_iteration(p.gemm, M, Mp, am.p, pv.at(trace.p, 4 * it), pv.at(trace.p, 4 * it + 1),
                     pv.at(trace.p, 4 * it + 2), pv.at(trace.p, 4 * it + 3), t.p, pv.at(trace.p, 4 * it + 4));
    // Y = Z W: dZ = dY Wᵀ, dW = Zᵀ dY
    const float* dy = a.dy + bh * M * Dv;
    transpose_into(a.w + bh * M * Dv, Dv, M, Dv, 1.f, wt.p, Mp);
    p.gemm(M, M, Dv, dy, Dv, wt.p, Mp, g.p, Mp, false);
    transpose_into(pv.at(trace.p, 4 * iters), Mp, M, M, 1.f, zt.p, Mp);
    p.gemm(M, Dv, M, zt.p, Mp, dy, Dv, a.dw + bh * M * Dv, Dv, false);
    std::memset(da.p, 0, sizeof(float) * n);
    for (int it = iters - 1; it >= 0; --it) {
      const float* zi = pv.at(trace.p, 4 * it);
      transpose_into(pv.at(trace.p, 4 * it + 1), Mp, M, M, 1.f, azt.p, Mp);
      transpose_into(pv.at(trace.p, 4 * it + 2), Mp, M, M, 1.f, u1t.p, Mp);
      transpose_into(pv.at(trace.p, 4 * it + 3), Mp, M, M, 1.f, u2t.p, Mp);
      transpose_into(zi, Mp, M, M, 1.f, zt.p, Mp);
      scaled_copy(-0.25f, g.p, ng.p, n);
      scaled_copy(3.25f, g.p, dzp.p, n);
      p.gemm(M, M, M, ng.p, Mp, u2t.p, Mp, dzp.p, Mp, true);  // dZ = 13/4 G − 1/4 G U2ᵀ
      p.gemm(M, M, M, zt.p, Mp, ng.p, Mp, du.p, Mp, false);  // dU2 = −1/4 Zᵀ G
      scaled_copy(-1.f, du.p, ndu.p, n);
      scaled_copy(15.f, du.p, daz.p, n);
      p.gemm(M, M, M, ndu.p, Mp, u1t.p, Mp, daz.p, Mp, true);  // dAZ = 15 dU2 − dU2 U1ᵀ
      p.gemm(M, M, M, azt.p, Mp, ndu.p, Mp, du.p, Mp, false);  // dU1 = −AZᵀ dU2
      add_scaled(7.f, du.p, daz.p, n);
      scaled_copy(-1.f, du.p, ndu.p, n);
      p.gemm(M, M, M, ndu.p, Mp, azt.p, Mp, daz.p, Mp, true);  // − dU1 AZᵀ
      p.gemm(M, M, M, azt.p, Mp, ndu.p, Mp, daz.p, Mp, true);  // − AZᵀ dU1
      p.gemm(M, M, M, daz.p, Mp, zt.p, Mp, da.p, Mp, true);  // dA += dAZ Zᵀ
      p.gemm(M, M, M, amt.p, Mp, daz.p, Mp, dzp.p, Mp, true);  // dZ += Aᵀ dAZ
      float* tmp = g.p;
      g.p = dzp.p;
      dzp.p = tmp;
    }
    // Z₀ = Aᵀ / c
    const float* z0 = pv.at(trace.p, 0);
    double dot = 0.0;
    for (int64_t i = 0; i < n; ++i) dot += static_cast<double>(g.p[i]) * z0[i];
    a.dc[bh] = static_cast<float>(-dot / c);
    float* out = a.da2 + bh * M * M;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < M; ++j) out[i * M + j] = da.p[i * Mp + j] + g.p[j * Mp + i] / c;
  }
}

}  // namespace lin

inline void nystrom_pinv(const NystromArgs& a) {
  a.p.parallel_for(a.p.B * a.p.H, const_cast<NystromArgs*>(&a), lin::nys_pinv_body);
}

inline void nystrom_pinv_grad(const NystromArgs& a) {
  a.p.parallel_for(a.p.B * a.p.H, const_cast<NystromArgs*>(&a), lin::nys_pinv_grad_body);
}
