// conv_bn_act: y = relu?(conv2d(x, w) + bias + residual?) as an implicit GEMM on tensor cores.
//
// Math. With output pixel m = (n, p, q) (M = N*P*Q rows) and reduction index kk = (r, s, c) (Kdim = R*S*C, c
// fastest), y[m, k] = sum_kk A[m, kk] * B[k, kk] where A[m, (r,s,c)] = x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c]
// (zero outside the image) and B = the weight packed (K, R, S, C). Accumulation is fp32.
// Layout. x NHWC (channels_last), weight (K, R*S*C) row-major, y and residual NHWC, so y's offset is m*K + k.
// Element offsets are int64 (x, y can exceed 2^31 elements); per-image coordinates are int. No division
// instruction anywhere: the prologue divides by launch constants with FastDiv (common.cuh), the vector path steps
// its reduction index (r, s, c) incrementally, the scalar gather divides with FastDiv too.
// Tiling (ConvTile). One block = a BM (pixels) x BN (channels) tile of y: 64x64 (4 warps of 32x32, 3 stages),
// 128x128 (8 warps of 64x32, 4 stages), 128x64 and 64x128 (4 warps of 64x32 / 32x64, 4 stages); the host picks one
// (conv_tile_rule in host_ops.cuh). The reduction walks BK-wide slices (64 bytes: 32 fp16/bf16 or 16 fp32)
// through a `stages`-deep ring in dynamic shared memory filled by cp.async (16-byte chunks; kVec) or, when C is
// not a multiple of a chunk (the C=3 stem), by scalar gathers (!kVec). Rows are unpadded and swizzled (tile_elem
// below: why no bank conflicts).
// fp16/bf16: each warp loads its fragments with ldmatrix.x4 and issues (WM/16) x (WN/8) mma.sync.m16n8k16 per
// 16-deep step. fp32: an exact FFMA micro-kernel that produces the same accumulator layout (no TF32 rounding), so
// the epilogue is shared.
// Epilogue from registers: + bias, + residual, ReLU (NaN kept, as torch.relu), cast to OutT, masked stores.
#pragma once

#include "common.cuh"

