// The CPU backend's float32 GEMM (gemm.h): c = a · b for the Winograd convolution's per-point products — the loop
// over problems, column panels, k blocks and row blocks around the register blocks of microkernel.h.
//
// Layout:  a row-major with any row stride (the Winograd V chunk: tiles × channels); b packed once by its owner
//          into column panels of 32 (pack.cpp: pack_b; each panel (k × 32) row-major, zero-padded); c row-major.
// Blocks:  a problem's rows are cut into blocks of the ISA's most rows (microkernel.h: 14 on AVX-512, 6 on AVX2)
//          and a last one of fewer, each run by the kernel instantiated for its row count: a kernel is at full
//          speed down to 4 rows (enough independent accumulators to cover the FMA latency on two FMA ports), a
//          1-row block at about a quarter of it; so where the last block would have 1-3 rows, the same number of
//          blocks is given sizes that differ by at most one (49 rows on AVX2: 6,6,6,6,5,5,5,5,5 rather than 8 × 6
//          + 1). A last block of 4 rows or more is kept (on AVX-512, 49 = 3 × 14 + 7 rather than 13,12,12,12: fewer
//          blocks, each at full speed; the timings are in docs/performance/cpu.md).
// Cache:   a thread takes (problem, panel) pairs in order, so it walks one problem's a (tiles × channels, ≤ ~0.5
//          MB for the Winograd chunks) from L2 panel after panel; where L1 is 48 KB, k runs in blocks of 256, so a
//          block's slice of the b panel (256 × 32 floats, 32 KB) stays in L1 over all the row blocks (where L1 is
//          32 KB it would not: blocks of 512 there, prefetch_to_l1), and each kernel prefetches the next slice
//          while it works (b is one contiguous stream, walked in order) — into L1, or into L2 where L1 is 32 KB;
//          it also prefetches its c rows and the next block's a rows into L2 (microkernel.h). The caller's a rows
//          are padded by a cache line (gemm.h: padded_row) so a block's rows do not share L1 sets.
// Threads: (problem, panel) pairs shared out by parallel_shares (parallel.h: each thread starts on its own stretch,
//          split by rows where the problems' row ranges differ, and takes from the others' once done); no thread
//          pool of MKL's own.
// ISA:     cpu_isa(): AVX-512F, AVX2+FMA or the baseline (a plain loop), each compiled with its own target
//          attribute, so one build runs on every x86-64 CPU; DRN_CPU_ISA forces a lower one (tests, benchmarks).
#include "cpu/gemm/gemm.h"

#include "cpu/cpu_options.h"
#include "cpu/gemm/microkernel.h"
#include "cpu/threading/parallel.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace drn::cpu {
namespace {

using microkernel::BlockFn;
using microkernel::kToL1;
using microkernel::kToL2;

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
  using namespace microkernel;
  switch (isa) {
    case Isa::kAvx512: return {table<BlockAvx512, Locality, kRowsAvx512>.data(), kRowsAvx512, Depth};
    case Isa::kAvx2: return {table<BlockAvx2, Locality, kRowsAvx2>.data(), kRowsAvx2, Depth};
    default: return {table<BlockBaseline, Locality, kRowsBaseline>.data(), kRowsBaseline, Depth};
  }
}

Kernels<float> kernels_for(Isa isa) {
  return prefetch_to_l1() ? kernels_for<kToL1, kDepthL1>(isa) : kernels_for<kToL2, kDepthL2>(isa);
}

Kernels<uint16_t> bf16_kernels() {
  using namespace microkernel;
  return prefetch_to_l1() ? Kernels<uint16_t>{table<BlockBf16, kToL1, kRowsBf16>.data(), kRowsBf16, kDepthL1}
                          : Kernels<uint16_t>{table<BlockBf16, kToL2, kRowsBf16>.data(), kRowsBf16, kDepthL2};
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
      // same number of blocks with sizes that differ by at most one (header: Blocks)
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

void gemm_packed(int64_t batch, int64_t m, int64_t k, int64_t panels, const float* a, int64_t lda, int64_t a_batch,
                 const float* b, int64_t b_batch, float* c, int64_t ldc, int64_t c_batch, const RowRange* rows) {
  drive<float, 1>(kernels_for(cpu_isa()), batch, m, k, panels, a, lda, a_batch, b, b_batch, c, ldc, c_batch, rows);
}

int64_t gemm_block_rows(bool bf16) { return bf16 ? bf16_kernels().max_rows : kernels_for(cpu_isa()).max_rows; }

bool gemm_bf16_supported() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has && cpu_isa() == Isa::kAvx512;
}

void gemm_packed_bf16(int64_t batch, int64_t m, int64_t pairs, int64_t panels, const c10::BFloat16* a, int64_t lda,
                      int64_t a_batch, const c10::BFloat16* b, int64_t b_batch, float* c, int64_t ldc,
                      int64_t c_batch, const RowRange* rows) {
  TORCH_CHECK(gemm_bf16_supported(), "gemm_packed_bf16: this CPU has no AVX512-BF16 (or DRN_CPU_ISA forbids it)");
  TORCH_CHECK(lda % 2 == 0 && a_batch % 2 == 0, "gemm_packed_bf16: a's strides must be even");
  drive<uint16_t, 2>(bf16_kernels(), batch, m, pairs, panels, reinterpret_cast<const uint16_t*>(a), lda, a_batch,
                     reinterpret_cast<const uint16_t*>(b), b_batch, c, ldc, c_batch, rows);
}

}  // namespace drn::cpu
