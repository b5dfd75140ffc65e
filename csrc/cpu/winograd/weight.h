// The Winograd weight transform U = G g Gᵀ, packed for the GEMM (weight.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace drn::cpu::winograd {

// U = G g Gᵀ of a (K, C, 3, 3) float32 or bfloat16 weight for output tile side `tile` (2 or 4), α = tile + 2, each
// point's (C × K) matrix packed for the GEMM: float32 (α², panels_of(K), C, kPanel) (gemm.h: pack_b), or for the
// bfloat16 GEMM (bf16) bfloat16 (α², panels_of(K), ceil(C/2), kPanel, 2) (pack_b_bf16).
at::Tensor transformed_weight(const at::Tensor& weight, int tile, bool bf16);

}  // namespace drn::cpu::winograd
