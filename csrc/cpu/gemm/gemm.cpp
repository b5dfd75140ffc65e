// The CPU backend's float32 GEMM (gemm.h): c = a · b for the Winograd convolution's per-point products.
//
// Math:    c[i][j] = Σ_p a[i][p] b[p][j], float32 FMAs accumulated in p order (one rounding per FMA).
// Layout:  a row-major with any row stride (the Winograd V chunk: tiles × channels); b packed once by its owner
//          into column panels of 32 (pack_b: each panel (k × 32) row-major, zero-padded); c row-major.
// Tiling:  register blocks of MR rows × one panel — AVX-512: MR = 14 rows × 32 columns = 28 zmm accumulators,
//          + 2 for the panel row + 1 broadcast (of 32 registers); AVX2: MR = 6 rows × 16 columns (half a panel)
//          = 12 ymm accumulators + 2 + 1 (of 16). Per step p: load the panel row, broadcast a[i][p] for each row,
//          2·MR FMAs; the accumulators never leave registers until the block is done. A problem's rows are cut
//          into blocks of MR rows and a last one of fewer, each run by the kernel instantiated for its row
//          count: a kernel is at full speed down to 4 rows (enough independent accumulators to cover the FMA
//          latency on two FMA ports), a 1-row block at about a quarter of it; so where the last block would
//          have 1-3 rows, the same number of blocks is given sizes that differ by at most one (49 rows on
//          AVX2: 6,6,6,6,5,5,5,5,5 rather than 8 × 6 + 1). A last block of 4 rows or more is kept: on AVX-512,
//          49 = 3 × 14 + 7 measured faster than 13,12,12,12 (docs/performance/cpu.md has both measurements).
//          Cache: a thread takes (problem, panel) pairs in order, so it walks one problem's a (tiles × channels,
//          ≤ ~0.5 MB for the Winograd chunks) from L2 panel after panel; where L1 is 48 KB, k runs in blocks of
//          256, so a block's slice of the b panel (256 × 32 floats, 32 KB) stays in L1 over all the row blocks
//          (where L1 is 32 KB it would not: blocks of 512 there, prefetch_to_l1), and each kernel prefetches the
//          next slice while it works (b is one contiguous stream, walked in order) — into L1, or into L2 where
//          L1 is 32 KB; it also prefetches its c rows and the next block's a rows into L2 (prefetch_c_rows,
//          prefetch_next_rows): in L3 for the Winograd chunks. The caller's a rows are padded by a cache line
//          (gemm.h: padded_row) so a block's rows do not share L1 sets.
// bfloat16: the same loops with AVX512-BF16's vdpbf16ps (a pair of k per step, float32 accumulators): block_bf16.
// Threads: (problem, panel) pairs shared out by parallel_shares (parallel.h: each thread starts on its own stretch,
//          split by rows where the problems' row ranges differ, and takes from the others' once done); no thread
//          pool of MKL's own.
// ISA:     cpu_isa(): AVX-512F, AVX2+FMA or the baseline (a plain loop), each compiled with its own target
//          attribute, so one build runs on every x86-64 CPU; DRN_CPU_ISA forces a lower one (tests, benchmarks).
#include "cpu/gemm/gemm.h"

#include "cpu/cpu_options.h"
#include "cpu/threading/parallel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <immintrin.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace drn::cpu {
namespace {

// ---- register kernels: c (MR × 32, row stride ldc) = a (MR × k, row stride lda) · one packed panel -------------

// The prefetches' locality (__builtin_prefetch's third argument): 3 = into L1 (prefetcht0), 2 = into L2 (prefetcht1).
constexpr int kToL1 = 3, kToL2 = 2;

// Prefetches that keep a block's memory traffic off its critical path (the Winograd chunks' a and c, ~8 MB each, live
// in L3 rather than L2): at the start of a block, its MR c rows (the two lines of 16 floats it covers, stored at the
// end, so the lines arrive while it computes); every 16 steps of p (one line of a row: 16 floats, or 16 bf16 pairs),
// the same line of each of the *next* block's MR rows (past a's end for the last block: harmless, prefetches never
// fault). Both into L2, not L1: a block reads them a few hundred cycles later, and pulled into L1 that early (up to
// 28 c lines and 56 a lines per block) they likely evict the b slice and the rows in use. The L2 choice was measured
// on a 32 KB L1 only (docs/performance/cpu.md); where L1 is 48 KB the b-slice rule goes the other way
// (prefetch_to_l1).
// __builtin_prefetch(base + offset elements, Write, Locality): the address computed as an integer, since a pointer
// past the end of an array (the last block's "next" rows, the slice of b after a panel's last one) would be
// undefined behaviour.
template <int Write, int Locality, class E>
[[gnu::always_inline]] inline void prefetch_at(const E* base, int64_t offset) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(base) + sizeof(E) * offset),
                     Write, Locality);
}
template <int MR, int Lines>
[[gnu::always_inline]] inline void prefetch_c_rows(const float* c, int64_t ldc) {
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
    if (Lines > 0) prefetch_at<1, kToL2>(c, r * ldc);
    if (Lines > 1) prefetch_at<1, kToL2>(c, r * ldc + 16);
  }
}
template <int MR, class E>
[[gnu::always_inline]] inline void prefetch_next_rows(const E* a, int64_t lda, int64_t column) {
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) prefetch_at<0, kToL2>(a, (MR + r) * lda + column);
}

