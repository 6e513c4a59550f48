// Attention backward (FlashAttention-2 style), written once against a GEMM engine G (see
// attention_forward.h), a vector type V and the storage type T of the tensors.
//
// One task per chunk of query rows, as the forward. For each (b, h) run of its rows a task packs
// once: Kᵀ and Vᵀ (B operands of S = Q·Kᵀ and dP = dO·Vᵀ), K (of dQ = dS·K) and the run's Qᵀ and
// dOᵀ (A operands of dKᵀ = Qᵀ·dS and dVᵀ = dOᵀ·P). Then per tile of query rows × keys: P is
// recomputed from the saved lse, dS = P∘(dP − δ) with δ = rowsum(dO∘O), the bias gradient is dS
// (dense: written out; LeViT table: summed over the batch into the chunk's (H, Nq, Nk) slice, or
// scattered into its (H, R) slice), and the three products accumulate dQ, dKᵀ and dVᵀ in the
// accumulation type. dK and dV are computed transposed so that every product reads row-major
// operands (what brgemm takes) and P, dS are written once in the layout their products want;
// they are transposed back while storing. The value gradient is routed to dq ("q" part: Armour),
// dk ("k" part) or dv. A (b, h) owned by one task is stored at once; one cut between tasks leaves
// its shares in the partial slots, summed and stored after the parallel loop (reduce_partials).
//
// Included inside namespace armour::<isa> by kernels/attention_kernel.h.
#pragma once

#include "kernels/attention_common.h"

// Stores the gradients of (b, h) from accumulation-type matrices: dq (Nq × ldq), dkᵀ (Dk × ldk),
// the value gradientᵀ dvalᵀ (Dv × ldk; its "q" part is added into dq, its "k" part into dkᵀ).
template <class V, class T>
void store_pair_grads(const AttentionArgs& a, int64_t b, int64_t h, typename V::S* dq, int64_t ldq,
                      typename V::S* dkT, typename V::S* dvT, int64_t ldk) {
  using S = typename V::S;
  const int64_t Nq = a.Nq, Nk = a.Nk, Dk = a.Dk, H = a.H;
  for (int p = 0, col = 0; p < a.n_parts; col += a.part_width[p], ++p) {
    const int64_t w = a.part_width[p];
    const S* src = dvT + col * ldk;
    if (a.part_src[p] == ValueSrc::v) {
      T* dv = static_cast<T*>(a.dv) + (b * Nk * H + h) * a.dv_width;
      store_transposed<V>(src, ldk, Nk, w, dv, H * a.dv_width);
    } else if (a.part_src[p] == ValueSrc::q) {  // dq[j, c] += dvalᵀ[col + c, j] (Nq = Nk)
      store_transposed<V, true>(src, ldk, Nk, w, dq, ldq);
    } else {  // dkᵀ[c, j] += dvalᵀ[col + c, j]
      for (int64_t c = 0; c < w; ++c) {
        S* dst = dkT + c * ldk;
        const S* s = src + c * ldk;
        int64_t j = 0;
        for (; j + V::W <= Nk; j += V::W) (V::load(dst + j) + V::load(s + j)).store(dst + j);
        for (; j < Nk; ++j) dst[j] += s[j];
      }
    }
  }
  T* dqo = static_cast<T*>(a.dq) + (b * Nq * H + h) * Dk;
  for (int64_t i = 0; i < Nq; ++i) store_row<V>(dq + i * ldq, Dk, S(1), dqo + i * H * Dk);
  T* dko = static_cast<T*>(a.dk) + (b * Nk * H + h) * Dk;
  store_transposed<V>(dkT, ldk, Nk, Dk, dko, H * Dk);
}

// δ_i = Σ_c dO[i, c] · O[i, c] in the accumulation type.
template <class V, class T>
typename V::S row_delta(const AttentionArgs& a, int64_t b, int64_t h, int64_t i) {
  using S = typename V::S;
  const T* dout = row_ptr<T>(a.dout, b, i, h);
  const T* out = row_ptr<T>(a.o, b, i, h);
  const int64_t Dv = a.Dv;
  int64_t c = 0;
  S acc = 0;
  if (a.dout.sd == 1 && a.o.sd == 1) {
    V va = V::zero();
    for (; c + V::W <= Dv; c += V::W) va = fmadd(load_vec<V>(dout + c), load_vec<V>(out + c), va);
    acc = hsum(va);
  }
  for (; c < Dv; ++c) acc += load_as<S>(dout + c * a.dout.sd) * load_as<S>(out + c * a.o.sd);
  return acc;
}

