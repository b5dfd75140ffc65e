// conv_bn_act: y = relu?(conv2d(x, w) + bias + residual?) as an implicit GEMM on tensor cores.
//
// Math. With output pixel m = (n, p, q) (M = N*P*Q rows) and reduction index kk = (r, s, c) (Kdim = R*S*C, c
// fastest), y[m, k] = sum_kk A[m, kk] * B[k, kk] where A[m, (r,s,c)] = x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c]
// (zero outside the image) and B = the weight packed (K, R, S, C). Accumulation is fp32.
// Layout. x NHWC (channels_last), weight (K, R*S*C) row-major, y and residual NHWC, so y's offset is m*K + k.
// Element offsets are int64 (x, y can exceed 2^31 elements); per-image coordinates are int. The vector path steps
// its reduction index (r, s, c) incrementally: no division in the main loop (the C=3 stem's scalar gather divides).
// Tiling. One block = a 64 (pixels) x 64 (channels) tile of y, 4 warps in a 2x2 arrangement of 32x32 warp tiles.
// The reduction walks BK-wide slices (64 bytes: 32 fp16/bf16 or 16 fp32) through a 3-stage shared-memory ring
// filled by cp.async (16-byte chunks; kVec) or, when C is not a multiple of a chunk (the C=3 stem), by scalar
// gathers (!kVec). Rows are padded by one chunk so the fragment loads hit 32 distinct banks.
// fp16/bf16: each warp loads its fragments with 4 ldmatrix.x4 and issues 2x4 mma.sync.m16n8k16 per 16-deep
// step. fp32: an exact FFMA micro-kernel that produces the same accumulator layout (no TF32 rounding), so the
// epilogue is shared.
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
};

namespace conv {
constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kThreads = 128;
constexpr int kStages = 3;
}  // namespace conv

template <class T, class OutT, bool kVec>
__global__ void __launch_bounds__(conv::kThreads, 2) conv_bn_act_kernel(ConvParams p) {
  using namespace conv;
  constexpr int kVecElems = 16 / sizeof(T);    // elements per 16-byte chunk
  constexpr int kBlockK = 64 / sizeof(T);      // 4 chunks per row
  constexpr int kLds = kBlockK + kVecElems;    // padded row (80 bytes)
  constexpr bool kFloat = std::is_same_v<T, float>;

  __shared__ __align__(16) T a_tile[kStages][kBlockM][kLds];
  __shared__ __align__(16) T b_tile[kStages][kBlockN][kLds];

  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ w = static_cast<const T*>(p.w);
  const int tid = threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  const int n0 = blockIdx.y * kBlockN;

  // Each thread copies chunk `load_chunk` of rows load_row and load_row + 32 of both tiles, every k step.
  const int load_row = tid / 4, load_chunk = tid % 4;
  int a_h0[2], a_w0[2];
  int64_t a_base[2];
  bool a_ok[2];
  const int pq = p.P * p.Q;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t m = m0 + load_row + 32 * i;
    a_ok[i] = m < p.M;
    const int64_t mm = a_ok[i] ? m : 0;
    const int n = static_cast<int>(mm / pq);
    const int rem = static_cast<int>(mm - static_cast<int64_t>(n) * pq);
    const int pp = rem / p.Q, qq = rem - pp * p.Q;
    a_h0[i] = pp * p.stride_h - p.pad_h;
    a_w0[i] = qq * p.stride_w - p.pad_w;
    a_base[i] = static_cast<int64_t>(n) * p.H * p.W * p.C;
  }

  // The vector path walks the reduction with an iterator instead of dividing: this thread's chunk starts at
  // reduction index kk = kt * kBlockK + load_chunk * kVecElems, i.e. tap (r, s) and channel c; each slice moves
  // it kBlockK further (c += kBlockK, carried into s and r), and x's offset of the tap, (r*dh*W + s*dw)*C, is
  // carried along by adding precomputed steps. Slices are loaded in order, once each, so one iterator serves
  // both rows and every stage. Only the prologue divides.
  int it_kk = load_chunk * kVecElems;
  int it_c = it_kk % p.C, it_s = (it_kk / p.C) % p.S;
  int it_dh = (it_kk / p.C / p.S) * p.dil_h, it_dw = it_s * p.dil_w;  // r * dil_h, s * dil_w
  int64_t it_tap = (static_cast<int64_t>(it_dh) * p.W + it_dw) * p.C;
  const int64_t tap_step_s = static_cast<int64_t>(p.dil_w) * p.C;                      // s -> s + 1
  const int64_t tap_step_r = static_cast<int64_t>(p.dil_h) * p.W * p.C - p.S * tap_step_s;  // s = S - 1 -> r + 1
  int64_t a_row_off[2];  // x offset of tap (0, 0), channel 0 of row i (outside the image when padded)
#pragma unroll
  for (int i = 0; i < 2; ++i)
    a_row_off[i] = a_base[i] + (static_cast<int64_t>(a_h0[i]) * p.W + a_w0[i]) * p.C;
  int64_t b_off[2];  // w offset of this thread's chunk in weight rows n0 + load_row + 32 * i
