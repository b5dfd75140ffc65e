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
// Threads: the transforms split the chunk's tiles, the GEMMs the (ξ, column panel) pairs, with at::parallel_for.
// bfloat16 (F(2×2) only, AVX512-BF16): x, the residual and the output in bf16; the transforms in float32; V and U
//   rounded to bf16 (the GEMM's operands, gemm.h: gemm_packed_bf16), M in float32. The two extra roundings put the
//   error at 1.4–2.1× torch's own bf16 convolution on DRN layers; in F(4×4) (factors up to 25) it was ~15×, so
//   that tile is refused (winograd_tiles, winograd_weight).
#include "cpu/conv_bn_act_winograd.h"
#include "cpu/cpu_options.h"
#include "cpu/gemm.h"

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

int tile_size() { return cpu_options().winograd_tile.load(std::memory_order_relaxed) == 2 ? 2 : 4; }

// The tile a call runs: the one asked for (a prepared form's, or 0: DRN_WINOGRAD_TILE), except that bfloat16 runs
// F(2×2) only — see winograd_tiles.
int resolve_tile(at::ScalarType dt, int asked) {
  const int tile = asked != 0 ? asked : tile_size();
  return dt == at::kBFloat16 ? 2 : tile;
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
// the M rows left unwritten (they would only reach outputs that are never stored). With DRN's 28×28 maps at dilation 4 (7 outputs
// per phase) that skips 12% of F(2×2)'s products and 16% of F(4×4)'s.
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

// E: the element type of x, V, the residual and the output (float32, or bfloat16 for the bf16 path).
template <class E>
struct InArgs {
  const E* x;                        // NHWC input
  int64_t H, W, C, ph, pw, dh, dw;
  TileGrid grid;
  E* v;                              // V chunk: tile i's row of plane ξ at v + ξ·plane + i·row
  int64_t plane, row;                // row = padded_row(C)
};

// Tiles [begin, end) of the chunk starting at global tile t0 → V.
template <int M, class E>
[[gnu::always_inline]] inline void in_tiles(const InArgs<E>& a, int64_t t0, int64_t begin, int64_t end) {
  using T = Transform<M>;
  constexpr int A = T::kAlpha;
  for (int64_t i = begin; i < end; ++i) {
    const auto [n, y0, x0] = a.grid.at(t0 + i);
    const E* img = a.x + n * a.H * a.W * a.C;
    const E* src[A][A];
    for (int u = 0; u < A; ++u) {
      const int64_t h = y0 - a.ph + a.dh * u;
      for (int w_ = 0; w_ < A; ++w_) {
        const int64_t w = x0 - a.pw + a.dw * w_;
        src[u][w_] = (h >= 0 && h < a.H && w >= 0 && w < a.W) ? img + (h * a.W + w) * a.C : nullptr;
      }
    }
    for (int64_t c0 = 0; c0 < a.C; c0 += kLanes) {
      const int64_t nc = std::min<int64_t>(kLanes, a.C - c0);
      vec d[A][A], t1[A][A], v[A][A];
      for (int u = 0; u < A; ++u) {
        for (int w_ = 0; w_ < A; ++w_) {
          d[u][w_] = src[u][w_] == nullptr ? vec{} : load_n(src[u][w_] + c0, nc);
        }
      }
      for (int w_ = 0; w_ < A; ++w_) apply<A, A, T::BT>(&d[0][w_], A, &t1[0][w_], A);   // Bᵀ d
      for (int u = 0; u < A; ++u) apply<A, A, T::BT>(&t1[u][0], 1, &v[u][0], 1);        // (Bᵀ d) B
      for (int u = 0; u < A; ++u) {
        for (int w_ = 0; w_ < A; ++w_) {
          store_n(a.v + (u * A + w_) * a.plane + i * a.row + c0, v[u][w_], nc);
        }
      }
    }
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

// Tiles [begin, end) of the chunk starting at global tile t0: M → Aᵀ M A + bias (+ residual), ReLU → out.
template <int M, class E>
[[gnu::always_inline]] inline void out_tiles(const OutArgs<E>& a, int64_t t0, int64_t begin, int64_t end) {
  using T = Transform<M>;
  constexpr int A = T::kAlpha;
  for (int64_t i = begin; i < end; ++i) {
    const auto [n, y0, x0] = a.grid.at(t0 + i);
    const int64_t image = n * a.P * a.Q * a.K;
    // a partial tile's M in the last row (column) was not computed (TileGrid): zeros, so no stale value is read
    const bool row_cut = y0 + a.dh * (M - 1) >= a.P, col_cut = x0 + a.dw * (M - 1) >= a.Q;
    for (int64_t k0 = 0; k0 < a.K; k0 += kLanes) {
      const int64_t nk = std::min<int64_t>(kLanes, a.K - k0);
      vec mm[A][A], s[M][A], y[M][M];
      for (int u = 0; u < A; ++u) {
        for (int w_ = 0; w_ < A; ++w_) {
          const bool skipped = (u == A - 1 && row_cut) || (w_ == A - 1 && col_cut);
          mm[u][w_] = skipped ? vec{} : load_n(a.m + (u * A + w_) * a.plane + i * a.row + k0, nk);
        }
      }
      for (int w_ = 0; w_ < A; ++w_) apply<M, A, T::AT>(&mm[0][w_], A, &s[0][w_], A);  // Aᵀ M
      for (int u = 0; u < M; ++u) apply<M, A, T::AT>(&s[u][0], 1, &y[u][0], 1);       // (Aᵀ M) A
      const vec bias = load_n(a.bias + k0, nk);
      for (int u = 0; u < M; ++u) {
        const int64_t p = y0 + a.dh * u;
        if (p >= a.P) continue;
        for (int w_ = 0; w_ < M; ++w_) {
          const int64_t q = x0 + a.dw * w_;
          if (q >= a.Q) continue;
          const int64_t at = image + (p * a.Q + q) * a.K + k0;
          vec out = y[u][w_] + bias;
          if (a.res != nullptr) out += load_n(a.res + at, nk);
          if (a.relu) out = out < 0.f ? vec{} : out;  // torch.relu: NaN stays NaN
          store_n(a.out + at, out, nk);
        }
      }
    }
  }
}

// The transforms compiled three times: AVX-512, AVX2 + FMA, and the build's baseline ISA (SSE2 on x86-64);
// the best the CPU has runs, or the one DRN_CPU_ISA=baseline|avx2|avx512 asks for (tests; capped by the CPU).
#define DRN_TILES(isa, target)                                                                          \
  template <int M, class E>                                                                             \
  target void in_tiles_##isa(const InArgs<E>& a, int64_t t0, int64_t b, int64_t e) {                    \
    in_tiles<M>(a, t0, b, e);                                                                           \
  }                                                                                                     \
  template <int M, class E>                                                                             \
  target void out_tiles_##isa(const OutArgs<E>& a, int64_t t0, int64_t b, int64_t e) {                  \
    out_tiles<M>(a, t0, b, e);                                                                          \
  }
DRN_TILES(avx512, [[gnu::target("avx512f,avx512dq,avx512vl,avx2,fma")]])
DRN_TILES(avx2, [[gnu::target("avx2,fma")]])
DRN_TILES(baseline, )
#undef DRN_TILES

template <int M, class E>
void in_tiles_on(Isa isa, const InArgs<E>& a, int64_t t0, int64_t b, int64_t e) {
  isa == Isa::kAvx512 ? in_tiles_avx512<M, E>(a, t0, b, e)
  : isa == Isa::kAvx2 ? in_tiles_avx2<M, E>(a, t0, b, e)
                      : in_tiles_baseline<M, E>(a, t0, b, e);
}

template <int M, class E>
void out_tiles_on(Isa isa, const OutArgs<E>& a, int64_t t0, int64_t b, int64_t e) {
  isa == Isa::kAvx512 ? out_tiles_avx512<M, E>(a, t0, b, e)
  : isa == Isa::kAvx2 ? out_tiles_avx2<M, E>(a, t0, b, e)
                      : out_tiles_baseline<M, E>(a, t0, b, e);
}

// U = G g Gᵀ for every (k, c), summed in float64 (G's 1/6, 1/12, 1/24 are inexact in binary) and rounded once,
// packed for the GEMM: float32 weight → (α², panels_of(K), C, kPanel) float32 (pack_b); bfloat16 weight →
// (α², panels_of(K), ceil(C/2), kPanel, 2) bfloat16 (pack_b_bf16). Nothing is cached here: a caller that runs one weight many times (drn.fused) keeps the
// result (winograd_weight) and passes it back as `prepared`.
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
  return pack_batch(up, A * A, C, K, weight.scalar_type() == at::kBFloat16, weight.options());
}