// One score row of a tile: s → P = exp(s - lse) (in place; 2^ in log2 units), dp → dS = P∘(dP − δ) ·
// scale (in place), the bias gradient (dS before the scale) to its destination, all in one pass
// (the table's per-score scatter, for long sequences, in a second). Returns whether the row has a
// finite score (the diagonal mask's "other key").
template <class V, int Deg>
bool score_grad_row(const AttentionArgs& a, int64_t b, int64_t h, int64_t chunk, int64_t i, int64_t j0, int64_t bk,
                    int64_t bkv, typename V::S* s, typename V::S* dp, typename V::S lse, typename V::S delta) {
  using S = typename V::S;
  constexpr int64_t W = V::W;
  finish_row<V>(a, b, h, i, j0, bk, bkv, s, nullptr, /*need_max=*/false);
  bool finite = false;
  if (a.mask_diagonal)
    for (int64_t c = 0; c < bk && !finite; ++c) finite = s[c] != neg_inf<S>();
  const bool scatter = a.dtable && a.dtable_scatter;
  // where dS (natural units) goes: written out (dense bias) or summed over the batch (table)
  S* db = a.dbias ? static_cast<S*>(a.dbias) + ((b * a.H + h) * a.Nq + i) * a.Nk + j0 : nullptr;
  S* acc = a.dtable && !scatter ? static_cast<S*>(a.dtable) + ((chunk * a.H + h) * a.Nq + i) * a.Nk + j0 : nullptr;
  const V vl = V::set1(lse * static_cast<S>(kLog2e)), vd = V::set1(delta);
  const V vs = V::set1(scatter ? S(1) : static_cast<S>(a.scale));
  for (int64_t c = 0; c < bkv; c += W) {
    const int64_t n = min64(W, bk - c);  // real keys in this vector (the rest: padding)
    const V pv = vexp2<Deg>(V::load(s + c) - vl);
    pv.store(s + c);
    // dP past bk may be unwritten (a brgemm product has no padding): read as 0, so dS is 0 there
    const V dpv = n == W ? V::load(dp + c) : V::load_n(dp + c, n);
    const V ds = pv * (dpv - vd);
    if (db) {
      if (n == W) ds.store(db + c); else ds.store_n(db + c, n);
    } else if (acc) {
      if (n == W) (V::load(acc + c) + ds).store(acc + c); else (V::load_n(acc + c, n) + ds).store_n(acc + c, n);
    }
    (ds * vs).store(dp + c);
  }
  if (scatter) {
    S* dt = static_cast<S*>(a.dtable) + (chunk * a.H + h) * a.table_R;
    const int64_t* idx = a.index + i * a.index_si + j0 * a.index_sj;
    for (int64_t c = 0; c < bk; ++c) dt[idx[c * a.index_sj]] += dp[c];
    const V vscale = V::set1(static_cast<S>(a.scale));
    for (int64_t c = 0; c < bkv; c += W) (V::load(dp + c) * vscale).store(dp + c);
  }
  return finite;
}

