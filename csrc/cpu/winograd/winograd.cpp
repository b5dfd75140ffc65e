// drn::conv_bn_act_native on CPU: Winograd F(m×m, 3×3) for float32 (and, F(2×2) only, bfloat16) 3×3 stride-1
// convolutions.
//
// Math (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). With α = m + 2, per m×m tile:
//   V = Bᵀ d B            d: the α×α input tile of one channel
//   U = G g Gᵀ            g: the 3×3 filter of one (k, c); in float64, rounded to float32 once (per call,
//                         or once by the weight's owner: winograd_weight, then the `prepared` argument)
//   M[ξ] = V[ξ] · U[ξ]    for each of the α² points ξ: a (tiles × C)·(C × K) GEMM — the work, done by our own
//                         register-blocked kernels (gemm.cpp: AVX-512 or AVX2, alike on every x86 vendor)
//   y = Aᵀ M A + bias (+ residual), ReLU
// F(2,3) multiplies 16/36 = 2.25× less than direct convolution, F(4,3) 36/144 = 4× less, at a larger rounding
// error (its transforms carry factors up to 8 and 1/24): measured on seeded DRN-C-26/D-22/D-105 at 224, the
// logits' max error relative to their max stays ≤ 5e-7 with either, the same as eager float32 (tests/
// test_cpu_kernels.py pins the per-layer error). DRN_WINOGRAD_TILE=2|4 picks; 4 is the default.
// Dilation d: outputs with equal (p mod d, q mod d) form an ordinary undilated convolution of the inputs with the
//   same phase, so one tile covers outputs (y0 + d·i, x0 + d·j), i, j < m, and reads inputs y0 - pad + d·u, u < α.
//   Tiles are laid out phase by phase (tile_origins); a phase whose length is not a multiple of m gets a partial
//   last tile whose missing outputs are never written, and whose GEMM rows at the points only those outputs read
//   are skipped (TileGrid).
// Layout: x NHWC (channels_last), channels innermost, so both transforms vectorise over channels.
//   V: [α²][T][C], U: [α²][C][K] packed in panels of 32 columns (gemm.h: pack_b), M: [α²][T][Kp] (Kp: K rounded up
//   to 32) for a chunk of T tiles sized so that V and M stay ~8 MB each
//   (the 1/8-resolution maps of a 1024×2048 image have 8192 tiles: the chunks bound the workspace).
// Epilogue in the output transform: bias, residual, ReLU, stored straight into the channels_last output.
// Threads: the transforms share out the chunk's tiles, the GEMMs the (ξ, column panel) pairs, each thread starting
//   on its own stretch and taking from the others' once done (parallel.h: parallel_shares).
// bfloat16: x, the residual and the output in bf16, the transforms in float32. Where the CPU has AVX512-BF16
//   (gemm_bf16_supported), F(2×2) only: V and U rounded to bf16 (the GEMM's operands, gemm.h: gemm_packed_bf16; V
//   by vcvtneps2bf16: store_v), M in float32; the two extra roundings put the error at 1.4–2.1× torch's own bf16
//   convolution on DRN layers; in F(4×4) (factors up to 25) it is ~15×, so that tile is refused there
//   (winograd_tiles, winograd_weight). Elsewhere (AVX2-only CPUs, or DRN_CPU_ISA below avx512) V, U and the GEMM
//   are float32, as for a float32 conv, both tiles: bf16 is storage only, rounded once at the output.
#include "cpu/winograd/winograd.h"
#include "cpu/cpu_options.h"
#include "cpu/gemm/gemm.h"
#include "cpu/threading/parallel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#include "conv_output_size.h"