#pragma unroll
  for (int i = 0; i < 2; ++i) b_off[i] = static_cast<int64_t>(n0 + load_row + 32 * i) * p.Kdim + it_kk;
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
    for (int i = 0; i < 2; ++i) b_off[i] += kBlockK;
  };

  // x offset of reduction index kk for A row i, or -1 when it falls in the padding / past the end (the scalar
  // gather of the !kVec path).
  auto a_offset = [&](int i, int kk) -> int64_t {
    if (!a_ok[i] || kk >= p.Kdim) return -1;
    const int rs = kk / p.C, c = kk - rs * p.C;
    const int r = rs / p.S, s = rs - r * p.S;
    const int h = a_h0[i] + r * p.dil_h, ww = a_w0[i] + s * p.dil_w;
    if (h < 0 || h >= p.H || ww < 0 || ww >= p.W) return -1;
    return a_base[i] + (static_cast<int64_t>(h) * p.W + ww) * p.C + c;
  };

  auto load_tiles = [&](int stage, int kt) {
    [[maybe_unused]] const int k0 = kt * kBlockK + load_chunk * kVecElems;  // the scalar gather's index
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = load_row + 32 * i;
      T* a_dst = &a_tile[stage][row][load_chunk * kVecElems];
      T* b_dst = &b_tile[stage][row][load_chunk * kVecElems];
      const int k = n0 + row;
      if constexpr (kVec) {  // C % kVecElems == 0: a chunk is 16 contiguous, aligned bytes of one (r, s)
        const int h = a_h0[i] + it_dh, ww = a_w0[i] + it_dw;
        const bool a_in = a_ok[i] && it_kk < p.Kdim && static_cast<unsigned>(h) < static_cast<unsigned>(p.H) &&
                          static_cast<unsigned>(ww) < static_cast<unsigned>(p.W);
        cp_async16(a_dst, a_in ? x + (a_row_off[i] + it_tap + it_c) : x, a_in);
        const bool b_ok = k < p.K && it_kk < p.Kdim;
        cp_async16(b_dst, b_ok ? w + b_off[i] : w, b_ok);
      } else {
#pragma unroll
        for (int e = 0; e < kVecElems; ++e) {
          const int64_t off = a_offset(i, k0 + e);
          a_dst[e] = off >= 0 ? x[off] : from_float<T>(0.f);
          const bool b_ok = k < p.K && k0 + e < p.Kdim;
          b_dst[e] = b_ok ? w[static_cast<int64_t>(k) * p.Kdim + k0 + e] : from_float<T>(0.f);
        }
      }
    }
    if constexpr (kVec) advance();
  };

  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  auto compute = [&](int stage) {
    if constexpr (kFloat) {
#pragma unroll 4
      for (int k = 0; k < kBlockK; ++k) {
        float a[2][2], b[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int h = 0; h < 2; ++h) a[i][h] = a_tile[stage][wm + i * 16 + h * 8 + g][k];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) b[j][e] = b_tile[stage][wn + j * 8 + 2 * t + e][k];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = fmaf(a[i][e / 2], b[j][e % 2], acc[i][j][e]);
      }
    } else {
#pragma unroll
      for (int ks = 0; ks < kBlockK; ks += 16) {
        // Fragments by ldmatrix.x4: A's 16x16 block i as matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15), in
        // register order a[0..3]; B's column blocks j, j+1 as (n rows of j | of j+1) x (k 0-7 | 8-15). The
        // 80-byte row pitch puts the 8 rows of each matrix in 8 distinct 16-byte bank groups.
        uint32_t a[2][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
          ldmatrix_x4(a[i], &a_tile[stage][wm + i * 16 + ((lane / 8) % 2) * 8 + lane % 8][ks + (lane / 16) * 8]);
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
          uint32_t r[4];
          ldmatrix_x4(r, &b_tile[stage][wn + (j + lane / 16) * 8 + lane % 8][ks + ((lane / 8) % 2) * 8]);
          b[j][0] = r[0];
          b[j][1] = r[1];
          b[j + 1][0] = r[2];
          b[j + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) mma_m16n8k16<T>(acc[i][j], a[i], b[j]);
      }
    }
  };

  // Multi-buffered main loop: stage kt % kStages is consumed while kStages - 1 later slices are in flight.
  const int k_tiles = (p.Kdim + kBlockK - 1) / kBlockK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_tiles(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    // Makes slice kt visible to every warp, and guarantees all warps finished reading slice kt - 1, whose
    // stage the prefetch below overwrites.
#if !defined(DRN_SIM_DROP_MAINLOOP_SYNC)  // negative control for the race test only
    __syncthreads();
#endif
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_tiles(next % kStages, next);
    cp_async_commit();
    compute(kt % kStages);
  }
  cp_async_wait<0>();

  const T* __restrict__ bias = static_cast<const T*>(p.bias);
  const OutT* __restrict__ residual = static_cast<const OutT*>(p.residual);
  OutT* __restrict__ y = static_cast<OutT*>(p.y);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + wm + i * 16 + h * 8 + g;
      if (m >= p.M) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j)
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
