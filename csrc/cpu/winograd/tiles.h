// The Winograd convolution's tiles (winograd.cpp drives them): where the tiles lie (tile_origins, TileGrid) and the
// per-tile transforms of a chunk of tiles — input d → V = Bᵀ d B, and output M → y = Aᵀ M A + bias (+ residual),
// ReLU — vectorised over 16 channels (NHWC: channels innermost), each compiled for AVX-512, AVX2 + FMA and the
// build's baseline ISA (SSE2 on x86-64) from one source (simd.h). tiles.cpp holds the transforms.
#pragma once

#include "cpu/cpu_options.h"
#include "cpu/gemm/gemm.h"

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace drn::cpu::winograd {

// Tile origins along one output axis of `size` pixels with dilation `dil`, m outputs per tile: phase by phase, the
// full tiles of every phase first, then the partial ones (the last of a phase whose length is not a multiple of m).
struct AxisTiles {
  std::vector<int64_t> origins;
  int64_t full;                      // origins[0, full): full tiles; origins[full, end): partial ones
};

AxisTiles tile_origins(int64_t size, int64_t dil, int m);

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

// Tiles [begin, end) of the chunk starting at global tile t0, on `isa` (cpu_isa(); the best the CPU has, or the
// one DRN_CPU_ISA=baseline|avx2|avx512 asks for): in_tiles_on: x → V (for the bfloat16 GEMM, VT = bfloat16: the
// AVX512-BF16 build, which rounds V in one instruction); out_tiles_on: M → the output. M: the tile side (2 or 4).
template <int M, class E, class VT>
void in_tiles_on(Isa isa, const InArgs<E, VT>& a, int64_t t0, int64_t begin, int64_t end);
template <int M, class E>
void out_tiles_on(Isa isa, const OutArgs<E>& a, int64_t t0, int64_t begin, int64_t end);

}  // namespace drn::cpu::winograd
