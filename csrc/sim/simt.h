// SIMT host shim: compile CUDA kernel headers with g++ and run them on the CPU, thread for thread.
//
// Model. A launch runs its blocks one after another. Each CUDA thread of a block is one std::jthread, and the
// same OS threads run every block of the launch (a block-wide barrier separates blocks, because __shared__ is
// static storage that the next block reuses). So:
//   __syncthreads()        -> std::barrier over the block's threads
//   __shared__             -> `static` (one copy per kernel instantiation, shared by all threads: right for one
//                             block at a time; launches are serialised by a mutex)
//   extern __shared__      -> dynamic_shared(): one 128-byte-aligned buffer of the launch's size, reused by
//                             every block (drn::dynamic_shared_memory() in csrc/cuda/common.cuh)
//   threadIdx, blockIdx... -> thread_local variables set by the launcher
//   *_sync warp intrinsics -> a per-warp std::barrier plus per-warp scratch registers (write, barrier, read,
//                             barrier: the second barrier keeps the next exchange from overwriting this one)
//   atomics                -> std::atomic_ref
// Tensor-core and async-copy instructions are wrapped in csrc/cuda/common.cuh; their host branches call the
// models below (mma_m16n8k16 gathers the warp's fragments by the PTX ISA layout, computes, hands each lane its
// accumulators). Because every exchange goes through real synchronisation objects, a build with
// -fsanitize=thread sees exactly the happens-before edges the CUDA program has, and a missing __syncthreads is
// reported as a data race.
#pragma once

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <tuple>
#include <vector>

#define DRN_SIMT_HOST 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace sim {

constexpr int kScratchWords = 16;  // per lane: enough for an mma's A, B fragments (6 words) or a 64-bit shuffle
constexpr int kStoreSlots = 64;    // cp.async stores a lane may run ahead of its warp (far more than between barriers)

// The n-th 16-byte shared store of each lane of a warp (slot n % kStoreSlots): addresses, and per quarter warp how
// many of its 8 lanes have made it.
struct StoreSlot {
  std::atomic<int> arrived[4] = {};
  uintptr_t address[32] = {};
};

struct Warp {
  explicit Warp(std::ptrdiff_t lanes) : bar(lanes) {}
  std::barrier<> bar;
  uint32_t scratch[32][kScratchWords] = {};
  unsigned stores_made[32] = {};  // per lane, written by that lane only
  StoreSlot stores[kStoreSlots];
};

struct Launch {
  Launch(unsigned threads, std::size_t shared_bytes)
      : block(threads), shared(static_cast<unsigned char*>(::operator new[](shared_bytes + 1, std::align_val_t{128}))) {
    for (unsigned t = 0; t < threads; t += 32) warps.push_back(std::make_unique<Warp>(std::min(32u, threads - t)));
  }
  ~Launch() { ::operator delete[](shared, std::align_val_t{128}); }
  Launch(const Launch&) = delete;
  Launch& operator=(const Launch&) = delete;
  std::barrier<> block;
  std::vector<std::unique_ptr<Warp>> warps;
  unsigned char* shared;  // dynamic shared memory
};

inline thread_local Launch* current = nullptr;
inline thread_local unsigned linear_tid = 0;

inline unsigned lane_id() { return linear_tid % 32; }
inline Warp& warp() { return *current->warps[linear_tid / 32]; }
inline void* dynamic_shared() { return current->shared; }

// Shared-memory bank conflicts the models saw, over the process: ldmatrix phases whose 8 rows share a 16-byte bank
// group, and quarter warps whose 8 cp.async 16-byte stores do. The conflict-free layouts are checked by reading
// them (race_check.cpp).
inline std::atomic<long> bank_conflicts{0};
inline std::atomic<long> store_bank_conflicts{0};

// True when 8 addresses fall in 8 distinct 16-byte bank groups ((address / 16) % 8; the buffers are 128-byte aligned).
inline bool distinct_bank_groups(const uintptr_t* address) {
  unsigned groups = 0;
  for (int l = 0; l < 8; ++l) groups |= 1u << ((address[l] / 16) % 8);
  return groups == 0xffu;
}

// cp.async's 16-byte store into shared memory, as the hardware serves it: a quarter warp (8 lanes) per wavefront.
// Each lane logs its n-th store; the last of a quarter warp's 8 lanes to log it checks the 8 addresses. Lanes of a
// warp make the same sequence of stores (the kernels' copies are warp-uniform), and no lane runs kStoreSlots
// stores ahead of another (a __syncthreads comes first), so a slot is never reused early.
inline void log_store16(const void* dst) {
  Warp& w = warp();
  const unsigned lane = lane_id();
  StoreSlot& slot = w.stores[w.stores_made[lane]++ % kStoreSlots];
  slot.address[lane] = reinterpret_cast<uintptr_t>(dst);
  std::atomic<int>& arrived = slot.arrived[lane / 8];
  if (arrived.fetch_add(1, std::memory_order_acq_rel) == 7) {
    arrived.store(0, std::memory_order_relaxed);
    if (!distinct_bank_groups(&slot.address[lane / 8 * 8]))
      store_bank_conflicts.fetch_add(1, std::memory_order_relaxed);
  }
}

