// Attention forward, flash style, written once against a GEMM engine G (attention_gemm_plain.h:
// accumulation-type operands; attention_bf16dot.h: bf16 VNNI pairs on AMX brgemm or vdpbf16ps),
// a vector type V and the storage type T of q, k, v and out.
//
// One task per chunk of query rows (kernel_api.h: attention_chunks). For each (b, h) run of its
// rows a task packs Kᵀ once into the engine's layout, and the value rows (the concat of its q / k
// / v parts) unless the engine reads them in place; then for each tile of BQ query rows it
// runs an online softmax over tiles of kBlockK keys: S = Q·Kᵀ (Q read in place when its layout
// allows), scale + bias + masks and the row max in one pass, 2^x and the running sum in a second
// that writes P in the operand type, O = O·α + P·V. Accumulation in fp32 (fp64 for double).
// Scratch is per task (run_chunks).
//
// Widths of a key tile of bk keys: bkv = round_up(bk, W) for the vector passes, bkn = bk rounded
// to the engine's N alignment for the products writing scores, bkk = bk rounded to its pair size
// for the products reducing over keys.
//
// Included inside namespace armour::<isa> by kernels/attention_kernel.h.
#pragma once

#include "kernels/attention_common.h"

template <class T, class V, class G>
void forward_chunk(const AttentionArgs& a, const G& g, int64_t chunk) {
  using S = typename V::S;
  using Op = typename G::Op;
  constexpr int64_t W = V::W, kPair = G::kPair;
  constexpr int64_t kAlign = W > kPair ? W : kPair;
  constexpr bool kSeparateP = !(sizeof(Op) == sizeof(S));  // P in its own buffer unless it is S itself
  const int64_t Nk = a.Nk, Dk = a.Dk, Dv = a.Dv, BQ = a.block_q;
  const int64_t Nkp = round_up(Nk, kAlign), Dk2 = round_up(Dk, kPair), Dvp = round_up(Dv, W);
  const int64_t BK = round_up(min64(kBlockK, Nk), kAlign), na = g.n_align();
  const bool q_in_place = G::template a_in_place<T>(a.q, Dk);
  const bool v_in_place = a.n_parts == 1 && g.template b_rows_in_place<T>(a.part[0], Dv);
  const int64_t Nv = round_up(Dv, na);  // N of O = P·V
  const bool kt_zero = Dk2 != Dk || G::b_cols_need_zero(a.k, Dk, 0);
  Scratch<Op> kt(Dk2 * Nkp), vb(v_in_place ? 1 : Nkp * Dvp), qs(BQ * Dk2), pb(kSeparateP ? BQ * BK : 1);
  Scratch<S> s(BQ * BK), o(BQ * Dvp), m(BQ), l(BQ), diag(BQ);
  if (!q_in_place && Dk2 != Dk) qs.zero(BQ * Dk2);
  o.zero(BQ * Dvp);  // columns past Nv are never written, but rescaled: keep them 0
  for_each_run(a, chunk, [&](const Run& run) {
    const int64_t b = run.b, h = run.h, i_begin = run.i_begin, i_end = run.i_end;
    const int64_t tiles = (i_end - i_begin + BQ - 1) / BQ;
    // Kᵀ (Dk2 × Nkp) and the value rows (Nkp × Dvp) of this (b, h), zero-padded.
    if (kt_zero) kt.zero(Dk2 * Nkp);
    G::template pack_b_cols<T>(a.k, b, h, 0, Nk, Dk, kt.p, Nkp, 0);
    const Op* vrows = vb.p;
    int64_t ldv = Dvp;
    if (v_in_place) {
      vrows = reinterpret_cast<const Op*>(row_ptr<T>(a.part[0], b, 0, h));
      ldv = a.part[0].sn;
    } else {
      vb.zero(Nkp * Dvp);
      for (int p = 0, col = 0; p < a.n_parts; col += a.part_width[p], ++p)
        G::template pack_b_rows<T>(a.part[p], b, h, 0, Nk, a.part_width[p], vb.p, Dvp, col);
    }
    for (int64_t i0 = i_begin; i0 < i_end; i0 += BQ) {
      const int64_t nr = min64(BQ, i_end - i0);
      prefetch_next_run<T>(a, run, (i0 - i_begin) / BQ, tiles, false);
      int64_t lda;
      const Op* qa = a_rows_operand<G, T>(a.q, q_in_place, b, h, i0, nr, Dk, qs.p, Dk2, &lda);
      for (int64_t r = 0; r < nr; ++r) {
        m.p[r] = neg_inf<S>();
        l.p[r] = 0;
        diag.p[r] = neg_inf<S>();
      }
      for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
        const int64_t bk = min64(kBlockK, Nk - j0);
        const int64_t bkv = round_up(bk, W), bkn = round_up(bk, na), bkk = round_up(bk, kPair);
        const bool first = j0 == 0;
        g(nr, bkn, Dk2, qa, lda, G::b_col(kt.p, j0), Nkp, s.p, BK, false);
        for (int64_t r = 0; r < nr; ++r) {
          S* row = s.p + r * BK;
          const S mx = finish_row<V>(a, b, h, i0 + r, j0, bk, bkv, row, diag.p + r);
          Op* prow = kSeparateP ? pb.p + r * BK : reinterpret_cast<Op*>(row);
          softmax_row<V, exp_degree<T>()>(row, bkv, mx, m.p[r], l.p[r], prow, o.p + r * Dvp, Dvp, first);
        }
        const Op* pa = kSeparateP ? pb.p : reinterpret_cast<const Op*>(s.p);
        g(nr, Nv, bkk, pa, BK, vrows + j0 * ldv, ldv, o.p, Dvp, !first);
      }
      store_out_rows<V, T>(a, b, h, i0, nr, o.p, Dvp, m.p, l.p, diag.p);
    }
  });
}

template <class T, class V, class G>
void forward_impl(const AttentionArgs& a, const G& g) {
  run_chunks<G, &forward_chunk<T, V, G>>(a, g);
}