// Two vectors of columns (32 on AVX-512: the whole panel; 16 on AVX2: half of it, b's row stride stays kPanel)
// for MR rows: 2·MR accumulators. One body for both ISAs, instantiated with each one's intrinsics. lines: the cache
// lines of a panel row the block reads (2; the AVX2 half block 1), and so the lines of b it prefetches — were each
// AVX2 half block to prefetch both lines, every step would carry two needless prefetches beside its 8 loads and 12
// FMAs (measured slower: docs/performance/cpu.md). CLines, NextRows: the c lines it prefetches at
// its start and whether it prefetches the next block's rows (the row prefetches above; block_avx2 passes them to
// its first half only).
#define DRN_TWO_VECTOR_BLOCK(name, target, V, lanes, zero, load, broadcast, fmadd, store, lines) \
  template <int MR, int Locality, int CLines = 2, bool NextRows = true>                 \
  target void name(int64_t k, const float* a, int64_t lda, const float* b, float* c, int64_t ldc, bool add) { \
    V lo[MR], hi[MR];                                                                   \
    prefetch_c_rows<MR, CLines>(c, ldc);                                                \
    _Pragma("GCC unroll 14") for (int r = 0; r < MR; ++r) {                             \
      lo[r] = add ? load(c + r * ldc) : zero();                                         \
      hi[r] = add ? load(c + r * ldc + lanes) : zero();                                 \
    }                                                                                   \
    for (int64_t p = 0; p < k; ++p) {                                                   \
      if (NextRows && p % 16 == 0) prefetch_next_rows<MR>(a, lda, p);                   \
      const V b0 = load(b + p * kPanel), b1 = load(b + p * kPanel + lanes);             \
      prefetch_at<0, Locality>(b, (p + k) * kPanel);                                    \
      if (lines > 1) prefetch_at<0, Locality>(b, (p + k) * kPanel + 16);                \
      _Pragma("GCC unroll 14") for (int r = 0; r < MR; ++r) {                           \
        const V ar = broadcast(a + r * lda + p);                                        \
        lo[r] = fmadd(ar, b0, lo[r]);                                                   \
        hi[r] = fmadd(ar, b1, hi[r]);                                                   \
      }                                                                                 \
    }                                                                                   \
    _Pragma("GCC unroll 14") for (int r = 0; r < MR; ++r) {                             \
      store(c + r * ldc, lo[r]);                                                        \
      store(c + r * ldc + lanes, hi[r]);                                                \
    }                                                                                   \
  }

[[gnu::target("avx512f"), gnu::always_inline]] inline __m512 broadcast512(const float* p) {
  return _mm512_set1_ps(*p);
}
DRN_TWO_VECTOR_BLOCK(block_avx512, [[gnu::target("avx512f")]], __m512, 16, _mm512_setzero_ps, _mm512_loadu_ps,
                     broadcast512, _mm512_fmadd_ps, _mm512_storeu_ps, 2)
DRN_TWO_VECTOR_BLOCK(half_block_avx2, [[gnu::target("avx2,fma")]], __m256, 8, _mm256_setzero_ps, _mm256_loadu_ps,
                     _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_storeu_ps, 1)
#undef DRN_TWO_VECTOR_BLOCK

// The two halves of a panel, one after the other. The first prefetches both c lines of its rows and the next
// block's rows, the second nothing of them: it reads the same rows (in L1 by then), and its c lines, prefetched
// only at its own start, would arrive late.
template <int MR, int Locality>
[[gnu::target("avx2,fma")]] void block_avx2(int64_t k, const float* a, int64_t lda, const float* b, float* c,
                                            int64_t ldc, bool add) {
  half_block_avx2<MR, Locality, 2, true>(k, a, lda, b, c, ldc, add);
  half_block_avx2<MR, Locality, 0, false>(k, a, lda, b + 16, c + 16, ldc, add);
}

