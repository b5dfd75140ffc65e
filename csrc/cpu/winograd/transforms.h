// The Winograd F(m×m, 3×3) transform matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
// 2016), α = m + 2: Bᵀ (α×α, the input transform V = Bᵀ d B), G (α×3, the weight transform U = G g Gᵀ, in float64:
// its 1/6, 1/12, 1/24 are inexact in binary) and Aᵀ (m×α, the output transform y = Aᵀ M A); and apply, the product
// of one constant matrix with a column of vectors that the tile transforms (tiles.cpp) run twice per tile.
#pragma once

#include "cpu/simd.h"

#include <type_traits>
#include <utility>

namespace drn::cpu::winograd {

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

// The transforms work on 16 channels at a time: one f32x16 (one AVX-512 register, two AVX2 ones).
using vec = simd::f32x16;

// out[i·out_step] = Σ_k Mat[i][k] · in[k·step] with the constant matrix folded in: zeros skipped, ±1 as an add or a
// subtraction, any other factor a multiply-add in k order (S::mul_add: fused on AVX-512 and AVX2, not on the
// baseline). The loops are unrolled in the source (index sequences), so every factor is a constant expression and
// its vector a constant, whatever the compiler's unrolling decides.
template <class S, const auto& Mat, int I, int... K>
[[gnu::always_inline]] inline vec apply_row(const vec* in, int step, std::integer_sequence<int, K...>) {
  vec acc = {};
  const auto term = [&]<int k>(std::integral_constant<int, k>) [[gnu::always_inline]] {
    constexpr float a = Mat[I][k];
    if constexpr (a == 1.f) {
      acc += in[k * step];
    } else if constexpr (a == -1.f) {
      acc -= in[k * step];
    } else if constexpr (a != 0.f) {
      constexpr vec factor = a - vec{};
      acc = S::mul_add(factor, in[k * step], acc);
    }
  };
  (term(std::integral_constant<int, K>{}), ...);
  return acc;
}
template <class S, int Rows, int Cols, const float (&Mat)[Rows][Cols], int... I>
[[gnu::always_inline]] inline void apply_rows(const vec* in, int step, vec* out, int out_step,
                                              std::integer_sequence<int, I...>) {
  ((out[I * out_step] = apply_row<S, Mat, I>(in, step, std::make_integer_sequence<int, Cols>())), ...);
}
template <class S, int Rows, int Cols, const float (&Mat)[Rows][Cols]>
[[gnu::always_inline]] inline void apply(const vec* in, int step, vec* out, int out_step) {
  apply_rows<S, Rows, Cols, Mat>(in, step, out, out_step, std::make_integer_sequence<int, Rows>());
}

}  // namespace drn::cpu::winograd