template <class T, class V, class G>
void backward_chunk(const AttentionArgs& a, const G& g, int64_t chunk) {
  using S = typename V::S;
  using Op = typename G::Op;
  constexpr int64_t W = V::W, kPair = G::kPair;
  constexpr int64_t kAlign = W > kPair ? W : kPair;
  constexpr bool kPairs = !(sizeof(Op) == sizeof(S));  // P and dS need operand copies (bf16 pairs)
  const int64_t Nq = a.Nq, Nk = a.Nk, Dk = a.Dk, Dv = a.Dv, BQ = a.block_q;
  const int64_t Nkp = round_up(Nk, kAlign), Nqp = round_up(Nq, kPair);
  const int64_t Dkp = round_up(Dk, W), Dk2 = round_up(Dk, kPair), Dv2 = round_up(Dv, kPair);
  const int64_t BK = round_up(min64(kBlockK, Nk), kAlign), na = g.n_align();
  const bool q_in_place = G::template a_in_place<T>(a.q, Dk);
  const bool do_in_place = G::template a_in_place<T>(a.dout, Dv);
  const bool k_in_place = g.template b_rows_in_place<T>(a.k, Dk);
  const int64_t Nd = round_up(Dk, na);  // N of dQ = dS·K
  bool vt_zero = Dv2 != Dv;
  for (int p = 0, col = 0; p < a.n_parts; col += a.part_width[p], ++p)
    vt_zero = vt_zero || G::b_cols_need_zero(a.part[p], a.part_width[p], col);
  const bool kt_zero = Dk2 != Dk || G::b_cols_need_zero(a.k, Dk, 0);
  Scratch<Op> kt(Dk2 * Nkp), vt(Dv2 * Nkp), kr(k_in_place ? 1 : Nkp * Dkp), qT(Dk * Nqp), doT(Dv * Nqp);
  Scratch<Op> qs(BQ * Dk2), dos(BQ * Dv2);
  Scratch<Op> pb(kPairs ? BQ * BK : 1), dsb(kPairs ? BQ * BK : 1), dsa(kPairs ? BQ * BK : 1);
  Scratch<S> s(BQ * BK), dp(BQ * BK), dq(Nq * Dkp), dkT(Dk * Nkp), dvT(Dv * Nkp);
  Scratch<S> delta(BQ), lse(BQ);
  Scratch<unsigned char> has_key(BQ);
  const S* lse_all = static_cast<const S*>(a.lse_in);
  if (!q_in_place && Dk2 != Dk) qs.zero(BQ * Dk2);
  if (!do_in_place && Dv2 != Dv) dos.zero(BQ * Dv2);
  for_each_run(a, chunk, [&](const Run& run) {
    const int64_t b = run.b, h = run.h, i_begin = run.i_begin, i_end = run.i_end, slot = run.slot;
    const int64_t tiles = (i_end - i_begin + BQ - 1) / BQ;
    if (kt_zero) kt.zero(Dk2 * Nkp);
    G::template pack_b_cols<T>(a.k, b, h, 0, Nk, Dk, kt.p, Nkp, 0);
    if (vt_zero) vt.zero(Dv2 * Nkp);
    for (int p = 0, col = 0; p < a.n_parts; col += a.part_width[p], ++p)
      G::template pack_b_cols<T>(a.part[p], b, h, 0, Nk, a.part_width[p], vt.p, Nkp, col);
    const Op* krows = kr.p;
    int64_t ldkr = Dkp;
    if (k_in_place) {
      krows = reinterpret_cast<const Op*>(row_ptr<T>(a.k, b, 0, h));
      ldkr = a.k.sn;
    } else {
      kr.zero(Nkp * Dkp);
      G::template pack_b_rows<T>(a.k, b, h, 0, Nk, Dk, kr.p, Dkp, 0);
    }
    const int64_t len = i_end - i_begin;
    G::template pack_a_cols<T>(a.q, b, h, i_begin, len, Dk, qT.p, Nqp, i_begin);
    G::template pack_a_cols<T>(a.dout, b, h, i_begin, len, Dv, doT.p, Nqp, i_begin);
    if (kPair == 2 && (i_end & 1)) {  // the pair partner of an odd last row (i_end = Nq): a zero column
      for (int64_t d = 0; d < Dk; ++d) qT.p[d * Nqp + i_end] = Op(0);
      for (int64_t d = 0; d < Dv; ++d) doT.p[d * Nqp + i_end] = Op(0);
    }
    std::memset(dq.p + i_begin * Dkp, 0, static_cast<size_t>(len * Dkp) * sizeof(S));
    dkT.zero(Dk * Nkp);
    dvT.zero(Dv * Nkp);
    for (int64_t i0 = i_begin; i0 < i_end; i0 += BQ) {
      const int64_t nr = min64(BQ, i_end - i0), nr2 = round_up(nr, kPair);
      prefetch_next_run<T>(a, run, (i0 - i_begin) / BQ, tiles, true);
      int64_t ldq, ldd;
      const Op* qa = a_rows_operand<G, T>(a.q, q_in_place, b, h, i0, nr, Dk, qs.p, Dk2, &ldq);
      const Op* da = a_rows_operand<G, T>(a.dout, do_in_place, b, h, i0, nr, Dv, dos.p, Dv2, &ldd);
      for (int64_t r = 0; r < nr; ++r) {
        delta.p[r] = row_delta<V, T>(a, b, h, i0 + r);
        lse.p[r] = lse_all[(b * a.H + h) * Nq + i0 + r];
        has_key.p[r] = 0;
      }
      for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
        const int64_t bk = min64(kBlockK, Nk - j0);
        const int64_t bkv = round_up(bk, W), bkn = round_up(bk, na), bkk = round_up(bk, kPair);
        g(nr, bkn, Dk2, qa, ldq, G::b_col(kt.p, j0), Nkp, s.p, BK, false);
        g(nr, bkn, Dv2, da, ldd, G::b_col(vt.p, j0), Nkp, dp.p, BK, false);
        for (int64_t r = 0; r < nr; ++r)
          has_key.p[r] |= score_grad_row<V, exp_degree<T>()>(a, b, h, chunk, i0 + r, j0, bk, bkv, s.p + r * BK,
                                                             dp.p + r * BK, lse.p[r], delta.p[r]);
        const Op* p_rows = reinterpret_cast<const Op*>(s.p);    // P, reduction over query rows
        const Op* ds_rows = reinterpret_cast<const Op*>(dp.p);  // dS, the same
        const Op* ds_a = reinterpret_cast<const Op*>(dp.p);     // dS as the A operand of dQ
        if constexpr (kPairs) {
          for (int64_t r = 0; r < nr; r += 2) {
            const bool two = r + 1 < nr;
            G::store_b_pair_rows(s.p + r * BK, two ? s.p + (r + 1) * BK : nullptr, bkv, pb.p + r * BK);
            G::store_b_pair_rows(dp.p + r * BK, two ? dp.p + (r + 1) * BK : nullptr, bkv, dsb.p + r * BK);
          }
          for (int64_t r = 0; r < nr; ++r) G::store_a_row(dp.p + r * BK, bkv, dsa.p + r * BK);
          p_rows = pb.p;
          ds_rows = dsb.p;
          ds_a = dsa.p;
        }
        g(nr, Nd, bkk, ds_a, BK, krows + j0 * ldkr, ldkr, dq.p + i0 * Dkp, Dkp, true);
        g(Dk, bkn, nr2, qT.p + i0, Nqp, ds_rows, BK, dkT.p + j0, Nkp, true);
        g(Dv, bkn, nr2, doT.p + i0, Nqp, p_rows, BK, dvT.p + j0, Nkp, true);
      }
      if (a.mask_diagonal) {
        // A diagonal-only row (finite lse, no other key) has P = one-hot(i): no score gradient and
        // dValue[i] += dO[i]. A fully masked row (lse = +inf) adds nothing.
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = i0 + r;
          if (has_key.p[r] || i >= Nk || !(lse.p[r] < pos_inf<S>())) continue;
          const T* dout = row_ptr<T>(a.dout, b, i, h);
          for (int64_t c = 0; c < Dv; ++c) dvT.p[c * Nkp + i] += load_as<S>(dout + c * a.dout.sd);
        }
      }
    }
    if (slot < 0) {
      store_pair_grads<V, T>(a, b, h, dq.p, Dkp, dkT.p, dvT.p, Nkp);
      return;
    }
    S* part = static_cast<S*>(a.partial) + slot * a.partial_size;
    for (int64_t i = 0; i < Nq; ++i) {
      S* dst = part + i * Dk;
      if (i >= i_begin && i < i_end)
        std::memcpy(dst, dq.p + i * Dkp, static_cast<size_t>(Dk) * sizeof(S));
      else
        std::memset(dst, 0, static_cast<size_t>(Dk) * sizeof(S));
    }
    S* pk = part + Nq * Dk;
    for (int64_t d = 0; d < Dk; ++d) std::memcpy(pk + d * Nk, dkT.p + d * Nkp, static_cast<size_t>(Nk) * sizeof(S));
    S* pv = pk + Dk * Nk;
    for (int64_t c = 0; c < Dv; ++c) std::memcpy(pv + c * Nk, dvT.p + c * Nkp, static_cast<size_t>(Nk) * sizeof(S));
  });
}