// The baseline ISA (SSE2 on x86-64, whatever the build targets elsewhere): plain loops, same summation order (no
// prefetch: Locality is there for the common kernel table).
template <int MR, int Locality>
void block_baseline(int64_t k, const float* a, int64_t lda, const float* b, float* c, int64_t ldc, bool add) {
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

// bfloat16 (AVX512-BF16, vdpbf16ps): k counts pairs; a row-major bf16 (a pair = 2 consecutive columns, one 32-bit
// broadcast), b packed by pack_b_bf16 (per pair, 32 columns × 2 bf16 = two zmm), float32 accumulators: each step
// adds a[i][2p]·b[2p][j] + a[i][2p+1]·b[2p+1][j] (the products exact in float32, one rounding per step).
template <int MR, int Locality>
[[gnu::target("avx512f,avx512bf16")]] void block_bf16(int64_t k, const uint16_t* a, int64_t lda, const uint16_t* b,
                                                      float* c, int64_t ldc, bool add) {
  __m512 lo[MR], hi[MR];
  prefetch_c_rows<MR, 2>(c, ldc);
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
    lo[r] = add ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps();
    hi[r] = add ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < k; ++p) {
    if (p % 16 == 0) prefetch_next_rows<MR>(a, lda, 2 * p);
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + p * 2 * kPanel);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + p * 2 * kPanel + kPanel);
    prefetch_at<0, Locality>(b, (p + k) * 2 * kPanel);
    prefetch_at<0, Locality>(b, (p + k) * 2 * kPanel + kPanel);
#pragma GCC unroll 14
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * p, sizeof pair);
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(pair);
      lo[r] = _mm512_dpbf16_ps(lo[r], ar, b0);
      hi[r] = _mm512_dpbf16_ps(hi[r], ar, b1);
    }
  }
#pragma GCC unroll 14
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * ldc, lo[r]);
    _mm512_storeu_ps(c + r * ldc + 16, hi[r]);
  }
}

// c (+)= a · b for one register block; add: accumulate onto c (the k blocks after the first).
template <class E>
using BlockFn = void (*)(int64_t, const E*, int64_t, const E*, float*, int64_t, bool);

// The kernels of one ISA for 1..max_rows rows: kernel_rows<Locality>[r - 1] computes r rows.
#define DRN_BLOCK_TABLE(kernel, max_rows)                                                        \
  template <int Locality, int... R>                                                              \
  constexpr auto kernel##_table(std::integer_sequence<int, R...>) {                              \
    return std::array{&kernel<R + 1, Locality>...};                                              \
  }                                                                                              \
  template <int Locality>                                                                        \
  constexpr auto kernel##_rows = kernel##_table<Locality>(std::make_integer_sequence<int, max_rows>());
DRN_BLOCK_TABLE(block_avx512, 14)
DRN_BLOCK_TABLE(block_avx2, 6)
DRN_BLOCK_TABLE(block_baseline, 4)
DRN_BLOCK_TABLE(block_bf16, 14)
#undef DRN_BLOCK_TABLE

template <class E>
struct Kernels {
  const BlockFn<E>* rows;  // rows[r - 1]: the kernel for r rows
  int max_rows;
  int64_t depth;  // of a k block (k steps: columns of a, or bf16 pairs)
};

// The fewest rows at which a register block runs at full speed: 2·4 accumulators (AVX2 half block) or more cover
// the FMA latency (4 cycles) on two FMA ports. A shorter last block of a problem is avoided (drive).
constexpr int64_t kFullSpeedRows = 4;

// Two ways to walk b, by the size of L1 (prefetch_to_l1):
// - L1 of 48 KB or more (Zen 5, Sapphire Rapids): k blocks of kDepthL1 = 256 steps, so a block's slice of a b panel
//   (256 × 32 floats, 32 KB) stays in L1 while every row block of the problem uses it, and the next slice is
//   prefetched into L1 (T0).
// - A smaller L1 (Zen 4's 32 KB): the next slice is prefetched into L2 (T1), since into L1 it evicts the one still
//   in use; and k blocks of kDepthL2 = 512 steps (one block for every DRN layer), since a 32 KB slice does not
//   stay in a 32 KB L1 beside a's rows anyway, and each further block costs a pass over c and a kernel call per
//   row block. Shapes with k ≤ 256 run the same either way.
// Both rules are measured per L1 size in docs/performance/cpu.md.
// glibc reads the L1 size from CPUID; where it is unknown (another libc, or 0), the second way. DRN_CPU_PREFETCH=
// l1|l2 forces one (tests run both; results are equal bit for bit: c is stored and reloaded exactly between blocks,
// so the FMAs and their order do not depend on the depth).
constexpr int64_t kDepthL1 = 256, kDepthL2 = 512;