namespace drn::cpu {
namespace {

using at::IntArrayRef;
using at::Tensor;

template <int M>
struct Transform;

template <>
struct Transform<2> {
  static constexpr int kAlpha = 4;
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};

template <>
struct Transform<4> {
  static constexpr int kAlpha = 6;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                     {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr double G[6][3] = {{1.0 / 4, 0, 0},
                                     {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                     {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                     {0, 0, 1}};
  static constexpr float AT[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

constexpr int kLanes = 16;                        // channels per transform step (one AVX-512 register of floats)
constexpr int64_t kWorkspaceFloats = 2 << 20;     // ~8 MB for each of V and M per chunk
constexpr int64_t kTileRun = 8;                   // tiles a thread takes at a time in the transforms (parallel.h)

int tile_size() { return cpu_options().winograd_tile.load(std::memory_order_relaxed) == 2 ? 2 : 4; }

// Whether a conv of this dtype computes its GEMM in bfloat16 (V and U bf16): bfloat16 where the CPU has AVX512-BF16
// and DRN_CPU_ISA allows AVX-512; otherwise V, U and the GEMM are float32, whatever the input dtype.
bool bf16_gemm(at::ScalarType dt) { return dt == at::kBFloat16 && gemm_bf16_supported(); }

// The tile a call runs: the one asked for (a prepared form's, or 0: DRN_WINOGRAD_TILE), except that a bfloat16
// GEMM runs F(2×2) only — see winograd_tiles.
int resolve_tile(at::ScalarType dt, int asked) {
  const int tile = asked != 0 ? asked : tile_size();
  return bf16_gemm(dt) ? 2 : tile;
}

// Tile origins along one output axis of `size` pixels with dilation `dil`, m outputs per tile: phase by phase, the
// full tiles of every phase first, then the partial ones (the last of a phase whose length is not a multiple of m).
struct AxisTiles {
  std::vector<int64_t> origins;
  int64_t full;                      // origins[0, full): full tiles; origins[full, end): partial ones
};

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

// The transforms work on 16 channels at a time as GCC vector values (one AVX-512 register, two AVX2 ones).
// Helpers taking or returning these are always inlined into their ISA's build, so the baseline ABI for 64-byte
// vectors (what -Wpsabi warns about) is never used across a call.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vec __attribute__((vector_size(64), may_alias));
typedef float vec_u __attribute__((vector_size(64), aligned(4), may_alias));  // unaligned access

[[gnu::always_inline]] inline vec load(const float* p) { return *reinterpret_cast<const vec_u*>(p); }
[[gnu::always_inline]] inline void store(float* p, vec v) { *reinterpret_cast<vec_u*>(p) = v; }

// bfloat16 (the bf16 model's activations, and its V chunk): widened exactly on load; rounded to nearest even on
// store, NaN as 0x7FC0 — bit for bit c10::BFloat16's conversion (torch's).
typedef uint16_t hvec_u __attribute__((vector_size(32), aligned(2), may_alias));
typedef uint16_t hvec __attribute__((vector_size(32)));
typedef uint32_t wvec __attribute__((vector_size(64)));

[[gnu::always_inline]] inline vec load(const c10::BFloat16* p) {
  const wvec w = __builtin_convertvector(*reinterpret_cast<const hvec_u*>(p), wvec) << 16;
  return reinterpret_cast<const vec&>(w);
}
[[gnu::always_inline]] inline void store(c10::BFloat16* p, vec v) {
  const wvec w = reinterpret_cast<const wvec&>(v);
  const wvec rounded = (w + 0x7FFFu + ((w >> 16) & 1u)) >> 16;
  const wvec out = (w & 0x7FFFFFFFu) > 0x7F800000u ? wvec{} + 0x7FC0u : rounded;
  *reinterpret_cast<hvec_u*>(p) = __builtin_convertvector(out, hvec);
}

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

// V's rounding on the bf16 path (whose CPUs all have AVX512-BF16): vcvtneps2bf16, round to nearest even like
// store() in one instruction instead of seven; it differs from c10::BFloat16 only for float32 subnormals (flushed
// to ±0) and NaN payloads (kept, quieted). V is the GEMM's operand, never an output. Inline assembly: an intrinsic
// would need the target attribute on every function it is inlined through.
[[gnu::always_inline]] inline void store_bf16_hw(c10::BFloat16* p, vec v) {
  hvec h;
  asm("vcvtneps2bf16 %1, %0" : "=v"(h) : "v"(v));
  *reinterpret_cast<hvec_u*>(p) = h;
}
template <bool Hw, class E>
[[gnu::always_inline]] inline void store_v(E* p, vec v, int64_t n) {
  if constexpr (Hw && std::is_same_v<E, c10::BFloat16>) {
    if (n == kLanes) return store_bf16_hw(p, v);
    alignas(64) E tmp[kLanes];
    store_bf16_hw(tmp, v);
    std::copy(tmp, tmp + n, p);
  } else {
    store_n(p, v, n);
  }
}

// out[i] = Σ_k mat[i][k] · in[k·step] with the constant matrix folded in (zeros skipped, ±1 as add/sub).
template <int Rows, int Cols, const float (&Mat)[Rows][Cols]>
[[gnu::always_inline]] inline void apply(const vec* in, int step, vec* out, int out_step) {
#pragma GCC unroll 6
  for (int i = 0; i < Rows; ++i) {
    vec acc = {};
#pragma GCC unroll 6
    for (int k = 0; k < Cols; ++k) {
      const float a = Mat[i][k];
      if (a == 0.f) continue;
      if (a == 1.f) {
        acc += in[k * step];
      } else if (a == -1.f) {
        acc -= in[k * step];
      } else {
        acc += a * in[k * step];
      }
    }
    out[i * out_step] = acc;
  }
}

// Tile t of the whole batch: image n, output origin (y0, x0). The tiles come in four classes, each image by image:
// 0: full rows × partial columns, 1: full × full, 2: partial rows × full columns, 3: partial × partial. A partial
// tile's last output row (column) lies outside the image, and only that row (column) of Aᵀ M A reads M's last row
// (column): so the GEMMs of the transform points in M's last row need classes 0-1 only, those in its last column
// classes 1-2, the last point class 1 — contiguous tile ranges (needed_rows); the output transform reads zeros for
// the M rows left unwritten (they would only reach outputs that are never stored). With DRN's 28×28 maps at
// dilation 4 (7 outputs per phase) that skips 12% of F(2×2)'s products and 16% of F(4×4)'s.
struct TileGrid {
  const int64_t* ty;                 // tile origins along rows and columns (tile_origins)
  const int64_t* tx;
  struct Class {
    int64_t start, per_image;        // first tile (of the batch), tiles per image
    int64_t y0, x0, nx;              // this class's first row and column origin (index into ty, tx), columns
  };
  Class cls[4];

  TileGrid(const AxisTiles& y, const AxisTiles& x, int64_t images) : ty(y.origins.data()), tx(x.origins.data()) {
    const int64_t ny = static_cast<int64_t>(y.origins.size()), nx = static_cast<int64_t>(x.origins.size());
    const int64_t rows[4][2] = {{0, y.full}, {0, y.full}, {y.full, ny}, {y.full, ny}};        // [first, end)
    const int64_t cols[4][2] = {{x.full, nx}, {0, x.full}, {0, x.full}, {x.full, nx}};
    int64_t start = 0;
    for (int k = 0; k < 4; ++k) {
      const int64_t w = cols[k][1] - cols[k][0];
      cls[k] = {start, (rows[k][1] - rows[k][0]) * w, rows[k][0], cols[k][0], w};
      start += images * cls[k].per_image;
    }
  }
  int64_t total(int64_t images) const { return cls[3].start + images * cls[3].per_image; }

  struct Tile {
    int64_t n, y0, x0;
  };
  Tile at(int64_t t) const {
    int k = 3;
    while (t < cls[k].start) --k;    // an empty class starts where the next one does
    const Class& c = cls[k];
    const int64_t i = t - c.start, r = i % c.per_image;
    return {i / c.per_image, ty[c.y0 + r / c.nx], tx[c.x0 + r % c.nx]};
  }

  // The tiles, of [t0, t0 + count), whose M row point ξ = (u, w) of an α×α transform needs, relative to t0.
  RowRange needed_rows(int u, int w, int alpha, int64_t images, int64_t t0, int64_t count) const {
    const bool last_row = u == alpha - 1, last_col = w == alpha - 1;
    const int64_t first = last_col ? cls[1].start : 0;
    const int64_t end = last_row ? cls[2].start : last_col ? cls[3].start : total(images);
    const int64_t b = std::clamp(first - t0, int64_t{0}, count), e = std::clamp(end - t0, int64_t{0}, count);
    return {b, std::max(b, e)};
  }
};

// E: the element type of x, the residual and the output (float32 or bfloat16); VT: V's (the GEMM's operand:
// float32, or bfloat16 for the bf16 GEMM).
template <class E, class VT>
struct InArgs {
  const E* x;                        // NHWC input
  const E* zeros;                    // C zeros: the padding pixels' channels (no branch per load)
  int64_t H, W, C, ph, pw, dh, dw;
  TileGrid grid;
  VT* v;                             // V chunk: tile i's row of plane ξ at v + ξ·plane + i·row
  int64_t plane, row;                // row = padded_row(C)
};

// One channel group of one tile — 16 channels (Full), or the last n < 16 — d → Bᵀ d B → V (tile row v, planes
// `plane` apart). Full groups' loads and stores have constant widths, and every field they need comes in a register
// (V's stores may alias anything: fields read through a pointer would be reloaded after each one).
template <int M, bool HwV, bool Full, class E, class VT>
[[gnu::always_inline]] inline void in_group(const E* const* src, int64_t c0, int64_t n, VT* v, int64_t plane) {
  using T = Transform<M>;
  constexpr int A = T::kAlpha;
  const int64_t nc = Full ? kLanes : n;
  vec d[A][A], t1[A][A], r[A][A];
  for (int u = 0; u < A; ++u) {
    for (int w = 0; w < A; ++w) d[u][w] = load_n(src[u * A + w] + c0, nc);
  }
  for (int w = 0; w < A; ++w) apply<A, A, T::BT>(&d[0][w], A, &t1[0][w], A);   // Bᵀ d
  for (int u = 0; u < A; ++u) apply<A, A, T::BT>(&t1[u][0], 1, &r[u][0], 1);   // (Bᵀ d) B
  for (int u = 0; u < A; ++u) {
    for (int w = 0; w < A; ++w) store_v<HwV>(v + (u * A + w) * plane + c0, r[u][w], nc);
  }
}

// Tiles [begin, end) of the chunk starting at global tile t0 → V.
template <int M, bool HwV, class E, class VT>
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
    for (; c0 + kLanes <= C; c0 += kLanes) in_group<M, HwV, true>(src, c0, kLanes, vi, plane);
    if (c0 < C) in_group<M, HwV, false>(src, c0, C - c0, vi, plane);
  }
}

template <class E>
struct OutArgs {
  const float* m;                    // M chunk: tile i's row of plane ξ at m + ξ·plane + i·row
  int64_t plane, row, K;
  const float* bias;
  const E* res;                      // NPQK residual or nullptr
  E* out;                            // NPQK output
  int64_t P, Q, dh, dw;
  TileGrid grid;
  bool relu;
};

// One channel group of one tile (as in_group): M (tile row m, planes `plane` apart; the last row / column zeros
// where cut) → Aᵀ M A + bias (+ residual), ReLU → the outputs at offsets at[u][w] (< 0: outside the image).
template <int M, bool Full, class E>
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
  for (int w = 0; w < A; ++w) apply<M, A, T::AT>(&mm[0][w], A, &s[0][w], A);  // Aᵀ M
  for (int u = 0; u < M; ++u) apply<M, A, T::AT>(&s[u][0], 1, &y[u][0], 1);   // (Aᵀ M) A
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
template <int M, class E>
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
      out_group<M, true>(mi, plane, row_cut, col_cut, at, k0, kLanes, bias, res, out, relu);
    }
    if (k0 < K) out_group<M, false>(mi, plane, row_cut, col_cut, at, k0, K - k0, bias, res, out, relu);
  }
}

// The transforms compiled three times: AVX-512, AVX2 + FMA, and the build's baseline ISA (SSE2 on x86-64);
// the best the CPU has runs, or the one DRN_CPU_ISA=baseline|avx2|avx512 asks for (tests; capped by the CPU).
#define DRN_TILES(isa, target)                                                                          \
  template <int M, class E, class VT>                                                                   \
  target void in_tiles_##isa(const InArgs<E, VT>& a, int64_t t0, int64_t b, int64_t e) {                \
    in_tiles<M, false>(a, t0, b, e);                                                                    \
  }                                                                                                     \
  template <int M, class E>                                                                             \
  target void out_tiles_##isa(const OutArgs<E>& a, int64_t t0, int64_t b, int64_t e) {                  \
    out_tiles<M>(a, t0, b, e);                                                                          \
  }