// Runs kernel(args...) over grid x block with `shared_bytes` of dynamic shared memory. Arguments are copied per
// thread, as kernel parameters are.
template <class... P, class... A>
void launch(dim3 grid, dim3 block, std::size_t shared_bytes, void (*kernel)(P...), A... args) {
  static std::mutex serial;  // __shared__ statics are per process: one launch at a time
  std::lock_guard<std::mutex> lock(serial);
  const unsigned threads = block.x * block.y * block.z;
  Launch state(threads, shared_bytes);
  std::tuple<P...> params(args...);
  {
    std::vector<std::jthread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        current = &state;
        linear_tid = t;
        blockDim = block;
        gridDim = grid;
        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        for (unsigned bz = 0; bz < grid.z; ++bz)
          for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
              blockIdx = {bx, by, bz};
              std::apply(kernel, params);
              state.block.arrive_and_wait();  // the next block reuses the static __shared__ storage
            }
      });
    }
  }  // jthreads join here
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: D = A(16x16, row) * B(16x8, col) + C, fp32 accumulate.
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4, t = lane % 4:
//   A regs a[0..3] hold (row, k) pairs (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)
//   B regs b[0..1] hold (k, col) pairs (2t..2t+1, g), (2t+8.., g)
//   C c[0..3]      hold (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
// The low 16 bits of a register hold the element with the smaller index. `decode` turns 16 bits into float.
template <class Decode>
void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2], Decode decode) {
  Warp& w = warp();
  const unsigned lane = lane_id();
  for (int i = 0; i < 4; ++i) w.scratch[lane][i] = a[i];
  for (int i = 0; i < 2; ++i) w.scratch[lane][4 + i] = b[i];
  w.bar.arrive_and_wait();
  auto half_of = [](uint32_t v, int k) { return static_cast<uint16_t>(k % 2 ? v >> 16 : v & 0xffffu); };
  auto A = [&](int row, int k) {
    return decode(half_of(w.scratch[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)], k));
  };
  auto B = [&](int k, int col) { return decode(half_of(w.scratch[col * 4 + (k % 8) / 2][4 + k / 8], k)); };
  const int g = lane / 4, t = lane % 4;
  float d[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float s = 0.f;
    for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
    d[i] = c[i] + s;
  }
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 (drn::ldmatrix_x4): every lane publishes its row address, then lane
// l reads, for each matrix j, the 4 bytes at column 2 * (l % 4) of row l / 4, i.e. of the address lane 8j + l / 4
// gave. Lane 0 also checks each matrix (one phase of the instruction: 8 rows of 16 bytes) for bank conflicts: the
// 8 row addresses must fall in 8 distinct 16-byte bank groups, (address / 16) % 8 (a 128-byte-aligned buffer
// makes that the hardware's bank arithmetic).
inline void ldmatrix_x4(uint32_t r[4], const void* row) {
  Warp& w = warp();
  const unsigned lane = lane_id();
  std::memcpy(w.scratch[lane], &row, sizeof(row));
  w.bar.arrive_and_wait();
  if (lane == 0) {
    for (int j = 0; j < 4; ++j) {
      uintptr_t rows[8];
      for (int l = 0; l < 8; ++l) std::memcpy(&rows[l], w.scratch[8 * j + l], sizeof(uintptr_t));
      if (!distinct_bank_groups(rows)) bank_conflicts.fetch_add(1, std::memory_order_relaxed);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const char* src;
    std::memcpy(&src, w.scratch[8 * j + lane / 4], sizeof(src));
    std::memcpy(&r[j], src + 4 * (lane % 4), 4);
  }
  w.bar.arrive_and_wait();
}

}  // namespace sim

inline void __syncthreads() { sim::current->block.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { sim::warp().bar.arrive_and_wait(); }

template <class T>
T __shfl_sync_impl(T v, unsigned src_lane) {
  static_assert(sizeof(T) <= sizeof(uint32_t) * sim::kScratchWords);
  sim::Warp& w = sim::warp();
  std::memcpy(w.scratch[sim::lane_id()], &v, sizeof(T));
  w.bar.arrive_and_wait();
  T r;
  std::memcpy(&r, w.scratch[src_lane % 32], sizeof(T));
  w.bar.arrive_and_wait();
  return r;
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) { return __shfl_sync_impl(v, sim::lane_id() ^ lane_mask); }
template <class T>
T __shfl_sync(unsigned, T v, int src_lane, int = 32) { return __shfl_sync_impl(v, src_lane); }
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
  const unsigned src = sim::lane_id() + delta;
  return __shfl_sync_impl(v, src < 32 ? src : sim::lane_id());
}

template <class T>
T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T>
T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {}
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v > old && !a.compare_exchange_weak(old, v)) {}
  return old;
}