bool prefetch_to_l1() {
#ifdef _SC_LEVEL1_DCACHE_SIZE
  static const bool large_l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE) >= 48 * 1024;
#else
  static const bool large_l1 = false;
#endif
  const int asked = cpu_options().prefetch.load(std::memory_order_relaxed);  // 0 auto, 1 L1, 2 L2
  return asked == 0 ? large_l1 : asked == 1;
}

template <int Locality, int64_t Depth>
Kernels<float> kernels_for(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return {block_avx512_rows<Locality>.data(), 14, Depth};
    case Isa::kAvx2: return {block_avx2_rows<Locality>.data(), 6, Depth};
    default: return {block_baseline_rows<Locality>.data(), 4, Depth};
  }
}

Kernels<float> kernels_for(Isa isa) {
  return prefetch_to_l1() ? kernels_for<kToL1, kDepthL1>(isa) : kernels_for<kToL2, kDepthL2>(isa);
}

Kernels<uint16_t> bf16_kernels() {
  return prefetch_to_l1() ? Kernels<uint16_t>{block_bf16_rows<kToL1>.data(), 14, kDepthL1}
                          : Kernels<uint16_t>{block_bf16_rows<kToL2>.data(), 14, kDepthL2};
}

// The loop over (problem, panel) pairs, k blocks and row blocks, for float32 (step 1: k counts columns of a) and
// bfloat16 (step 2: k counts pairs). b's panel holds kPanel·step elements per k.
template <class E, int Step>
void drive(const Kernels<E>& kern, int64_t batch, int64_t m, int64_t k, int64_t panels, const E* a, int64_t lda,
           int64_t a_batch, const E* b, int64_t b_batch, float* c, int64_t ldc, int64_t c_batch,
           const RowRange* rows) {
  if (batch == 0 || panels == 0 || (rows == nullptr && m == 0)) return;
  const auto range = [&](int64_t t) { return rows != nullptr ? rows[t] : RowRange{0, m}; };
  const auto run = [&](int64_t item) {
    const int64_t t = item / panels, q = item % panels;
    const auto [first, last] = range(t);
    const E* at = a + t * a_batch;
    const E* bt = b + t * b_batch + q * k * kPanel * Step;
    float* ct = c + t * c_batch + q * kPanel;
    if (k == 0) {
      for (int64_t i = first; i < last; ++i) std::fill(ct + i * ldc, ct + i * ldc + kPanel, 0.f);
      return;
    }
    for (int64_t p0 = 0; p0 < k; p0 += kern.depth) {
      const int64_t depth = std::min(kern.depth, k - p0);
      // blocks of max_rows rows and a shorter last one; or, where that one would be under kFullSpeedRows, the
      // same number of blocks with sizes that differ by at most one (header: Tiling)
      const int64_t count = std::max<int64_t>(last - first, 0), blocks = (count + kern.max_rows - 1) / kern.max_rows;
      const bool even = count % kern.max_rows != 0 && count % kern.max_rows < kFullSpeedRows;
      for (int64_t j = 0, i = first; j < blocks; ++j) {
        const int64_t n = even ? count / blocks + (j < count % blocks) : std::min<int64_t>(kern.max_rows, last - i);
        kern.rows[n - 1](depth, at + i * lda + p0 * Step, lda, bt + p0 * kPanel * Step, ct + i * ldc, ldc, p0 > 0);
        i += n;
      }
    }
  };
  const int64_t items = batch * panels;
  const auto each = [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) run(item);
  };
  const int threads = at::get_num_threads();
  if (rows == nullptr || threads == 1) {
    parallel_even(items, 1, each);
    return;
  }
  // Problems of unequal row counts: each thread starts on the items, in order, that bring the rows done so far to
  // its share (an even split of the items would leave one thread the long problems).
  int64_t total = 0;
  for (int64_t t = 0; t < batch; ++t) total += std::max<int64_t>(range(t).end - range(t).begin, 0) * panels;
  if (total == 0) return;
  std::vector<int64_t> start(threads + 1, items);
  start[0] = 0;
  int64_t done = 0, next = 1;
  for (int64_t item = 0; item < items && next < threads; ++item) {
    done += std::max<int64_t>(range(item / panels).end - range(item / panels).begin, 0);
    while (next < threads && done * threads >= total * next) start[next++] = item + 1;
  }
  parallel_shares(start, 1, each);
}

}  // namespace

