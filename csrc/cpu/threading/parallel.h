// Work sharing for the CPU kernels' parallel passes (the Winograd transforms and GEMMs, the class head, the
// fallback epilogue), for threads that may not run alike.
//
// at::parallel_for hands each thread a fixed share, so a pass ends when its slowest thread does. Threads run
// unequally whenever their cores do: another process on one of them, a noisy neighbour on a shared cloud VM, the
// efficiency cores of a hybrid Intel CPU. parallel_shares starts each thread on its own share, as the fixed split
// does, and lets a thread that has finished its share take the back half of the largest share still left (work
// stealing). Where the threads run alike nobody steals before the last few items, so each walks its own stretch
// in order (what the GEMM's cache blocking counts on); where one runs at half speed the others take its work.
// Each item is computed whole by the thread that took it, so results do not depend on the split (bit-identical
// from run to run). It helps most where a core is shared with other work or there are more threads than cores
// (a container whose CPU quota torch does not see); the measurements against the fixed split are in
// docs/performance/cpu.md ("Threads that do not run alike").
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace drn::cpu {

// f(begin, end) over runs of at most `run` items covering [0, bounds.back()) exactly once, on torch's threads:
// thread j starts on [bounds[j], bounds[j + 1]) (bounds: one entry per thread and one more, non-decreasing from 0).
// Call it from outside any parallel region (inside one, f(0, n) runs on the calling thread; so does one thread).
// Past 2^32 items (a share's bounds are packed into 32 bits each) it falls back to at::parallel_for's fixed split,
// whose ranges may be longer than `run`.
template <class F>
void parallel_shares(const std::vector<int64_t>& bounds, int64_t run, const F& f) {
  const int64_t threads = static_cast<int64_t>(bounds.size()) - 1, n = bounds.back();
  if (n <= 0) return;
  if (threads <= 1 || at::in_parallel_region()) {
    f(int64_t{0}, n);
    return;
  }
  if (n >= (int64_t{1} << 32)) {
    at::parallel_for(0, n, run, f);
    return;
  }
  // a share [begin, end) as begin << 32 | end, one per cache line: its owner takes from the front, thieves the back
  struct alignas(64) Share {
    std::atomic<uint64_t> range;
  };
  const auto pack = [](int64_t b, int64_t e) { return static_cast<uint64_t>(b) << 32 | static_cast<uint64_t>(e); };
  const auto first = [](uint64_t r) { return static_cast<int64_t>(r >> 32); };
  const auto last = [](uint64_t r) { return static_cast<int64_t>(r & 0xffffffffu); };
  std::vector<Share> shares(threads);
  for (int64_t j = 0; j < threads; ++j) shares[j].range.store(pack(bounds[j], bounds[j + 1]));
  at::parallel_for(0, threads, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t me = j0; me < j1; ++me) {
      std::atomic<uint64_t>& mine = shares[me].range;
      for (;;) {
        uint64_t r = mine.load(std::memory_order_relaxed);
        if (first(r) < last(r)) {
          const int64_t b = first(r), e = std::min(last(r), b + run);
          if (mine.compare_exchange_weak(r, pack(e, last(r)), std::memory_order_relaxed)) f(b, e);
          continue;
        }
        int64_t victim = -1, most = 0;  // the largest share left
        uint64_t seen = 0;
        for (int64_t j = 0; j < threads; ++j) {
          const uint64_t v = shares[j].range.load(std::memory_order_relaxed);
          if (last(v) - first(v) > most) victim = j, most = last(v) - first(v), seen = v;
        }
        if (victim < 0) break;  // all taken (items still running finish on their threads)
        const int64_t mid = first(seen) + most / 2;  // its back half; all of it when one item is left
        if (shares[victim].range.compare_exchange_strong(seen, pack(first(seen), mid), std::memory_order_relaxed)) {
          mine.store(pack(mid, last(seen)), std::memory_order_relaxed);
        }
      }
    }
  });
}

// parallel_shares from an even split of [0, n) over torch's threads, no more of them than there are runs (so a
// pass of at most `run` items runs on the calling thread, as at::parallel_for's grain would have it).
template <class F>
void parallel_even(int64_t n, int64_t run, const F& f) {
  const int64_t runs = at::divup(std::max<int64_t>(n, 0), std::max<int64_t>(run, 1));
  const int64_t threads = std::clamp<int64_t>(at::get_num_threads(), 1, std::max<int64_t>(runs, 1));
  std::vector<int64_t> bounds(threads + 1);
  for (int64_t j = 0; j <= threads; ++j) bounds[j] = static_cast<int64_t>(static_cast<__int128>(n) * j / threads);
  parallel_shares(bounds, run, f);
}

}  // namespace drn::cpu
