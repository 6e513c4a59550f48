// The bf16 dense layer's task on AMX tiles (DenseTask, kernel_api.h).
//
// Why not oneDNN's brgemm micro-kernel, as for the fp32 layers and the attention products: called
// once per (32 × 64) output tile through ATen (at::native::cpublas::brgemm), each call looks its
// kernel up in a hash map and goes through oneDNN's ukernel wrapper, ~5% of a served LeViT-128S
// at batch 1 (Sapphire Rapids, profiled); and the call returns only once the tile is stored, so the
// tile's epilogue could not start before the unit had finished. Here one call runs a whole task
// (a row block × a range of weight blocks): tile products issued straight from the packed weight,
// and each output tile's epilogue (bias, activation, residual, bf16 cast: dense_epilogue.h) run
// after the next tile's products are issued, so the vector units work while the tile unit
// computes (double-buffered fp32 accumulators). Finer interleaving — a share of the epilogue after
// each reduction step — measured slower: the epilogue then competes with the tile loads.
//
// Tile registers are not renamed: a load into a tile waits until every product reading it has
// run, so the products of a step go in the order that frees an input early and the next step's
// loads follow the product that frees their tile.
//
// A task has 17..32 rows (two row tiles; the second configured with the rows it has, so nothing
// past them is read): an output tile is 32 × 32, as 2 × 2 accumulators (tiles 0–3), A row tiles
// 4–5, B column tiles 6–7; a 64-column weight block is two such tiles. K is a multiple of
// kDenseAmxK (32: one product's reduction). Row blocks of 1..16 rows (LeViT's last stage at batch
// 1, a block's tail) and other K stay on oneDNN's micro-kernel: a one-row-tile version of this
// kernel (1 × 4 accumulators, A double-buffered, B loaded twice per step) measured ~10% slower
// than it with warm caches, its tile loads waiting on the products that read the same tiles.
//
// Included inside namespace armour::avx512bf16 by isa_avx512bf16.cpp after dense_epilogue.h, under
// an amx-tile / amx-bf16 target of its own (only this code needs those instructions).
#pragma once

namespace dense_amx_detail {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

constexpr int64_t kPairRowBytes = 64 * 2 * 2;  // one K pair of a 64-column VNNI block
constexpr int64_t kCols = 32;                   // output columns per tile (two accumulator tiles)

// The epilogue of the last finished output tile, run once the next tile's products are issued.
struct Pending {
  DenseTile t;
  bool live = false;
  void run() {
    if (live) dense_detail::tile<float, bf16_t>(t);
    live = false;
  }
};

// A later step's B rows into L1: the 64 bytes (32 columns) of each of its 16 pair rows.
inline void prefetch_b(const uint16_t* b) {
  const char* p = reinterpret_cast<const char*>(b);
  for (int r = 0; r < 16; ++r) _mm_prefetch(p + r * kPairRowBytes, _MM_HINT_T0);
}

// Two row tiles: the 32 × 32 output tile of columns [0, 32) of `b` (a block pointer offset to its
// first column) into accumulators 0–3.
inline void products_2x2(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t K) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t a_stride = lda * 2;
  const int64_t steps = K / kDenseAmxK;
  auto b_at = [&](int64_t s) { return b + s * (kDenseAmxK / 2) * 64 * 2; };
  _tile_loadd(4, a, a_stride);
  _tile_loadd(6, b_at(0), kPairRowBytes);
  _tile_loadd(7, b_at(0) + 32, kPairRowBytes);
  _tile_loadd(5, a + 16 * lda, a_stride);
  for (int64_t s = 0; s < steps; ++s) {
    if (s + 2 < steps) prefetch_b(b_at(s + 2));
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    if (s + 1 < steps) _tile_loadd(6, b_at(s + 1), kPairRowBytes);
    _tile_dpbf16ps(1, 4, 7);
    if (s + 1 < steps) _tile_loadd(4, a + (s + 1) * kDenseAmxK, a_stride);
    _tile_dpbf16ps(3, 5, 7);
    if (s + 1 < steps) {
      _tile_loadd(7, b_at(s + 1) + 32, kPairRowBytes);
      _tile_loadd(5, a + 16 * lda + (s + 1) * kDenseAmxK, a_stride);
    }
  }
}

inline void run(const DenseTask& task) {
  const uint16_t* a = static_cast<const uint16_t*>(task.a);
  const uint16_t* b = static_cast<const uint16_t*>(task.b);
  TileConfig cfg;
  const int r1 = static_cast<int>(task.rows - 16);  // rows of the second row tile (1..16)
  auto set = [&](int tile, int rows) {
    cfg.rows[tile] = static_cast<uint8_t>(rows);
    cfg.colsb[tile] = 64;
  };
  set(0, 16), set(1, 16), set(4, 16);  // accumulators and A of row tile 0
  set(2, r1), set(3, r1), set(5, r1);  // of row tile 1
  set(6, 16), set(7, 16);              // B: 16 pair rows
  _tile_loadconfig(&cfg);

  Pending pending;
  int buf = 0;
  for (int64_t blk = task.blk0; blk < task.blk1; ++blk) {
    const uint16_t* bblk = b + blk * task.K * 64;
    for (int64_t c0 = 0; c0 < 64; c0 += kCols) {
      const int64_t n0 = blk * 64 + c0;
      if (n0 >= task.N) break;  // the block's padding columns
      products_2x2(a, task.lda, bblk + c0 * 2, task.K);
      pending.run();  // the previous tile's epilogue, while these products run
      float* acc = task.acc + buf * 32 * kCols;
      buf ^= 1;
      constexpr int64_t ld = kCols * 4;  // bytes
      _tile_stored(0, acc, ld);
      _tile_stored(1, acc + 16, ld);
      _tile_stored(2, acc + 16 * kCols, ld);
      _tile_stored(3, acc + 16 * kCols + 16, ld);
      pending.t = task_tile(task, acc, kCols, n0, kCols);
      pending.live = true;
    }
  }
  _tile_release();
  pending.run();
}

}  // namespace dense_amx_detail

// task.rows in [kDenseAmxMinRows, kDenseAmxMaxRows] and K a multiple of kDenseAmxK: the caller's
// rule (linear_layer/dense.cpp, task_blocks), not checked again here.
inline void dense_amx(const DenseTask& task) { dense_amx_detail::run(task); }