void pack_b(const float* src, int64_t rows, int64_t n, int64_t ld, float* dst) {
  const int64_t panels = panels_of(n);
  for (int64_t q = 0; q < panels; ++q) {
    const int64_t j0 = q * kPanel, width = std::min(kPanel, n - j0);
    float* out = dst + q * rows * kPanel;
    for (int64_t p = 0; p < rows; ++p) {
      std::copy(src + p * ld + j0, src + p * ld + j0 + width, out + p * kPanel);
      std::fill(out + p * kPanel + width, out + (p + 1) * kPanel, 0.f);
    }
  }
}

void gemm_packed(int64_t batch, int64_t m, int64_t k, int64_t panels, const float* a, int64_t lda, int64_t a_batch,
                 const float* b, int64_t b_batch, float* c, int64_t ldc, int64_t c_batch, const RowRange* rows) {
  drive<float, 1>(kernels_for(cpu_isa()), batch, m, k, panels, a, lda, a_batch, b, b_batch, c, ldc, c_batch, rows);
}

int64_t gemm_block_rows(bool bf16) { return bf16 ? bf16_kernels().max_rows : kernels_for(cpu_isa()).max_rows; }

bool gemm_bf16_supported() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has && cpu_isa() == Isa::kAvx512;
}

void pack_b_bf16(const float* src, int64_t rows, int64_t n, int64_t ld, c10::BFloat16* dst) {
  const int64_t panels = panels_of(n), pairs = (rows + 1) / 2;
  for (int64_t q = 0; q < panels; ++q) {
    c10::BFloat16* out = dst + q * pairs * 2 * kPanel;
    for (int64_t p = 0; p < pairs; ++p) {
      for (int64_t j = 0; j < kPanel; ++j) {
        for (int64_t e = 0; e < 2; ++e) {
          const int64_t row = 2 * p + e, col = q * kPanel + j;
          out[(p * kPanel + j) * 2 + e] =
              row < rows && col < n ? c10::BFloat16(src[row * ld + col]) : c10::BFloat16(0.f);
        }
      }
    }
  }
}

void gemm_packed_bf16(int64_t batch, int64_t m, int64_t pairs, int64_t panels, const c10::BFloat16* a, int64_t lda,
                      int64_t a_batch, const c10::BFloat16* b, int64_t b_batch, float* c, int64_t ldc,
                      int64_t c_batch, const RowRange* rows) {
  TORCH_CHECK(gemm_bf16_supported(), "gemm_packed_bf16: this CPU has no AVX512-BF16 (or DRN_CPU_ISA forbids it)");
  TORCH_CHECK(lda % 2 == 0 && a_batch % 2 == 0, "gemm_packed_bf16: a's strides must be even");
  drive<uint16_t, 2>(bf16_kernels(), batch, m, pairs, panels, reinterpret_cast<const uint16_t*>(a), lda, a_batch,
                     reinterpret_cast<const uint16_t*>(b), b_batch, c, ldc, c_batch, rows);
}

std::vector<int64_t> packed_shape(int64_t batch, int64_t k, int64_t n, bool bf16) {
  return bf16 ? std::vector<int64_t>{batch, panels_of(n), (k + 1) / 2, kPanel, 2}
              : std::vector<int64_t>{batch, panels_of(n), k, kPanel};
}

at::Tensor pack_batch(const float* src, int64_t batch, int64_t k, int64_t n, bool bf16,
                      const at::TensorOptions& options) {
  at::Tensor out = at::empty(packed_shape(batch, k, n, bf16), options.dtype(bf16 ? at::kBFloat16 : at::kFloat));
  const int64_t per = out.numel() / std::max<int64_t>(batch, 1);
  at::parallel_for(0, batch, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (bf16) {
        pack_b_bf16(src + t * k * n, k, n, n, out.data_ptr<c10::BFloat16>() + t * per);
      } else {
        pack_b(src + t * k * n, k, n, n, out.data_ptr<float>() + t * per);
      }
    }
  });
  return out;
}

}  // namespace drn::cpu