// `prepared` when it is this weight's U for tile size M (the shape says so; the values are the caller's word),
// else U computed now.
template <int M>
Tensor weight_for_tile(const Tensor& weight, const std::optional<Tensor>& prepared) {
  constexpr int A = Transform<M>::kAlpha;
  if (prepared.has_value() && prepared->defined() && !prepared->is_mkldnn() &&
      prepared->scalar_type() == weight.scalar_type() && prepared->device() == weight.device() &&
      prepared->sizes() == at::IntArrayRef(packed_shape(A * A, weight.size(1), weight.size(0),
                                                               weight.scalar_type() == at::kBFloat16)) &&
      prepared->is_contiguous()) {
    return *prepared;
  }
  return transformed_weight<M>(weight);
}

template <int M, class E>
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
  const int64_t chunk = std::clamp<int64_t>(kWorkspaceFloats / (A * A * std::max(C, K)), 1, total);

  // V rows padded (gemm.h: padded_row); bf16 pairs channels, so an odd C gets a zero column (never written)
  constexpr bool bf16 = std::is_same_v<E, c10::BFloat16>;
  const int64_t pairs = (C + 1) / 2, ldv = padded_row(bf16 ? 2 * pairs : C);
  Tensor vbuf = bf16 && C % 2 != 0 ? at::zeros({A * A, chunk, ldv}, xin.options())
                                   : at::empty({A * A, chunk, ldv}, xin.options());
  const int64_t panels = panels_of(K), kp = panels * kPanel;
  Tensor mbuf = at::empty({A * A, chunk, kp}, xin.options().dtype(at::kFloat));
  const InArgs<E> in{xin.const_data_ptr<E>(), H, W, C, ph, pw, dh, dw, grid, vbuf.data_ptr<E>(), chunk * ldv, ldv};
  const Isa isa = cpu_isa();
  for (int64_t t0 = 0; t0 < total; t0 += chunk) {
    const int64_t tc = std::min(chunk, total - t0);
    at::parallel_for(0, tc, 1, [&](int64_t begin, int64_t end) {
      in_tiles_on<M, E>(isa, in, t0, begin, end);
    });
    RowRange rows[A * A];
    for (int xi = 0; xi < A * A; ++xi) rows[xi] = grid.needed_rows(xi / A, xi % A, A, N, t0, tc);
    if constexpr (bf16) {
      gemm_packed_bf16(A * A, tc, pairs, panels, vbuf.const_data_ptr<E>(), ldv, chunk * ldv, u.const_data_ptr<E>(),
                       panels * pairs * 2 * kPanel, mbuf.data_ptr<float>(), kp, chunk * kp, rows);
    } else {
      gemm_packed(A * A, tc, C, panels, vbuf.const_data_ptr<E>(), ldv, chunk * ldv, u.const_data_ptr<E>(),
                  panels * C * kPanel, mbuf.data_ptr<float>(), kp, chunk * kp, rows);
    }
    const OutArgs<E> o{mbuf.const_data_ptr<float>(), chunk * kp, kp, K, b.const_data_ptr<float>(),
                       res.defined() ? res.const_data_ptr<E>() : nullptr, out.data_ptr<E>(), P, Q, dh, dw, grid,
                       relu};
    at::parallel_for(0, tc, 1, [&](int64_t begin, int64_t end) {
      out_tiles_on<M, E>(isa, o, t0, begin, end);
    });
  }
  return out.permute({0, 3, 1, 2});
}

}  // namespace

