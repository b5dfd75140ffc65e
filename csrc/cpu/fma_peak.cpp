// drn::cpu_fma_peak: the CPU's float32 FMA peak, measured (the profiler's roofline ceiling, drn/tools/flops.py): every
// torch thread runs independent chains of vector FMAs (acc = acc·a + b) that never touch memory, enough chains to
// cover the FMA latency (4-5 cycles) on two FMA ports, few enough that they and the two constants stay in
// registers: 16 of AVX-512's 32 zmm, 12 of AVX2's 16 ymm (16 chains there spill to the stack and read well below
// the true AVX2 peak, below what our AVX2 GEMM reaches); FLOP/s = threads × iterations × chains × lanes × 2 /
// wall time.
// isa: 2 AVX-512 (16 lanes), 1 AVX2 + FMA (8 lanes), -1 the best the CPU has; capped by what the CPU has.
#include "cpu/cpu_options.h"
#include "cpu/simd.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <chrono>

namespace drn::cpu {
namespace {

constexpr int kChains512 = 16, kChains256 = 12;

// kChains independent accumulators acc = acc·a + b, `iters` times, on the ISA S (simd.h); returns a sum of them (so
// nothing is dead).
template <class S, int kChains>
[[gnu::always_inline]] inline float fma_chains(int64_t iters) {
  using V = decltype(S::broadcast(0.f));
  V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = S::broadcast(static_cast<float>(i));
  const V a = S::broadcast(0.999999f), b = S::broadcast(1e-6f);
  for (int64_t t = 0; t < iters; ++t) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = S::fma(acc[i], a, b);
  }
  V s = acc[0];
  for (int i = 1; i < kChains; ++i) s += acc[i];
  float sum = 0.f;
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(float)); ++l) sum += s[l];
  return sum;
}

[[DRN_TARGET_AVX512, gnu::flatten]] float run_avx512(int64_t iters) {
  return fma_chains<simd::Avx512, kChains512>(iters);
}
[[DRN_TARGET_AVX2, gnu::flatten]] float run_avx2(int64_t iters) { return fma_chains<simd::Avx2, kChains256>(iters); }

double cpu_fma_peak(int64_t isa, int64_t iters) {
  const Isa best = best_cpu_isa();
  const bool has512 = best == Isa::kAvx512, has2 = best != Isa::kBaseline;
  TORCH_CHECK_VALUE(isa == -1 || isa == 1 || isa == 2, "cpu_fma_peak: isa must be -1 (best), 1 (avx2) or 2 "
                    "(avx512), got ", isa);
  TORCH_CHECK_VALUE(iters > 0 && iters <= (int64_t{1} << 34), "cpu_fma_peak: iters must be in [1, 2^34], got ",
                    iters);
  const bool use512 = has512 && isa != 1;
  TORCH_CHECK(use512 || has2, "cpu_fma_peak: this CPU has neither AVX-512 nor AVX2 + FMA");
  const int64_t threads = at::get_num_threads();
  std::atomic<int64_t> ran{0};
  std::atomic<uint32_t> sink{0};
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float v = use512 ? run_avx512(iters) : run_avx2(iters);
      sink.fetch_add(static_cast<uint32_t>(v), std::memory_order_relaxed);  // keeps the chains alive
      ran.fetch_add(1, std::memory_order_relaxed);
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double per_iter = use512 ? 16.0 * kChains512 : 8.0 * kChains256;  // lanes × chains
  return static_cast<double>(ran.load()) * static_cast<double>(iters) * per_iter * 2.0 / seconds;
}

}  // namespace

TORCH_LIBRARY_IMPL(drn, CompositeImplicitAutograd, m) {  // no tensor argument, so no dispatch key of its own
  m.impl("cpu_fma_peak", &cpu_fma_peak);
}

}  // namespace drn::cpu
