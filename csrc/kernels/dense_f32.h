// The fp32 dense layer's task on 16-lane vectors (DenseTask, kernel_api.h), for layers of at most
// kDenseF32MaxRows rows: LeViT's stages at batch 1 (49 and 16 rows per image), classifier heads.
//
// Why not oneDNN's brgemm micro-kernel, as for taller layers: at these row counts the layer is
// bound by streaming its weight from L3 (a LeViT-128S fp32 call reads ~30 MB of weights; one core
// here reads ~20 GB/s from L3, and a 16-row layer does only 32 flops per weight element), and
// oneDNN's kernel, called once per (rows × 64) output tile, leaves the weight to the hardware
// prefetcher, whose stream restarts at every tile. Here the task's weight is one stream: while one
// chunk is multiplied, the chunk kAheadChunks further on (across block boundaries) is prefetched
// into L2, its lines spread evenly over the chunk's row passes so that the loads run beside the
// FMAs instead of in bursts. Measured on Sapphire Rapids, 1 thread, weights cold in L2: a 16-row
// 384 → 768 layer 84 µs against 106 µs on oneDNN's per-tile calls; prefetching a whole block ahead,
// or four lines per step in the first pass only, gained about half of that.
//
// Register blocking: a pass is up to 6 rows × 64 columns (24 zmm accumulators, 4 for the weight row,
// 1 for the broadcast row value), the rows of a task split into passes as even as they go (16 rows:
// 6 + 5 + 5). The reduction runs in chunks of kKChunk steps (16 KB of the weight block) so that every
// pass after the first reads the chunk from L1; the accumulators go to `acc` between chunks.
//
// Included inside namespace armour::<isa> by the AVX-512 ISA files after dense_epilogue.h.
#pragma once

namespace dense_f32_detail {

constexpr int64_t kBlock = 64;                 // weight block width (columns per output tile)
constexpr int kVecs = kBlock / VecF::W;        // vectors per weight row
constexpr int kMaxPassRows = 6;
constexpr int64_t kKChunk = 64;
constexpr int64_t kAheadChunks = 2;           // prefetch distance: 2 chunks (32 KB) of the task's weight
constexpr int64_t kLine = 64;                  // bytes per cache line
static_assert(kVecs == 4, "dense_f32: written for 16-lane vectors");

// The weight lines a pass prefetches into L2: [line, end), `per` lines per reduction step.
struct Stream {
  const char* line = nullptr;
  const char* end = nullptr;
  int per = 0;
};

// Rows [0, R) × the block's 64 columns over reduction steps [k0, k1): acc (ld kBlock) += a · b, or
// = when `first`; prefetching `next`'s lines on the way.
template <int R>
inline void pass(const float* a, int64_t lda, const float* b, int64_t k0, int64_t k1, float* acc, bool first,
                 Stream next) {
  // Raw registers, not VecF: GCC keeps an array of the wrapper on the stack around the loop.
  __m512 c[R][kVecs];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kVecs; ++j)
      c[r][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + r * kBlock + j * VecF::W);
  for (int64_t k = k0; k < k1; ++k) {
    if (next.line < next.end) {
      for (int l = 0; l < next.per; ++l) _mm_prefetch(next.line + l * kLine, _MM_HINT_T1);
      next.line += next.per * kLine;
    }
    const float* bk = b + k * kBlock;
    __m512 w[kVecs];
    for (int j = 0; j < kVecs; ++j) w[j] = _mm512_loadu_ps(bk + j * VecF::W);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + k]);
      for (int j = 0; j < kVecs; ++j) c[r][j] = _mm512_fmadd_ps(x, w[j], c[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kVecs; ++j) _mm512_storeu_ps(acc + r * kBlock + j * VecF::W, c[r][j]);
}

inline void pass_rows(int rows, const float* a, int64_t lda, const float* b, int64_t k0, int64_t k1, float* acc,
                      bool first, Stream next) {
  switch (rows) {
    case 1: return pass<1>(a, lda, b, k0, k1, acc, first, next);
    case 2: return pass<2>(a, lda, b, k0, k1, acc, first, next);
    case 3: return pass<3>(a, lda, b, k0, k1, acc, first, next);
    case 4: return pass<4>(a, lda, b, k0, k1, acc, first, next);
    case 5: return pass<5>(a, lda, b, k0, k1, acc, first, next);
    default: return pass<6>(a, lda, b, k0, k1, acc, first, next);
  }
}

// One output tile's accumulators: task.rows × 64 of weight block `b` into acc, prefetching the
// task's weight `ahead` bytes past each chunk (up to `end`).
inline void block(const DenseTask& task, const float* a, const float* b, float* acc, int64_t ahead, const char* end) {
  const int64_t passes = (task.rows + kMaxPassRows - 1) / kMaxPassRows;
  const int per = static_cast<int>((kVecs + passes - 1) / passes);  // lines per step: the chunk's share of each pass
  for (int64_t k0 = 0; k0 < task.K; k0 += kKChunk) {
    const int64_t k1 = k0 + kKChunk < task.K ? k0 + kKChunk : task.K;
    Stream stream;
    stream.line = reinterpret_cast<const char*>(b + k0 * kBlock) + ahead;
    stream.end = reinterpret_cast<const char*>(b + k1 * kBlock) + ahead;
    if (stream.end > end) stream.end = end;
    stream.per = per;
    for (int64_t q = 0, m0 = 0; q < passes; ++q) {
      const int64_t left = task.rows - m0, rows = (left + passes - q - 1) / (passes - q);
      pass_rows(static_cast<int>(rows), a + m0 * task.lda, task.lda, b, k0, k1, acc + m0 * kBlock, k0 == 0, stream);
      stream.line += (k1 - k0) * per * kLine;
      m0 += rows;
    }
  }
}

inline void run(const DenseTask& task) {
  const float* a = static_cast<const float*>(task.a);
  const float* b = static_cast<const float*>(task.b);
  const char* end = reinterpret_cast<const char*>(b + task.blk1 * task.K * kBlock);
  const int64_t ahead = kAheadChunks * kKChunk * kBlock * sizeof(float);
  for (int64_t blk = task.blk0; blk < task.blk1; ++blk) {
    const float* bblk = b + blk * task.K * kBlock;
    block(task, a, bblk, task.acc, ahead, end);
    dense_epilogue(task_tile(task, task.acc, kBlock, blk * kBlock, kBlock));
  }
}

}  // namespace dense_f32_detail

// task.rows ≤ kDenseF32MaxRows: the caller's rule (linear_layer/dense.cpp, task_blocks).
inline void dense_f32(const DenseTask& task) { dense_f32_detail::run(task); }