DRN_TILES(avx512, [[gnu::target("avx512f,avx512dq,avx512vl,avx2,fma")]])
DRN_TILES(avx2, [[gnu::target("avx2,fma")]])
DRN_TILES(baseline, )
#undef DRN_TILES
// The bfloat16 GEMM's input transform: AVX-512 with AVX512-BF16's rounding of V (store_v)
template <int M>
[[gnu::target("avx512f,avx512dq,avx512vl,avx512bf16,avx2,fma")]] void in_tiles_avx512bf16(
    const InArgs<c10::BFloat16, c10::BFloat16>& a, int64_t t0, int64_t b, int64_t e) {
  in_tiles<M, true>(a, t0, b, e);
}

template <int M, class E, class VT>
void in_tiles_on(Isa isa, const InArgs<E, VT>& a, int64_t t0, int64_t b, int64_t e) {
  if constexpr (std::is_same_v<VT, c10::BFloat16>) {
    return in_tiles_avx512bf16<M>(a, t0, b, e);  // run() checked gemm_bf16_supported
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

// U = G g Gᵀ for every (k, c), summed in float64 (G's 1/6, 1/12, 1/24 are inexact in binary) and rounded once,
// packed for the GEMM: (α², panels_of(K), C, kPanel) float32 (pack_b); for the bfloat16 GEMM (bf16_gemm)
// (α², panels_of(K), ceil(C/2), kPanel, 2) bfloat16 (pack_b_bf16). Nothing is cached here: a caller that runs one
// weight many times (drn.fused) keeps the result (winograd_weight) and passes it back as `prepared`.
template <int M>
Tensor transformed_weight(const Tensor& weight) {
  constexpr int A = Transform<M>::kAlpha;
  const int64_t K = weight.size(0), C = weight.size(1);
  const Tensor g = weight.to(at::kFloat).permute({1, 2, 3, 0}).contiguous();  // (C, 3, 3, K): K innermost
  Tensor u = at::empty({A * A, C, K}, weight.options().dtype(at::kFloat));
  double coef[A * A][9];  // U[ξ = (i, j)] = Σ_ab G[i][a] G[j][b] g[a][b]
  for (int i = 0; i < A; ++i) {
    for (int j = 0; j < A; ++j) {
      for (int ab = 0; ab < 9; ++ab) coef[i * A + j][ab] = Transform<M>::G[i][ab / 3] * Transform<M>::G[j][ab % 3];
    }
  }
  const float* gp = g.const_data_ptr<float>();
  float* up = u.data_ptr<float>();
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* gc = gp + c * 9 * K;
      for (int xi = 0; xi < A * A; ++xi) {
        const double* w = coef[xi];
        float* dst = up + (xi * C + c) * K;
        for (int64_t k = 0; k < K; ++k) {  // float64 sums, one rounding
          double acc = 0.0;
#pragma GCC unroll 9
          for (int ab = 0; ab < 9; ++ab) acc += w[ab] * static_cast<double>(gc[ab * K + k]);
          dst[k] = static_cast<float>(acc);
        }
      }
    }
  });
  return pack_batch(up, A * A, C, K, bf16_gemm(weight.scalar_type()), weight.options());
}

