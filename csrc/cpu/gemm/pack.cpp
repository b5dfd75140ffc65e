// Packing b for the GEMM (gemm.h): column panels of kPanel columns, float32 or bfloat16 pairs, zero-padded, so the
// register blocks (microkernel.h) read b as one sequential stream without edge cases.
#include "cpu/gemm/gemm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace drn::cpu {

void pack_b(const float* src, int64_t rows, int64_t n, int64_t ld, float* dst) {
  const int64_t panels = panels_of(n);
  for (int64_t q = 0; q < panels; ++q) {
    const int64_t j0 = q * kPanel, width = std::min(kPanel, n - j0);
    float* out = dst + q * rows * kPanel;
    for (int64_t p = 0; p < rows; ++p) {
      std::copy(src + p * ld + j0, src + p * ld + j0 + width, out + p * kPanel);
      std::fill(out + p * kPanel + width, out + (p + 1) * kPanel, 0.f);
    }
  }
}

void pack_b_bf16(const float* src, int64_t rows, int64_t n, int64_t ld, c10::BFloat16* dst) {
  const int64_t panels = panels_of(n), pairs = (rows + 1) / 2;
  for (int64_t q = 0; q < panels; ++q) {
    c10::BFloat16* out = dst + q * pairs * 2 * kPanel;
    for (int64_t p = 0; p < pairs; ++p) {
      for (int64_t j = 0; j < kPanel; ++j) {
        for (int64_t e = 0; e < 2; ++e) {
          const int64_t row = 2 * p + e, col = q * kPanel + j;
          out[(p * kPanel + j) * 2 + e] =
              row < rows && col < n ? c10::BFloat16(src[row * ld + col]) : c10::BFloat16(0.f);
        }
      }
    }
  }
}

std::vector<int64_t> packed_shape(int64_t batch, int64_t k, int64_t n, bool bf16) {
  return bf16 ? std::vector<int64_t>{batch, panels_of(n), (k + 1) / 2, kPanel, 2}
              : std::vector<int64_t>{batch, panels_of(n), k, kPanel};
}

at::Tensor pack_batch(const float* src, int64_t batch, int64_t k, int64_t n, bool bf16,
                      const at::TensorOptions& options) {
  at::Tensor out = at::empty(packed_shape(batch, k, n, bf16), options.dtype(bf16 ? at::kBFloat16 : at::kFloat));
  const int64_t per = out.numel() / std::max<int64_t>(batch, 1);
  at::parallel_for(0, batch, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (bf16) {
        pack_b_bf16(src + t * k * n, k, n, n, out.data_ptr<c10::BFloat16>() + t * per);
      } else {
        pack_b(src + t * k * n, k, n, n, out.data_ptr<float>() + t * per);
      }
    }
  });
  return out;
}

}  // namespace drn::cpu
