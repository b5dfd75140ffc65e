// The Winograd weight transform (weight.h).
#include "cpu/winograd/weight.h"

#include "cpu/gemm/gemm.h"
#include "cpu/winograd/transforms.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cstdint>

namespace drn::cpu::winograd {
namespace {

using at::Tensor;

// U = G g Gᵀ for every (k, c), summed in float64 (G's 1/6, 1/12, 1/24 are inexact in binary) and rounded once,
// then packed (pack_batch). Nothing is cached here: a caller that runs one
// weight many times (drn.fused) keeps the result (winograd_weight) and passes it back as `prepared`.
template <int M>
Tensor transformed_weight_for(const Tensor& weight, bool bf16) {
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
  return pack_batch(up, A * A, C, K, bf16, weight.options());
}

}  // namespace

Tensor transformed_weight(const Tensor& weight, int tile, bool bf16) {
  return tile == 4 ? transformed_weight_for<4>(weight, bf16) : transformed_weight_for<2>(weight, bf16);
}

}  // namespace drn::cpu::winograd