// `prepared` when it is this weight's U for tile size M (the shape says so; the values are the caller's word),
// else U computed now.
template <int M>
Tensor weight_for_tile(const Tensor& weight, const std::optional<Tensor>& prepared) {
  constexpr int A = Transform<M>::kAlpha;
  const bool bf16 = bf16_gemm(weight.scalar_type());
  if (prepared.has_value() && prepared->defined() && !prepared->is_mkldnn() &&
      prepared->scalar_type() == (bf16 ? at::kBFloat16 : at::kFloat) && prepared->device() == weight.device() &&
      prepared->sizes() == at::IntArrayRef(packed_shape(A * A, weight.size(1), weight.size(0), bf16)) &&
      prepared->is_contiguous()) {
    return *prepared;
  }
  return transformed_weight<M>(weight);
}

template <int M, class E, class VT>
Tensor run(const Tensor& x, const Tensor& weight, const Tensor& bias, IntArrayRef padding, IntArrayRef dilation,
           const std::optional<Tensor>& residual, bool relu, const std::optional<Tensor>& into,
           const std::optional<Tensor>& prepared) {
  constexpr int A = Transform<M>::kAlpha;
  const Tensor xin = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = xin.size(0), C = xin.size(1), H = xin.size(2), W = xin.size(3), K = weight.size(0);
  const int64_t ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  const int64_t P = conv_output_size(H, 3, 1, ph, dh), Q = conv_output_size(W, 3, 1, pw, dw);
  Tensor out;  // (N, P, Q, K) contiguous
  if (into.has_value()) {
    TORCH_CHECK(into->sizes() == at::IntArrayRef({N, K, P, Q}) && into->scalar_type() == x.scalar_type() &&
                    into->is_contiguous(at::MemoryFormat::ChannelsLast),
                "conv_bn_act (cpu, winograd): the output buffer must be a ", x.scalar_type(), " channels_last (", N,
                ", ", K,
                ", ", P, ", ", Q, ") tensor, got ", into->sizes(), " ", into->scalar_type());
    out = into->permute({0, 2, 3, 1});
  } else {
    out = at::empty({N, P, Q, K}, xin.options());
    if (cpu_options().poison.load(std::memory_order_relaxed)) {
      out.fill_(std::numeric_limits<float>::quiet_NaN());  // tests: an output element never written shows up
    }
  }
  if (out.numel() == 0) return out.permute({0, 3, 1, 2});

  const Tensor u = weight_for_tile<M>(weight, prepared);
  const Tensor b = bias.to(at::kFloat).contiguous();
  Tensor res;
  if (residual.has_value()) res = residual->contiguous(at::MemoryFormat::ChannelsLast);
  const AxisTiles ty = tile_origins(P, dh, M), tx = tile_origins(Q, dw, M);
  const TileGrid grid(ty, tx, N);
  const int64_t total = grid.total(N);
  // chunks of whole GEMM register blocks (a 113-tile chunk left a 1-row block: ~1% of a float32 forward)
  constexpr bool bf16 = std::is_same_v<VT, c10::BFloat16>;  // the bfloat16 GEMM (bf16_gemm)
  const int64_t block = gemm_block_rows(bf16);
  const int64_t fit = kWorkspaceFloats / (A * A * std::max(C, K));
  const int64_t chunk = std::clamp<int64_t>(fit > block ? fit / block * block : fit, 1, total);

  // V rows padded (gemm.h: padded_row); bf16 pairs channels, so an odd C gets a zero column (never written)
  const int64_t pairs = (C + 1) / 2, ldv = padded_row(bf16 ? 2 * pairs : C);
  const auto vopt = xin.options().dtype(bf16 ? at::kBFloat16 : at::kFloat);
  Tensor vbuf = bf16 && C % 2 != 0 ? at::zeros({A * A, chunk, ldv}, vopt) : at::empty({A * A, chunk, ldv}, vopt);
  const int64_t panels = panels_of(K), kp = panels * kPanel;
  Tensor mbuf = at::empty({A * A, chunk, kp}, xin.options().dtype(at::kFloat));
  // the bfloat16 GEMM runs where the CPU has AVX512-BF16 only (conv_winograd chose VT by bf16_gemm)
  if constexpr (bf16) TORCH_CHECK(gemm_bf16_supported(), "conv_bn_act (cpu, winograd): bfloat16 needs AVX512-BF16");
  const Tensor zeros = at::zeros({C}, xin.options());
  const InArgs<E, VT> in{xin.const_data_ptr<E>(), zeros.const_data_ptr<E>(), H, W, C, ph, pw, dh, dw, grid,
                         vbuf.data_ptr<VT>(), chunk * ldv, ldv};
  const Isa isa = cpu_isa();
  for (int64_t t0 = 0; t0 < total; t0 += chunk) {
    const int64_t tc = std::min(chunk, total - t0);
    parallel_even(tc, kTileRun, [&](int64_t begin, int64_t end) {
      in_tiles_on<M, E, VT>(isa, in, t0, begin, end);
    });
    RowRange rows[A * A];
    for (int xi = 0; xi < A * A; ++xi) rows[xi] = grid.needed_rows(xi / A, xi % A, A, N, t0, tc);
    if constexpr (bf16) {
      gemm_packed_bf16(A * A, tc, pairs, panels, vbuf.const_data_ptr<VT>(), ldv, chunk * ldv,
                       u.const_data_ptr<VT>(), panels * pairs * 2 * kPanel, mbuf.data_ptr<float>(), kp, chunk * kp,
                       rows);
    } else {
      gemm_packed(A * A, tc, C, panels, vbuf.const_data_ptr<VT>(), ldv, chunk * ldv, u.const_data_ptr<VT>(),
                  panels * C * kPanel, mbuf.data_ptr<float>(), kp, chunk * kp, rows);
    }
    const OutArgs<E> o{mbuf.const_data_ptr<float>(), chunk * kp, kp, K, b.const_data_ptr<float>(),
                       res.defined() ? res.const_data_ptr<E>() : nullptr, out.data_ptr<E>(), P, Q, dh, dw, grid,
                       relu};
    parallel_even(tc, kTileRun, [&](int64_t begin, int64_t end) {
      out_tiles_on<M, E>(isa, o, t0, begin, end);
    });
  }
  return out.permute({0, 3, 1, 2});
}

}  // namespace