// The (b, h) pairs cut between chunks: sum each one's slots (they come in chunk order) and store.
template <class T, class V>
void reduce_partials(const AttentionArgs& a) {
  using S = typename V::S;
  S* acc = nullptr;
  int64_t acc_b = -1, acc_h = -1;
  auto flush = [&]() {
    if (acc) store_pair_grads<V, T>(a, acc_b, acc_h, acc, a.Dk, acc + a.Nq * a.Dk, acc + a.Nq * a.Dk + a.Dk * a.Nk, a.Nk);
    acc = nullptr;
  };
  for (int64_t c = 0; c < a.n_chunks; ++c) {
    for_each_run(a, c, [&](const Run& run) {
      const int64_t b = run.b, h = run.h, slot = run.slot;
      if (slot < 0) return;
      S* part = static_cast<S*>(a.partial) + slot * a.partial_size;
      if (acc && b == acc_b && h == acc_h) {
        int64_t e = 0;
        for (; e + V::W <= a.partial_size; e += V::W) (V::load(acc + e) + V::load(part + e)).store(acc + e);
        for (; e < a.partial_size; ++e) acc[e] += part[e];
        return;
      }
      flush();
      acc = part;
      acc_b = b;
      acc_h = h;
    });
  }
  flush();
}

template <class T, class V, class G>
void backward_impl(const AttentionArgs& a, const G& g) {
  run_chunks<G, &backward_chunk<T, V, G>>(a, g);
  if (a.n_chunks > 1) reduce_partials<T, V>(a);
}
