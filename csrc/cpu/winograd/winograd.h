// drn::conv_bn_act_native on CPU, Winograd F(m×m, 3×3) path for float32 and bfloat16 3×3 stride-1 convolutions
// (dilated or not): the convolutions that dominate every DRN (levels 5-8 at 1/8 resolution). See
// winograd.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace drn::cpu {

// Whether conv_winograd takes this convolution (the op-level rule; drn.fused's layers choose by measurement):
// DRN_CPU_CONV="auto" (default): float32, and bfloat16 where its GEMM is float32 (no AVX512-BF16), where
// winograd_tiles offers a tile; "winograd": wherever it offers one (every conv winograd_computes; tests), "direct"
// or "aten": none.
bool winograd_applicable(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride);

// Whether conv_winograd can compute this convolution at all (float32 or bfloat16; 3×3, stride 1, one group),
// whatever the settings say: the test of a caller that chose Winograd by measurement (drn_kernels.prepared).
// bfloat16 computes its GEMM in bfloat16 where the CPU has AVX512-BF16 and DRN_CPU_ISA allows AVX-512, in float32
// elsewhere (bfloat16 storage only).
bool winograd_computes(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride);

// The Winograd tiles to consider for this call under DRN_CPU_CONV — empty when it cannot compute it, under
// "direct"/"aten", and under "auto" when either channel count is below 64: F(4×4) and F(2×2); with the bfloat16
// GEMM F(2×2) only — bfloat16 V and U (the GEMM's operands, rounded to 8 bits after transforms whose factors
// reach 25 in F(4×4)) put F(4×4)'s error at ~15× torch's own bfloat16 convolution error, F(2×2)'s at 1.4–2.1×
// (measured on 64-512 channel DRN layers). drn::cpu_winograd_tiles; the algorithm search's candidates.
std::vector<int64_t> winograd_tiles(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride);

// The tile side (2 or 4) of `prepared` when it is a Winograd form of `weight` ((α², panels_of(K), C, kPanel),
// α = tile + 2: see winograd_weight), else 0.
int winograd_tile_of(const at::Tensor& weight, const std::optional<at::Tensor>& prepared);

// y = relu?(conv2d(x, weight, stride=1, padding, dilation) + bias + residual?) as an (N,K,P,Q) channels_last
// tensor of x's dtype. x: (N,C,H,W) float32 or bfloat16, any strides; weight (K,C,3,3); bias (K,); residual
// (N,K,P,Q) any strides.
// out: where to write y, an (N,K,P,Q) channels_last-contiguous tensor of x's dtype, which may be the residual itself
// (each element is read and then written by the same thread); a new tensor when absent.
// prepared: winograd_weight(weight, tile), made by a caller that runs this weight many times; its shape gives the
// tile size (F(4×4,3×3) or F(2×2,3×3)); when absent, the current tile size (DRN_WINOGRAD_TILE) with the transform
// computed per call.
at::Tensor conv_winograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         at::IntArrayRef padding, at::IntArrayRef dilation, const std::optional<at::Tensor>& residual,
                         bool relu, const std::optional<at::Tensor>& out = std::nullopt,
                         const std::optional<at::Tensor>& prepared = std::nullopt);

// The transformed weight U = G g Gᵀ for output tile side `tile` (2 or 4; 0: the current DRN_WINOGRAD_TILE, and 2
// for the bfloat16 GEMM), α = tile + 2, each point's (C × K) matrix packed for the GEMM (gemm.h): float32
// (α², panels_of(K), C, kPanel), for the bfloat16 GEMM bfloat16 (α², panels_of(K), ceil(C/2), kPanel, 2).
at::Tensor winograd_weight(const at::Tensor& weight, int64_t tile = 0);

}  // namespace drn::cpu