bool winograd_computes(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  const auto dt = x.scalar_type();
  if (weight.scalar_type() != dt) return false;
  if (dt != at::kFloat && dt != at::kBFloat16) return false;
  if (weight.dim() != 4 || weight.size(2) != 3 || weight.size(3) != 3 || x.size(1) != weight.size(1)) return false;
  return stride[0] == 1 && stride[1] == 1;
}

bool winograd_applicable(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  // auto: float32, and bfloat16 where it computes in float32 (no bfloat16 GEMM) — a bfloat16 GEMM's input stays on
  // oneDNN, which has AMX kernels on the Intel CPUs that have AMX; a fused model's layers measure both
  // (winograd_tiles)
  return !winograd_tiles(x, weight, stride).empty() &&
         (conv_mode() == ConvMode::kWinograd || !bf16_gemm(x.scalar_type()));
}

std::vector<int64_t> winograd_tiles(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  const ConvMode mode = conv_mode();
  if (mode == ConvMode::kDirect || mode == ConvMode::kAten || !winograd_computes(x, weight, stride)) return {};
  // auto: only where both channel counts are at least 64 (below that oneDNN's direct convolution is as fast)
  if (mode == ConvMode::kAuto && std::min(weight.size(0), weight.size(1)) < 64) return {};
  if (bf16_gemm(x.scalar_type())) return {2};
  return {4, 2};
}

