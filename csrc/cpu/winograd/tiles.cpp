// The Winograd convolution's tile transforms (tiles.h), one source for every ISA: the bodies are templates on the
// ISA (simd.h: S), instantiated by one entry point per ISA and tile side that carries the ISA's target attribute.
#include "cpu/winograd/tiles.h"

#include "cpu/simd.h"
#include "cpu/winograd/transforms.h"

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace drn::cpu::winograd {

AxisTiles tile_origins(int64_t size, int64_t dil, int m) {
  AxisTiles out;
  std::vector<int64_t> partial;
  for (int64_t phase = 0; phase < std::min(dil, size); ++phase) {
    const int64_t count = (size - phase + dil - 1) / dil;
    for (int64_t t = 0; t * m < count; ++t) {
      (count - t * m >= m ? out.origins : partial).push_back(phase + t * m * dil);
    }
  }
  out.full = static_cast<int64_t>(out.origins.size());
  out.origins.insert(out.origins.end(), partial.begin(), partial.end());
  return out;
}

namespace {

constexpr int kLanes = 16;  // channels per transform step: one vec

// Loads and stores of 16 channels: float32 as they are; bfloat16 (the bf16 model's activations, and its V chunk)
// widened exactly on load, rounded on store bit for bit as c10::BFloat16 (simd.h: widen_bf16, narrow_bf16).
[[gnu::always_inline]] inline vec load(const float* p) { return simd::load<vec>(p); }
[[gnu::always_inline]] inline void store(float* p, vec v) { simd::store(p, v); }
[[gnu::always_inline]] inline vec load(const c10::BFloat16* p) {
  return simd::widen_bf16(simd::load<simd::u16x16>(p));
}
[[gnu::always_inline]] inline void store(c10::BFloat16* p, vec v) { simd::store(p, simd::narrow_bf16(v)); }

// The first n (<= kLanes) lanes; the others 0 on load and untouched on store.
template <class E>
[[gnu::always_inline]] inline vec load_n(const E* p, int64_t n) {
  if (n == kLanes) return load(p);
  alignas(64) E tmp[kLanes] = {};
  std::copy(p, p + n, tmp);
  return load(tmp);
}
template <class E>
[[gnu::always_inline]] inline void store_n(E* p, vec v, int64_t n) {
  if (n == kLanes) return store(p, v);
  alignas(64) E tmp[kLanes];
  store(tmp, v);
  std::copy(tmp, tmp + n, p);
}

// V's store. On the bf16 GEMM's path (S = Avx512Bf16: its CPUs all have AVX512-BF16) rounded by vcvtneps2bf16,
// which differs from c10::BFloat16 only for float32 subnormals (flushed to ±0) and NaN payloads (kept, quieted):
// V is the GEMM's operand, never an output.
template <class S, class E>
[[gnu::always_inline]] inline void store_v(E* p, vec v, int64_t n) {
  if constexpr (std::is_same_v<S, simd::Avx512Bf16> && std::is_same_v<E, c10::BFloat16>) {
    if (n == kLanes) return simd::store(p, S::narrow_bf16(v));
    alignas(64) E tmp[kLanes];
    simd::store(tmp, S::narrow_bf16(v));
    std::copy(tmp, tmp + n, p);
  } else {
    store_n(p, v, n);
  }
}

// One channel group of one tile — 16 channels (Full), or the last n < 16 — d → Bᵀ d B → V (tile row v, planes
// `plane` apart). Full groups' loads and stores have constant widths, and every field they need comes in a register
// (V's stores may alias anything: fields read through a pointer would be reloaded after each one).
template <class S, int M, bool Full, class E, class VT>
[[gnu::always_inline]] inline void in_group(const E* const* src, int64_t c0, int64_t n, VT* v, int64_t plane) {
  using T = Transform<M>;
  constexpr int A = T::kAlpha;
  const int64_t nc = Full ? kLanes : n;
  vec d[A][A], t1[A][A], r[A][A];
  for (int u = 0; u < A; ++u) {
    for (int w = 0; w < A; ++w) d[u][w] = load_n(src[u * A + w] + c0, nc);
  }
#pragma GCC unroll 6
  for (int w = 0; w < A; ++w) apply<S, A, A, T::BT>(&d[0][w], A, &t1[0][w], A);   // Bᵀ d
#pragma GCC unroll 6
  for (int u = 0; u < A; ++u) apply<S, A, A, T::BT>(&t1[u][0], 1, &r[u][0], 1);   // (Bᵀ d) B
  for (int u = 0; u < A; ++u) {
    for (int w = 0; w < A; ++w) store_v<S>(v + (u * A + w) * plane + c0, r[u][w], nc);
  }
}

// Tiles [begin, end) of the chunk starting at global tile t0 → V.
template <class S, int M, class E, class VT>
[[gnu::always_inline]] inline void in_tiles(const InArgs<E, VT>& a, int64_t t0, int64_t begin, int64_t end) {
  constexpr int A = Transform<M>::kAlpha;
  const TileGrid grid = a.grid;
  const E* const x = a.x;
  const E* const zeros = a.zeros;
  VT* const v = a.v;
  const int64_t H = a.H, W = a.W, C = a.C, ph = a.ph, pw = a.pw, dh = a.dh, dw = a.dw, plane = a.plane, row = a.row;
  for (int64_t i = begin; i < end; ++i) {
    const auto [n, y0, x0] = grid.at(t0 + i);
    const E* img = x + n * H * W * C;
    const E* src[A * A];
    for (int u = 0; u < A; ++u) {
      const int64_t h = y0 - ph + dh * u;
      for (int w_ = 0; w_ < A; ++w_) {
        const int64_t w = x0 - pw + dw * w_;
        src[u * A + w_] = (h >= 0 && h < H && w >= 0 && w < W) ? img + (h * W + w) * C : zeros;
      }
    }
    VT* const vi = v + i * row;
    int64_t c0 = 0;
    for (; c0 + kLanes <= C; c0 += kLanes) in_group<S, M, true>(src, c0, kLanes, vi, plane);
    if (c0 < C) in_group<S, M, false>(src, c0, C - c0, vi, plane);
  }
}

// One channel group of one tile (as in_group): M (tile row m, planes `plane` apart; the last row / column zeros
// where cut) → Aᵀ M A + bias (+ residual), ReLU → the outputs at offsets at[u][w] (< 0: outside the image).
template <class S, int M, bool Full, class E>
[[gnu::always_inline]] inline void out_group(const float* m, int64_t plane, bool row_cut, bool col_cut,
                                             const int64_t* at, int64_t k0, int64_t n, const float* bias_,
                                             const E* res, E* out, bool relu) {
  using T = Transform<M>;
  constexpr int A = T::kAlpha;
  const int64_t nk = Full ? kLanes : n;
  vec mm[A][A], s[M][A], y[M][M];
  for (int u = 0; u < A; ++u) {
    for (int w = 0; w < A; ++w) {
      const bool skipped = (u == A - 1 && row_cut) || (w == A - 1 && col_cut);
      mm[u][w] = skipped ? vec{} : load_n(m + (u * A + w) * plane + k0, nk);
    }
  }
#pragma GCC unroll 6
  for (int w = 0; w < A; ++w) apply<S, M, A, T::AT>(&mm[0][w], A, &s[0][w], A);  // Aᵀ M
#pragma GCC unroll 6
  for (int u = 0; u < M; ++u) apply<S, M, A, T::AT>(&s[u][0], 1, &y[u][0], 1);   // (Aᵀ M) A
  const vec bias = load_n(bias_ + k0, nk);
  for (int u = 0; u < M; ++u) {
    for (int w = 0; w < M; ++w) {
      const int64_t o = at[u * M + w];
      if (o < 0) continue;
      vec r = y[u][w] + bias;
      if (res != nullptr) r += load_n(res + o + k0, nk);
      if (relu) r = r < 0.f ? vec{} : r;  // torch.relu: NaN stays NaN
      store_n(out + o + k0, r, nk);
    }
  }
}

// Tiles [begin, end) of the chunk starting at global tile t0: M → Aᵀ M A + bias (+ residual), ReLU → out.
template <class S, int M, class E>
[[gnu::always_inline]] inline void out_tiles(const OutArgs<E>& a, int64_t t0, int64_t begin, int64_t end) {
  const TileGrid grid = a.grid;
  const float* const m = a.m;
  const float* const bias = a.bias;
  const E* const res = a.res;
  E* const out = a.out;
  const int64_t plane = a.plane, row = a.row, K = a.K, P = a.P, Q = a.Q, dh = a.dh, dw = a.dw;
  const bool relu = a.relu;
  for (int64_t i = begin; i < end; ++i) {
    const auto [n, y0, x0] = grid.at(t0 + i);
    int64_t at[M * M];
    for (int u = 0; u < M; ++u) {
      for (int w = 0; w < M; ++w) {
        const int64_t p = y0 + dh * u, q = x0 + dw * w;
        at[u * M + w] = p < P && q < Q ? ((n * P + p) * Q + q) * K : -1;
      }
    }
    // a partial tile's M in the last row (column) was not computed (TileGrid): zeros, so no stale value is read
    const bool row_cut = y0 + dh * (M - 1) >= P, col_cut = x0 + dw * (M - 1) >= Q;
    const float* const mi = m + i * row;
    int64_t k0 = 0;
    for (; k0 + kLanes <= K; k0 += kLanes) {
      out_group<S, M, true>(mi, plane, row_cut, col_cut, at, k0, kLanes, bias, res, out, relu);
    }
    if (k0 < K) out_group<S, M, false>(mi, plane, row_cut, col_cut, at, k0, K - k0, bias, res, out, relu);
  }
}

// The entry points, one per ISA: the best the CPU has runs, or the one DRN_CPU_ISA asks for (capped by the CPU).
template <int M, class E, class VT>
[[DRN_TARGET_AVX512, gnu::flatten]] void in_tiles_avx512(const InArgs<E, VT>& a, int64_t t0, int64_t b, int64_t e) {
  in_tiles<simd::Avx512, M>(a, t0, b, e);
}
template <int M, class E, class VT>
[[DRN_TARGET_AVX2, gnu::flatten]] void in_tiles_avx2(const InArgs<E, VT>& a, int64_t t0, int64_t b, int64_t e) {
  in_tiles<simd::Avx2, M>(a, t0, b, e);
}
template <int M, class E, class VT>
[[gnu::flatten]] void in_tiles_baseline(const InArgs<E, VT>& a, int64_t t0, int64_t b, int64_t e) {
  in_tiles<simd::Baseline, M>(a, t0, b, e);
}
// The bfloat16 GEMM's input transform: AVX-512 with AVX512-BF16's rounding of V (store_v)
template <int M>
[[DRN_TARGET_AVX512_BF16, gnu::flatten]] void in_tiles_avx512bf16(const InArgs<c10::BFloat16, c10::BFloat16>& a,
                                                                  int64_t t0, int64_t b, int64_t e) {
  in_tiles<simd::Avx512Bf16, M>(a, t0, b, e);
}
template <int M, class E>
[[DRN_TARGET_AVX512, gnu::flatten]] void out_tiles_avx512(const OutArgs<E>& a, int64_t t0, int64_t b, int64_t e) {
  out_tiles<simd::Avx512, M>(a, t0, b, e);
}
template <int M, class E>
[[DRN_TARGET_AVX2, gnu::flatten]] void out_tiles_avx2(const OutArgs<E>& a, int64_t t0, int64_t b, int64_t e) {
  out_tiles<simd::Avx2, M>(a, t0, b, e);
}
template <int M, class E>
[[gnu::flatten]] void out_tiles_baseline(const OutArgs<E>& a, int64_t t0, int64_t b, int64_t e) {
  out_tiles<simd::Baseline, M>(a, t0, b, e);
}

}  // namespace

template <int M, class E, class VT>
void in_tiles_on(Isa isa, const InArgs<E, VT>& a, int64_t t0, int64_t b, int64_t e) {
  if constexpr (std::is_same_v<VT, c10::BFloat16>) {
    return in_tiles_avx512bf16<M>(a, t0, b, e);  // the caller checked gemm_bf16_supported
  } else {
    isa == Isa::kAvx512 ? in_tiles_avx512<M, E, VT>(a, t0, b, e)
    : isa == Isa::kAvx2 ? in_tiles_avx2<M, E, VT>(a, t0, b, e)
                        : in_tiles_baseline<M, E, VT>(a, t0, b, e);
  }
}

template <int M, class E>
void out_tiles_on(Isa isa, const OutArgs<E>& a, int64_t t0, int64_t b, int64_t e) {
  isa == Isa::kAvx512 ? out_tiles_avx512<M, E>(a, t0, b, e)
  : isa == Isa::kAvx2 ? out_tiles_avx2<M, E>(a, t0, b, e)
                      : out_tiles_baseline<M, E>(a, t0, b, e);
}

// The tile sides and element types winograd.cpp runs: float32; bfloat16 storage with a float32 GEMM; the bfloat16
// GEMM.
using BF16 = c10::BFloat16;
template void in_tiles_on<2, float, float>(Isa, const InArgs<float, float>&, int64_t, int64_t, int64_t);
template void in_tiles_on<4, float, float>(Isa, const InArgs<float, float>&, int64_t, int64_t, int64_t);
template void in_tiles_on<2, BF16, float>(Isa, const InArgs<BF16, float>&, int64_t, int64_t, int64_t);
template void in_tiles_on<4, BF16, float>(Isa, const InArgs<BF16, float>&, int64_t, int64_t, int64_t);
template void in_tiles_on<2, BF16, BF16>(Isa, const InArgs<BF16, BF16>&, int64_t, int64_t, int64_t);
template void in_tiles_on<4, BF16, BF16>(Isa, const InArgs<BF16, BF16>&, int64_t, int64_t, int64_t);
template void out_tiles_on<2, float>(Isa, const OutArgs<float>&, int64_t, int64_t, int64_t);
template void out_tiles_on<4, float>(Isa, const OutArgs<float>&, int64_t, int64_t, int64_t);
template void out_tiles_on<2, BF16>(Isa, const OutArgs<BF16>&, int64_t, int64_t, int64_t);
template void out_tiles_on<4, BF16>(Isa, const OutArgs<BF16>&, int64_t, int64_t, int64_t);

}  // namespace drn::cpu::winograd