namespace drn {

struct ConvParams {
  const void* x;         // (N, H, W, C) T
  const void* w;         // (K, R, S, C) T
  const void* bias;      // (K,) T
  const void* residual;  // (N, P, Q, K) OutT, or nullptr
  void* y;               // (N, P, Q, K) OutT
  int N, H, W, C, K, R, S, P, Q;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t M;  // N * P * Q
  int Kdim;   // R * S * C
  bool relu;
  FastDiv div_pq, div_q, div_c, div_s;  // by P*Q, Q, C, S (conv_params sets them)
};

// A block tile: BM x BN outputs, WarpsM x WarpsN warps (each a (BM / WarpsM) x (BN / WarpsN) warp tile), a ring of
// Stages slices of 64-byte rows in dynamic shared memory.
template <int BM, int BN, int WarpsM, int WarpsN, int Stages>
struct ConvTile {
  static constexpr int kBlockM = BM, kBlockN = BN, kStages = Stages, kWarpsN = WarpsN;
  static constexpr int kThreads = 32 * WarpsM * WarpsN;
  static constexpr int kWarpM = BM / WarpsM, kWarpN = BN / WarpsN;
  static constexpr int kRowBytes = 64;  // one BK slice of one row: 4 chunks of 16 bytes
  static constexpr int kSharedBytes = Stages * (BM + BN) * kRowBytes;
  // 2 blocks per SM for the 4-warp tiles (up to 255 registers at 128 threads); the 8-warp 128x128
  // tile asks for 1 (64 KB of shared memory and 256 threads of ~128+ registers).
  static constexpr int kMinBlocks = kThreads == 128 ? 2 : 1;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tile: whole m16 rows and pairs of n8 columns");
  static_assert((BM * 4) % kThreads == 0 && (BN * 4) % kThreads == 0, "whole copy passes per tile");
};

namespace conv {
using Tile64x64 = ConvTile<64, 64, 2, 2, 3>;
using Tile128x128 = ConvTile<128, 128, 2, 4, 4>;
using Tile128x64 = ConvTile<128, 64, 2, 2, 4>;
using Tile64x128 = ConvTile<64, 128, 2, 2, 4>;

// Shared-memory layout of an operand tile: rows of 64 bytes (one BK slice: chunks 0..3 of 16 bytes), unpadded,
// chunk c of row r stored at chunk slot c ^ ((r >> 1) & 3). Returns the element offset of element e of chunk c.
// Why no bank conflicts: shared memory serves 128 bytes (32 banks x 4 bytes) per wavefront, i.e. 8 16-byte bank
// groups, and a 16-byte access by 8 lanes is conflict free iff their addresses fall in 8 distinct groups. Row r
// starts at group 4 (r & 1) (64-byte rows), so chunk c of row r lies in group 4 (r & 1) + (c ^ ((r >> 1) & 3)).
//  - ldmatrix: each 8-lane phase reads one chunk c of 8 consecutive rows r0..r0+7 (r0 % 8 == 0): (r & 1, (r >> 1)
//    & 3) runs through all 8 pairs and c ^ x is a bijection of x, so the 8 groups are distinct. Without the
//    swizzle they would be groups 4 (r & 1) + c: 2 groups, a 4-way conflict (padding each row by a chunk would
//    avoid it too, at 25% more shared memory).
//  - cp.async stores: thread t writes chunk t % 4 of row t / 4 (+ a multiple of 8 rows per pass), so a quarter
//    warp (8 threads) writes all 4 chunks of rows 2j, 2j+1; the swizzle permutes chunks within a row, so that is
//    still 128 contiguous bytes: 8 distinct groups.
//  - fp32 FFMA reads (one column k of rows g = 0..7, or of rows 2t + e, t = 0..3): the same groups argument with
//    the same word in each group.
// The SIMT shim runs this same function; its ldmatrix and cp.async models count phases and quarter warps that
// break the rule (sim::bank_conflicts, sim::store_bank_conflicts), and the race check asserts none.
template <class T>
__device__ __forceinline__ int tile_elem(int row, int chunk, int e = 0) {
  constexpr int kVecElems = 16 / sizeof(T);
  return row * (4 * kVecElems) + ((chunk ^ ((row >> 1) & 3)) * kVecElems) + e;
}
}  // namespace conv

template <class T, class OutT, bool kVec, class Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocks) conv_bn_act_kernel(ConvParams p) {
  using conv::tile_elem;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kStages = Tile::kStages;
  constexpr int kVecElems = 16 / sizeof(T);            // elements per 16-byte chunk
  constexpr int kBlockK = Tile::kRowBytes / sizeof(T);  // 4 chunks per row
  constexpr int kPass = Tile::kThreads / 4;             // rows one copy pass of the block covers
  constexpr int kARows = kBlockM / kPass, kBRows = kBlockN / kPass;  // rows each thread copies per slice
  constexpr int kMi = Tile::kWarpM / 16, kNj = Tile::kWarpN / 8;     // m16 x n8 MMA tiles per warp
  constexpr int kStageElems = (kBlockM + kBlockN) * kBlockK;
  constexpr bool kFloat = std::is_same_v<T, float>;

  T* const smem = static_cast<T*>(dynamic_shared_memory());  // per stage: A (kBlockM rows), then B (kBlockN rows)
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ w = static_cast<const T*>(p.w);
  const int tid = threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  const int n0 = blockIdx.y * kBlockN;

  // Each thread copies chunk `load_chunk` of rows load_row + kPass * i of both tiles, every k step.
  const int load_row = tid / 4, load_chunk = tid % 4;
  int a_h0[kARows], a_w0[kARows];
  int64_t a_base[kARows];
  bool a_ok[kARows];
  const int pq = p.P * p.Q;
#pragma unroll
  for (int i = 0; i < kARows; ++i) {
    const int64_t m = m0 + load_row + kPass * i;
    a_ok[i] = m < p.M;
    const int64_t mm = a_ok[i] ? m : 0;
    const int64_t n = p.div_pq.div(mm);
    const int rem = static_cast<int>(mm - n * pq);
    const int pp = static_cast<int>(p.div_q.div(rem)), qq = rem - pp * p.Q;
    a_h0[i] = pp * p.stride_h - p.pad_h;
    a_w0[i] = qq * p.stride_w - p.pad_w;
    a_base[i] = n * p.H * p.W * p.C;
  }

  // The vector path walks the reduction with an iterator instead of dividing: this thread's chunk starts at
  // reduction index kk = kt * kBlockK + load_chunk * kVecElems, i.e. tap (r, s) and channel c; each slice moves
  // it kBlockK further (c += kBlockK, carried into s and r), and x's offset of the tap, (r*dh*W + s*dw)*C, is
  // carried along by adding precomputed steps. Slices are loaded in order, once each, so one iterator serves
  // every row and every stage.
  int it_kk = load_chunk * kVecElems;
  const int it_rs = static_cast<int>(p.div_c.div(it_kk)), it_r = static_cast<int>(p.div_s.div(it_rs));
  int it_c = it_kk - it_rs * p.C, it_s = it_rs - it_r * p.S;
  int it_dh = it_r * p.dil_h, it_dw = it_s * p.dil_w;  // r * dil_h, s * dil_w
  int64_t it_tap = (static_cast<int64_t>(it_dh) * p.W + it_dw) * p.C;
  const int64_t tap_step_s = static_cast<int64_t>(p.dil_w) * p.C;                      // s -> s + 1
  const int64_t tap_step_r = static_cast<int64_t>(p.dil_h) * p.W * p.C - p.S * tap_step_s;  // s = S - 1 -> r + 1
  int64_t a_row_off[kARows];  // x offset of tap (0, 0), channel 0 of row i (outside the image when padded)
#pragma unroll
  for (int i = 0; i < kARows; ++i)
    a_row_off[i] = a_base[i] + (static_cast<int64_t>(a_h0[i]) * p.W + a_w0[i]) * p.C;
  int64_t b_off[kBRows];  // w offset of this thread's chunk in weight rows n0 + load_row + kPass * j
#pragma unroll
  for (int j = 0; j < kBRows; ++j) b_off[j] = static_cast<int64_t>(n0 + load_row + kPass * j) * p.Kdim + it_kk;
  auto advance = [&]() {
    it_kk += kBlockK;
    it_c += kBlockK;
    while (it_c >= p.C) {  // at most once when C >= kBlockK; a thin C crosses several taps per slice
      it_c -= p.C;
      it_dw += p.dil_w;
      it_tap += tap_step_s;
      if (++it_s == p.S) {
        it_s = 0;
        it_dw = 0;
        it_dh += p.dil_h;
        it_tap += tap_step_r;
      }
    }
#pragma unroll
    for (int j = 0; j < kBRows; ++j) b_off[j] += kBlockK;
  };

  // x offset of reduction index kk for A row i, or -1 when it falls in the padding / past the end (the scalar
  // gather of the !kVec path).
  auto a_offset = [&](int i, int kk) -> int64_t {
    if (!a_ok[i] || kk >= p.Kdim) return -1;
    const int rs = static_cast<int>(p.div_c.div(kk)), c = kk - rs * p.C;
    const int r = static_cast<int>(p.div_s.div(rs)), s = rs - r * p.S;
    const int h = a_h0[i] + r * p.dil_h, ww = a_w0[i] + s * p.dil_w;
    if (h < 0 || h >= p.H || ww < 0 || ww >= p.W) return -1;
    return a_base[i] + (static_cast<int64_t>(h) * p.W + ww) * p.C + c;
  };

  // Rows r and r + 8j have the same swizzle key ((r >> 1) & 3), so every address below is a per-thread offset
  // computed once by tile_elem plus a compile-time row offset: no layout arithmetic in the main loop. Stages are
  // addressed as 32-bit shared-window byte addresses (smem_addr): ring + stage * kStageBytes.
  static_assert(kPass % 8 == 0, "copy passes keep the swizzle key");
  constexpr int kStageBytes = kStageElems * sizeof(T), kABytes = kBlockM * kBlockK * sizeof(T);
  constexpr int kRowB = kBlockK * sizeof(T);  // bytes per tile row
  const int store_off = tile_elem<T>(load_row, load_chunk);  // this thread's cp.async chunk in row load_row
  const smem_addr_t ring = smem_addr(smem);

  auto load_tiles = [&](int stage, smem_addr_t stage_addr, int kt) {
    T* const a_tile = smem + stage * kStageElems;  // the scalar gather's pointers
    T* const b_tile = a_tile + kBlockM * kBlockK;
    [[maybe_unused]] const smem_addr_t a_store = stage_addr + store_off * static_cast<int>(sizeof(T));
    [[maybe_unused]] const int k0 = kt * kBlockK + load_chunk * kVecElems;  // the scalar gather's index
#pragma unroll
    for (int i = 0; i < kARows; ++i) {
      if constexpr (kVec) {  // C % kVecElems == 0: a chunk is 16 contiguous, aligned bytes of one (r, s)
        const int h = a_h0[i] + it_dh, ww = a_w0[i] + it_dw;
        const bool a_in = a_ok[i] && it_kk < p.Kdim && static_cast<unsigned>(h) < static_cast<unsigned>(p.H) &&
                          static_cast<unsigned>(ww) < static_cast<unsigned>(p.W);
        cp_async16(a_store + kPass * i * kRowB, a_in ? x + (a_row_off[i] + it_tap + it_c) : x, a_in);
      } else {
        T* a_dst = a_tile + store_off + kPass * i * kBlockK;
#pragma unroll
        for (int e = 0; e < kVecElems; ++e) {
          const int64_t off = a_offset(i, k0 + e);
          a_dst[e] = off >= 0 ? x[off] : from_float<T>(0.f);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kBRows; ++j) {
      const int k = n0 + load_row + kPass * j;
      if constexpr (kVec) {
        const bool b_ok = k < p.K && it_kk < p.Kdim;
        cp_async16(a_store + kABytes + kPass * j * kRowB, b_ok ? w + b_off[j] : w, b_ok);
      } else {
        T* b_dst = b_tile + store_off + kPass * j * kBlockK;
#pragma unroll
        for (int e = 0; e < kVecElems; ++e) {
          const bool b_ok = k < p.K && k0 + e < p.Kdim;
          b_dst[e] = b_ok ? w[static_cast<int64_t>(k) * p.Kdim + k0 + e] : from_float<T>(0.f);
        }
      }
    }
    if constexpr (kVec) advance();
  };

  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp / Tile::kWarpsN) * Tile::kWarpM, wn = (warp % Tile::kWarpsN) * Tile::kWarpN;
  float acc[kMi][kNj][4];
#pragma unroll
  for (int i = 0; i < kMi; ++i)
#pragma unroll
    for (int j = 0; j < kNj; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // Fragment offsets per chunk column c: fp32 reads rows wm + g (+ 8h + 16i) and wn + 2t (+ e + 8j) at chunk c;
  // fp16/bf16 ldmatrix rows of A's block i (lane l: row wm + 8 ((l / 8) % 2) + l % 8 + 16i, chunk 2 ks16 + l / 16)
  // and of B's column blocks j, j + 1 (row wn + 8 (l / 16) + l % 8 + 8j, chunk 2 ks16 + (l / 8) % 2), per 16-deep
  // step ks16.
  constexpr int kFragCols = kFloat ? 4 : kBlockK / 16;
  int a_frag[kFragCols], b_frag[kFragCols];
#pragma unroll
  for (int c = 0; c < kFragCols; ++c) {
    if constexpr (kFloat) {
      a_frag[c] = tile_elem<T>(wm + g, c);
      b_frag[c] = tile_elem<T>(wn + 2 * t, c);
    } else {  // in bytes
      a_frag[c] = tile_elem<T>(wm + ((lane / 8) % 2) * 8 + lane % 8, 2 * c + lane / 16) * sizeof(T);
      b_frag[c] = tile_elem<T>(wn + (lane / 16) * 8 + lane % 8, 2 * c + (lane / 8) % 2) * sizeof(T);
    }
  }

  auto compute = [&](int stage, [[maybe_unused]] smem_addr_t stage_addr) {
    if constexpr (kFloat) {
      const T* const a_tile = smem + stage * kStageElems;
      const T* const b_tile = a_tile + kBlockM * kBlockK;
#pragma unroll
      for (int k = 0; k < kBlockK; ++k) {
        float a[kMi][2], b[kNj][2];
#pragma unroll
        for (int i = 0; i < kMi; ++i)
#pragma unroll
          for (int h = 0; h < 2; ++h) a[i][h] = a_tile[a_frag[k / 4] + k % 4 + (i * 16 + h * 8) * kBlockK];
#pragma unroll
        for (int j = 0; j < kNj; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) b[j][e] = b_tile[b_frag[k / 4] + k % 4 + (j * 8 + e) * kBlockK];
#pragma unroll
        for (int i = 0; i < kMi; ++i)
#pragma unroll
          for (int j = 0; j < kNj; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = fmaf(a[i][e / 2], b[j][e % 2], acc[i][j][e]);
      }
    } else {
#pragma unroll
      for (int ks = 0; ks < kBlockK; ks += 16) {
        // Fragments by ldmatrix.x4: A's 16x16 block i as matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15), in
        // register order a[0..3]; B's column blocks j, j+1 as (n rows of j | of j+1) x (k 0-7 | 8-15). Each
        // matrix is 8 consecutive rows of one chunk: conflict free in the swizzled layout.
        uint32_t a[kMi][4], b[kNj][2];
        const smem_addr_t a_addr = stage_addr + a_frag[ks / 16], b_addr = stage_addr + kABytes + b_frag[ks / 16];
#pragma unroll
        for (int i = 0; i < kMi; ++i) ldmatrix_x4(a[i], a_addr + i * 16 * kRowB);
#pragma unroll
        for (int j = 0; j < kNj; j += 2) {
          uint32_t r[4];
          ldmatrix_x4(r, b_addr + j * 8 * kRowB);
          b[j][0] = r[0];
          b[j][1] = r[1];
          b[j + 1][0] = r[2];
          b[j + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < kMi; ++i)
#pragma unroll
          for (int j = 0; j < kNj; ++j) mma_m16n8k16<T>(acc[i][j], a[i], b[j]);
      }
    }
  };

  // Multi-buffered main loop: stage kt % kStages is consumed while kStages - 1 later slices are in flight.
  const int k_tiles = (p.Kdim + kBlockK - 1) / kBlockK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_tiles(s, ring + s * kStageBytes, s);
    cp_async_commit();
  }
  // read_stage = kt % kStages, stepped without a modulo; the prefetch's stage, (kt + kStages - 1) % kStages, is
  // the one before it in the ring.
  int read_stage = 0;
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    // Makes slice kt visible to every warp, and guarantees all warps finished reading slice kt - 1, whose
    // stage the prefetch below overwrites.
#if !defined(DRN_SIM_DROP_MAINLOOP_SYNC)  // negative control for the race test only
    __syncthreads();
#endif
    const int write_stage = read_stage == 0 ? kStages - 1 : read_stage - 1;
    if (kt + kStages - 1 < k_tiles) load_tiles(write_stage, ring + write_stage * kStageBytes, kt + kStages - 1);
    cp_async_commit();
    compute(read_stage, ring + read_stage * kStageBytes);
    read_stage = read_stage == kStages - 1 ? 0 : read_stage + 1;
  }
  cp_async_wait<0>();

  const T* __restrict__ bias = static_cast<const T*>(p.bias);
  const OutT* __restrict__ residual = static_cast<const OutT*>(p.residual);
  OutT* __restrict__ y = static_cast<OutT*>(p.y);
#pragma unroll
  for (int i = 0; i < kMi; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + wm + i * 16 + h * 8 + g;
      if (m >= p.M) continue;
#pragma unroll
      for (int j = 0; j < kNj; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int k = n0 + wn + j * 8 + 2 * t + e;
          if (k >= p.K) continue;
          const int64_t off = m * p.K + k;
          float v = acc[i][j][h * 2 + e] + to_float(bias[k]);
          if (residual != nullptr) v += to_float(residual[off]);
          if (p.relu && v < 0.f) v = 0.f;
          y[off] = from_float<OutT>(v);
        }
    }
}

}  // namespace drn
