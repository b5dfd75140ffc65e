// The GEMM's register blocks (gemm.cpp drives them): c (MR × kPanel, row stride ldc) (+)= a (MR × k, row stride
// lda) · one packed panel of b (gemm.h: pack_b), for MR = 1 .. the ISA's most rows.
//
// Math:    c[i][j] += Σ_p a[i][p] b[p][j], float32 FMAs accumulated in p order (one rounding per FMA); every ISA
//          computes the same FMAs in the same order, so results are equal bit for bit across ISAs.
// Tiling:  AVX-512: MR = 14 rows × 32 columns = 28 zmm accumulators, + 2 for the panel row + 1 broadcast (of 32
//          registers); AVX2: MR = 6 rows × 16 columns (half a panel, the two halves one after the other) = 12 ymm
//          accumulators + 2 + 1 (of 16). Per step p: load the panel row, broadcast a[i][p] for each row, 2·MR FMAs;
//          the accumulators never leave registers until the block is done.
// bfloat16: the same loop with AVX512-BF16's vdpbf16ps (a pair of k per step, float32 accumulators): BlockBf16.
// Prefetches: see prefetch_c_rows / prefetch_next_rows, and the b slice of the next k block (gemm.cpp: Locality).
// ISA:     one source per kernel (simd.h): the body a template on the ISA, each ISA's entry point (a struct's
//          static run) compiled with its target attribute; the baseline (SSE2) a plain loop.
#pragma once

#include "cpu/gemm/gemm.h"
#include "cpu/simd.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>

namespace drn::cpu::microkernel {

// The prefetches' locality (simd::prefetch): 3 = into L1 (prefetcht0), 2 = into L2 (prefetcht1).
constexpr int kToL1 = 3, kToL2 = 2;

// The most rows of a register block per ISA (the register budgets above).
constexpr int kRowsAvx512 = 14, kRowsAvx2 = 6, kRowsBaseline = 4, kRowsBf16 = 14;

// Prefetches that keep a block's memory traffic off its critical path (the Winograd chunks' a and c, ~8 MB each, live
// in L3 rather than L2): at the start of a block, its MR c rows (the two lines of 16 floats it covers, stored at the
// end, so the lines arrive while it computes); every 16 steps of p (one line of a row: 16 floats, or 16 bf16 pairs),
// the same line of each of the *next* block's MR rows (past a's end for the last block: harmless, prefetches never
// fault). Both into L2, not L1: a block reads them a few hundred cycles later, and pulled into L1 that early (up to
// 28 c lines and 56 a lines per block) they likely evict the b slice and the rows in use. The L2 choice was measured
// on a 32 KB L1 only (docs/performance/cpu.md); where L1 is 48 KB the b-slice rule goes the other way
// (gemm.cpp: prefetch_to_l1).
template <int MR, int Lines>
[[gnu::always_inline]] inline void prefetch_c_rows(const float* c, int64_t ldc) {
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
    if (Lines > 0) simd::prefetch<1, kToL2>(c, r * ldc);
    if (Lines > 1) simd::prefetch<1, kToL2>(c, r * ldc + 16);
  }
}
template <int MR, class E>
[[gnu::always_inline]] inline void prefetch_next_rows(const E* a, int64_t lda, int64_t column) {
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) simd::prefetch<0, kToL2>(a, (MR + r) * lda + column);
}

// Two vectors of columns (32 on AVX-512: the whole panel; 16 on AVX2: half of it, b's row stride stays kPanel)
// for MR rows: 2·MR accumulators, S the ISA (simd.h), V its vector. The cache lines of a panel row the block reads
// are its lines of b to prefetch: 2, or 1 for the AVX2 half block — were each AVX2 half block to prefetch both
// lines, every step would carry two needless prefetches beside its 8 loads and 12 FMAs (timings:
// docs/performance/cpu.md). CLines, NextRows: the c lines it prefetches at its start and whether it prefetches the
// next block's rows (BlockAvx2 asks its first half only).
template <class S, int MR, int Locality, int CLines, bool NextRows>
[[gnu::always_inline]] inline void two_vector_block(int64_t k, const float* a, int64_t lda, const float* b, float* c,
                                                    int64_t ldc, bool add) {
  using V = decltype(S::broadcast(0.f));
  constexpr int lanes = sizeof(V) / sizeof(float), lines = lanes / 8;
  V lo[MR], hi[MR];
  prefetch_c_rows<MR, CLines>(c, ldc);
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
    lo[r] = add ? simd::load<V>(c + r * ldc) : V{};
    hi[r] = add ? simd::load<V>(c + r * ldc + lanes) : V{};
  }
  for (int64_t p = 0; p < k; ++p) {
    if (NextRows && p % 16 == 0) prefetch_next_rows<MR>(a, lda, p);
    const V b0 = simd::load<V>(b + p * kPanel), b1 = simd::load<V>(b + p * kPanel + lanes);
    simd::prefetch<0, Locality>(b, (p + k) * kPanel);
    if (lines > 1) simd::prefetch<0, Locality>(b, (p + k) * kPanel + 16);
#pragma GCC unroll 14
    for (int r = 0; r < MR; ++r) {
      const V ar = S::broadcast(a[r * lda + p]);
      lo[r] = S::fma(ar, b0, lo[r]);
      hi[r] = S::fma(ar, b1, hi[r]);
    }
  }
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
    simd::store(c + r * ldc, lo[r]);
    simd::store(c + r * ldc + lanes, hi[r]);
  }
}