bool winograd_computes(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  const auto dt = x.scalar_type();
  if (weight.scalar_type() != dt) return false;
  if (dt != at::kFloat && !(dt == at::kBFloat16 && gemm_bf16_supported())) return false;
  if (weight.dim() != 4 || weight.size(2) != 3 || weight.size(3) != 3 || x.size(1) != weight.size(1)) return false;
  return stride[0] == 1 && stride[1] == 1;
}

bool winograd_applicable(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  // auto: float32 only — bfloat16 stays on oneDNN, which has AMX kernels on the Intel CPUs that have AMX; a fused
  // model's layers measure both (winograd_tiles)
  return !winograd_tiles(x, weight, stride).empty() &&
         (conv_mode() == ConvMode::kWinograd || x.scalar_type() == at::kFloat);
}

std::vector<int64_t> winograd_tiles(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  const ConvMode mode = conv_mode();
  if (mode == ConvMode::kDirect || mode == ConvMode::kAten || !winograd_computes(x, weight, stride)) return {};
  // auto: only where both channel counts are at least 64 (below that oneDNN's direct convolution is as fast)
  if (mode == ConvMode::kAuto && std::min(weight.size(0), weight.size(1)) < 64) return {};
  if (x.scalar_type() == at::kBFloat16) return {2};
  return {4, 2};
}

int winograd_tile_of(const Tensor& weight, const std::optional<Tensor>& prepared) {
  if (!prepared.has_value() || !prepared->defined() || prepared->is_mkldnn() || weight.dim() != 4 ||
      prepared->dim() < 1 || prepared->scalar_type() != weight.scalar_type()) {
    return 0;
  }
  const bool bf16 = weight.scalar_type() == at::kBFloat16;
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
  if (x.scalar_type() == at::kBFloat16) {
    return four ? run<4, c10::BFloat16>(x, weight, bias, padding, dilation, residual, relu, out, prepared)
                : run<2, c10::BFloat16>(x, weight, bias, padding, dilation, residual, relu, out, prepared);
  }
  return four ? run<4, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared)
              : run<2, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared);
}

Tensor winograd_weight(const Tensor& weight, int64_t tile) {
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 &&
                        (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16) &&
                        weight.device().is_cpu(),
                    "winograd_weight: weight must be a float32 or bfloat16 (K, C, 3, 3) CPU tensor, got ",
                    weight.sizes(), " ", weight.scalar_type());
  TORCH_CHECK_VALUE(tile == 0 || tile == 2 || tile == 4, "winograd_weight: tile must be 2, 4 or 0 (the "
                    "DRN_WINOGRAD_TILE setting), got ", tile);
  TORCH_CHECK_VALUE(!(tile == 4 && weight.scalar_type() == at::kBFloat16), "winograd_weight: tile 4 is not "
                    "offered in bfloat16 (F(4x4) loses too much accuracy there: ~15x torch's own bfloat16 error); "
                    "use tile 2");
  return resolve_tile(weight.scalar_type(), static_cast<int>(tile)) == 4 ? transformed_weight<4>(weight)
                                                                          : transformed_weight<2>(weight);
}

}  // namespace drn::cpu
