// drn_testing::gemm_pack_b, drn_testing::gemm_packed: the cpu backend's own GEMM (csrc/cpu/gemm/gemm.cpp) as ops, for
// its tests (tests/test_cpu_gemm.py, test_cpu_parallel.py) and its benchmark (benchmarks/test_bench_cpu_gemm.py
// measures the rate against drn::cpu_fma_peak). Test library only (drn_kernels.build.load_testing_library()).
#include "cpu/gemm/gemm.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <vector>

namespace drn::cpu {
namespace {

// gemm_pack_b(b) for a (B, K, N) float32 tensor: (B, panels_of(N), K, kPanel); bfloat16: (B, panels_of(N),
// ceil(K/2), kPanel, 2) (packed_shape).
at::Tensor gemm_pack_b(const at::Tensor& b) {
  TORCH_CHECK_VALUE(b.dim() == 3 && (b.scalar_type() == at::kFloat || b.scalar_type() == at::kBFloat16) &&
                        b.device().is_cpu(),
                    "gemm_pack_b: b must be a (B, K, N) float32 or bfloat16 CPU tensor, got ", b.sizes(), " ",
                    b.scalar_type(), " on ", b.device());
  const at::Tensor src = b.to(at::kFloat).contiguous();  // bf16 -> float32 is exact, and back again
  return pack_batch(src.const_data_ptr<float>(), b.size(0), b.size(1), b.size(2),
                    b.scalar_type() == at::kBFloat16, b.options());
}

// gemm_packed(a, b_packed, n): (B, M, n) float32 = a (B, M, K) · b, b given packed (gemm_pack_b of a (B, K, n) of
// a's dtype). float32 a: float32 c; bfloat16 a (needs AVX512-BF16): c accumulated in float32, returned as float32.
at::Tensor gemm_packed_op(const at::Tensor& a, const at::Tensor& b_packed, int64_t n) {
  TORCH_CHECK_VALUE(a.dim() == 3 && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kBFloat16) &&
                        a.device().is_cpu(),
                    "gemm_packed: a must be a (B, M, K) float32 or bfloat16 CPU tensor, got ", a.sizes(), " ",
                    a.scalar_type());
  TORCH_CHECK_VALUE(n >= 0, "gemm_packed: n must be >= 0, got ", n);
  const bool bf16 = a.scalar_type() == at::kBFloat16;
  const int64_t batch = a.size(0), m = a.size(1), k = a.size(2), panels = panels_of(n);
  const std::vector<int64_t> want = packed_shape(batch, k, n, bf16);
  TORCH_CHECK_VALUE(b_packed.scalar_type() == a.scalar_type() && b_packed.device().is_cpu() &&
                        b_packed.sizes() == at::IntArrayRef(want),
                    "gemm_packed: b_packed must be gemm_pack_b of a (", batch, ", ", k, ", ", n, ") ",
                    a.scalar_type(), " CPU tensor, i.e. of shape ", at::IntArrayRef(want), ", got ",
                    b_packed.sizes(), " ", b_packed.scalar_type());
  at::Tensor c = at::empty({batch, m, panels * kPanel}, a.options().dtype(at::kFloat));
  const at::Tensor bc = b_packed.contiguous();
  if (bf16) {
    TORCH_CHECK(gemm_bf16_supported(), "gemm_packed: bfloat16 needs AVX512-BF16 (this CPU lacks it, or "
                "DRN_CPU_ISA asks for less than avx512)");
    // rows of an even length (a zero column when k is odd: the packed b's last pair holds a zero row there)
    const int64_t pairs = (k + 1) / 2;
    at::Tensor ac = at::zeros({batch, m, 2 * pairs}, a.options());
    ac.narrow(2, 0, k).copy_(a);
    gemm_packed_bf16(batch, m, pairs, panels, ac.const_data_ptr<c10::BFloat16>(), 2 * pairs, m * 2 * pairs,
                     bc.const_data_ptr<c10::BFloat16>(), panels * pairs * 2 * kPanel, c.data_ptr<float>(),
                     panels * kPanel, m * panels * kPanel);
  } else {
    // a's own strides when its rows are unit-stride (benchmarks pass padded rows, as the Winograd chunks have)
    const at::Tensor ac = a.stride(2) == 1 ? a : a.contiguous();
    gemm_packed(batch, m, k, panels, ac.const_data_ptr<float>(), ac.stride(1), ac.stride(0),
                bc.const_data_ptr<float>(), panels * k * kPanel, c.data_ptr<float>(), panels * kPanel,
                m * panels * kPanel);
  }
  return c.narrow(2, 0, n);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(drn_testing, m) {
  m.def("gemm_pack_b(Tensor b) -> Tensor", &gemm_pack_b);
  m.def("gemm_packed(Tensor a, Tensor b_packed, int n) -> Tensor", &gemm_packed_op);
}

}  // namespace drn::cpu
