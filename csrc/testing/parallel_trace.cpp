// drn_testing::parallel_shares_trace, drn_testing::parallel_even_trace: parallel_shares and parallel_even
// (csrc/cpu/threading/parallel.h) run over counters instead of work, for the tests (test library only): which thread ran each
// item and how often, with one thread slowed down so that the others must steal from it.
#include "cpu/threading/parallel.h"

#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <chrono>
#include <thread>
#include <vector>

namespace drn::cpu {
namespace {

// Runs `share(f)` (f: the per-run body) over n counters: (n, 2) int64, per item how many times it ran and the torch
// thread (at::get_thread_num) that last ran it; the thread numbered `slow` sleeps `slow_us` microseconds per run.
template <class Share>
at::Tensor trace(int64_t n, int64_t slow, double slow_us, const Share& share) {
  at::Tensor out = at::zeros({n, 2}, at::kLong);
  std::vector<std::atomic<int64_t>> count(n);
  int64_t* o = out.data_ptr<int64_t>();
  share([&](int64_t b, int64_t e) {
    const int thread = at::get_thread_num();
    if (thread == slow) std::this_thread::sleep_for(std::chrono::duration<double, std::micro>(slow_us));
    for (int64_t i = b; i < e; ++i) {
      count[i].fetch_add(1, std::memory_order_relaxed);
      o[2 * i + 1] = thread;
    }
  });
  for (int64_t i = 0; i < n; ++i) o[2 * i] = count[i].load();
  return out;
}

void check_run(const char* op, int64_t run) {
  TORCH_CHECK_VALUE(run >= 1 && run <= (int64_t{1} << 20), op, ": run must be in [1, 2^20], got ", run);
}

// parallel_shares over bounds.back() items: (n, 2) as in trace. bounds: each thread's first share, as many entries
// as torch's threads and one more; the thread numbered `slow` sleeps `slow_us` microseconds per run (-1: none).
at::Tensor parallel_shares_trace(c10::IntArrayRef bounds, int64_t run, int64_t slow, double slow_us) {
  const int64_t threads = at::get_num_threads();
  TORCH_CHECK_VALUE(static_cast<int64_t>(bounds.size()) == threads + 1, "parallel_shares_trace: bounds must have ",
                    threads + 1, " entries (torch's threads and one more), got ", bounds.size());
  TORCH_CHECK_VALUE(bounds[0] == 0, "parallel_shares_trace: bounds must start at 0, got ", bounds[0]);
  for (size_t j = 1; j < bounds.size(); ++j) {
    TORCH_CHECK_VALUE(bounds[j] >= bounds[j - 1], "parallel_shares_trace: bounds must not decrease, got ", bounds);
  }
  TORCH_CHECK_VALUE(bounds.back() <= (int64_t{1} << 20), "parallel_shares_trace: at most 2^20 items, got ",
                    bounds.back());
  check_run("parallel_shares_trace", run);
  TORCH_CHECK_VALUE(slow >= -1 && slow < threads, "parallel_shares_trace: slow must be -1 or a thread number below ",
                    threads, ", got ", slow);
  TORCH_CHECK_VALUE(slow_us >= 0 && slow_us <= 1e5, "parallel_shares_trace: slow_us must be in [0, 1e5], got ",
                    slow_us);
  const std::vector<int64_t> shares(bounds.begin(), bounds.end());
  return trace(bounds.back(), slow, slow_us, [&](const auto& f) { parallel_shares(shares, run, f); });
}

// parallel_even over n items in runs of `run`: (n, 2) as in trace.
at::Tensor parallel_even_trace(int64_t n, int64_t run) {
  TORCH_CHECK_VALUE(n >= 0 && n <= (int64_t{1} << 20), "parallel_even_trace: n must be in [0, 2^20], got ", n);
  check_run("parallel_even_trace", run);
  return trace(n, -1, 0.0, [&](const auto& f) { parallel_even(n, run, f); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(drn_testing, m) {
  m.def("parallel_shares_trace(int[] bounds, int run, int slow=-1, float slow_us=0) -> Tensor",
        &parallel_shares_trace);
  m.def("parallel_even_trace(int n, int run) -> Tensor", &parallel_even_trace);
}

}  // namespace drn::cpu