int winograd_tile_of(const Tensor& weight, const std::optional<Tensor>& prepared) {
  if (!prepared.has_value() || !prepared->defined() || prepared->is_mkldnn() || weight.dim() != 4 ||
      prepared->dim() < 1) {
    return 0;
  }
  const bool bf16 = bf16_gemm(weight.scalar_type());
  if (prepared->scalar_type() != (bf16 ? at::kBFloat16 : at::kFloat)) return 0;
  for (const int tile : {4, 2}) {
    const int64_t alpha = tile + 2;
    if (prepared->sizes() == at::IntArrayRef(packed_shape(alpha * alpha, weight.size(1), weight.size(0),
                                                                  bf16))) {
      return tile;
    }
  }
  return 0;
}

Tensor conv_winograd(const Tensor& x, const Tensor& weight, const Tensor& bias, IntArrayRef padding,
                     IntArrayRef dilation, const std::optional<Tensor>& residual, bool relu,
                     const std::optional<Tensor>& out, const std::optional<Tensor>& prepared) {
  // the caller's choice of tile, made by measurement
  const bool four = resolve_tile(x.scalar_type(), winograd_tile_of(weight, prepared)) == 4;
  using BF16 = c10::BFloat16;
  if (bf16_gemm(x.scalar_type())) {
    return four ? run<4, BF16, BF16>(x, weight, bias, padding, dilation, residual, relu, out, prepared)
                : run<2, BF16, BF16>(x, weight, bias, padding, dilation, residual, relu, out, prepared);
  }
  if (x.scalar_type() == at::kBFloat16) {  // bfloat16 storage, float32 V, U and GEMM
    return four ? run<4, BF16, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared)
                : run<2, BF16, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared);
  }
  return four ? run<4, float, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared)
              : run<2, float, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared);
}

Tensor winograd_weight(const Tensor& weight, int64_t tile) {
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 &&
                        (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16) &&
                        weight.device().is_cpu(),
                    "winograd_weight: weight must be a float32 or bfloat16 (K, C, 3, 3) CPU tensor, got ",
                    weight.sizes(), " ", weight.scalar_type());
  TORCH_CHECK_VALUE(tile == 0 || tile == 2 || tile == 4, "winograd_weight: tile must be 2, 4 or 0 (the "
                    "DRN_WINOGRAD_TILE setting), got ", tile);
  TORCH_CHECK_VALUE(!(tile == 4 && bf16_gemm(weight.scalar_type())), "winograd_weight: tile 4 is not "
                    "offered in bfloat16 on this CPU (its bfloat16 GEMM: F(4x4) loses too much accuracy there, ~15x "
                    "torch's own bfloat16 error); use tile 2");
  return resolve_tile(weight.scalar_type(), static_cast<int>(tile)) == 4 ? transformed_weight<4>(weight)
                                                                          : transformed_weight<2>(weight);
}

}  // namespace drn::cpu