// The kernels: Block<MR, Locality>::run(k, a, lda, b, c, ldc, add) computes c (+)= a · b for one register block
// of MR rows; add: accumulate onto c (the k blocks after the first).

template <int MR, int Locality>
struct BlockAvx512 {
  [[DRN_TARGET_AVX512, gnu::flatten]] static void run(int64_t k, const float* a, int64_t lda, const float* b,
                                                      float* c, int64_t ldc, bool add) {
    two_vector_block<simd::Avx512, MR, Locality, 2, true>(k, a, lda, b, c, ldc, add);
  }
};

template <int MR, int Locality, int CLines, bool NextRows>
struct HalfBlockAvx2 {
  [[DRN_TARGET_AVX2, gnu::flatten]] static void run(int64_t k, const float* a, int64_t lda, const float* b,
                                                    float* c, int64_t ldc, bool add) {
    two_vector_block<simd::Avx2, MR, Locality, CLines, NextRows>(k, a, lda, b, c, ldc, add);
  }
};

// The two halves of a panel, one after the other. The first prefetches both c lines of its rows and the next
// block's rows, the second nothing of them: it reads the same rows (in L1 by then), and its c lines, prefetched
// only at its own start, would arrive late.
template <int MR, int Locality>
struct BlockAvx2 {
  [[DRN_TARGET_AVX2]] static void run(int64_t k, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                                      bool add) {
    HalfBlockAvx2<MR, Locality, 2, true>::run(k, a, lda, b, c, ldc, add);
    HalfBlockAvx2<MR, Locality, 0, false>::run(k, a, lda, b + 16, c + 16, ldc, add);
  }
};

// The baseline ISA (SSE2 on x86-64, whatever the build targets elsewhere): plain loops, same summation order (no
// prefetch: Locality is there for the common kernel table).
template <int MR, int Locality>
struct BlockBaseline {
  static void run(int64_t k, const float* a, int64_t lda, const float* b, float* c, int64_t ldc, bool add) {
    float acc[MR][kPanel] = {};
    for (int r = 0; add && r < MR; ++r) std::copy(c + r * ldc, c + r * ldc + kPanel, acc[r]);
    for (int64_t p = 0; p < k; ++p) {
      for (int r = 0; r < MR; ++r) {
        const float ar = a[r * lda + p];
        for (int j = 0; j < kPanel; ++j) acc[r][j] = std::fma(ar, b[p * kPanel + j], acc[r][j]);
      }
    }
    for (int r = 0; r < MR; ++r) std::copy(acc[r], acc[r] + kPanel, c + r * ldc);
  }
};

// bfloat16 (AVX512-BF16): k counts pairs; a row-major bf16 (a pair = 2 consecutive columns, one 32-bit broadcast),
// b packed by pack_b_bf16 (per pair, 32 columns × 2 bf16 = two zmm), float32 accumulators: each step adds
// a[i][2p]·b[2p][j] + a[i][2p+1]·b[2p+1][j] (the products exact in float32, one rounding per step).
template <int MR, int Locality>
struct BlockBf16 {
  [[DRN_TARGET_AVX512_BF16, gnu::flatten]] static void run(int64_t k, const uint16_t* a, int64_t lda,
                                                           const uint16_t* b, float* c, int64_t ldc, bool add) {
    using S = simd::Avx512Bf16;
    using simd::bf16x32, simd::f32x16;
    f32x16 lo[MR], hi[MR];
    prefetch_c_rows<MR, 2>(c, ldc);
#pragma GCC unroll 14
    for (int r = 0; r < MR; ++r) {
      lo[r] = add ? simd::load<f32x16>(c + r * ldc) : f32x16{};
      hi[r] = add ? simd::load<f32x16>(c + r * ldc + 16) : f32x16{};
    }
    for (int64_t p = 0; p < k; ++p) {
      if (p % 16 == 0) prefetch_next_rows<MR>(a, lda, 2 * p);
      const bf16x32 b0 = simd::load<bf16x32>(b + p * 2 * kPanel);
      const bf16x32 b1 = simd::load<bf16x32>(b + p * 2 * kPanel + kPanel);
      simd::prefetch<0, Locality>(b, (p + k) * 2 * kPanel);
      simd::prefetch<0, Locality>(b, (p + k) * 2 * kPanel + kPanel);
#pragma GCC unroll 14
      for (int r = 0; r < MR; ++r) {
        const bf16x32 ar = S::broadcast_pair(a + r * lda + 2 * p);
        lo[r] = S::dot_pairs(lo[r], ar, b0);
        hi[r] = S::dot_pairs(hi[r], ar, b1);
      }
    }
#pragma GCC unroll 14
    for (int r = 0; r < MR; ++r) {
      simd::store(c + r * ldc, lo[r]);
      simd::store(c + r * ldc + 16, hi[r]);
    }
  }
};

// c (+)= a · b for one register block (a Block's run).
template <class E>
using BlockFn = void (*)(int64_t, const E*, int64_t, const E*, float*, int64_t, bool);

// One kernel family's kernels for 1 .. MaxRows rows: table<Block, Locality, MaxRows>[r - 1] computes r rows.
template <template <int, int> class Block, int Locality, int... R>
constexpr auto make_table(std::integer_sequence<int, R...>) {
  return std::array{&Block<R + 1, Locality>::run...};
}
template <template <int, int> class Block, int Locality, int MaxRows>
inline constexpr auto table = make_table<Block, Locality>(std::make_integer_sequence<int, MaxRows>());

}  // namespace drn::cpu::microkernel
