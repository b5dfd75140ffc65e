// Guards of the compiled ops' arguments: the C++ twin of the rules in drn_kernels/_checks.py that keep the
// kernels from crashing or wrapping around. The public ops check first (with friendlier messages); these guard
// callers of torch.ops.drn.*_native / *_sim that skip them. The kernels index pixel coordinates with int32, so
// every padded size, dilated kernel extent, stride and box factor must be at most kIndexLimit = 2^31 - 1.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "conv_output_size.h"

namespace drn {

constexpr int64_t kIndexLimit = std::numeric_limits<int32_t>::max();

// x (N, C, H, W), weight (K, C, R, S), bias (K,), residual (N, K, P, Q) or none: torch.conv2d's geometry rules
// plus the int32 coordinate range; the operands' shapes, dtypes and devices agree, so no kernel reads past one.
inline void check_conv_args(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(x.dim() == 4 && weight.dim() == 4, op, ": x and weight must have rank 4, got ", x.sizes(),
                    " and ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), op, ": weight must have shape (K, C=", x.size(1),
                    ", R, S) to match x, got ", weight.sizes());
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == weight.size(0), op, ": bias must have shape (",
                    weight.size(0), ",) to match weight, got ", bias.sizes());
  for (const at::Tensor* t : {&weight, &bias}) {
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, ": weight and bias must have x's dtype ",
                     x.scalar_type(), ", got ", weight.scalar_type(), " and ", bias.scalar_type());
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": weight and bias must be on x's device ", x.device());
  }
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
                    ": stride, padding and dilation must have two values each, got ", stride, ", ", padding, ", ",
                    dilation);
  TORCH_CHECK_VALUE(x.size(2) >= 1 && x.size(3) >= 1, op, ": x must have height and width >= 1, got shape ",
                    x.sizes());
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK_VALUE(stride[d] >= 1 && stride[d] <= kIndexLimit, op, ": stride must be in [1, 2**31-1], got ",
                      stride);
    TORCH_CHECK_VALUE(dilation[d] >= 1 && dilation[d] <= kIndexLimit, op,
                      ": dilation must be in [1, 2**31-1], got ", dilation);
    TORCH_CHECK_VALUE(padding[d] >= 0 && padding[d] <= kIndexLimit, op, ": padding must be in [0, 2**31-1], got ",
                      padding);
    const int64_t size = x.size(2 + d), kernel = weight.size(2 + d);
    TORCH_CHECK_VALUE(size + 2 * padding[d] <= kIndexLimit, op, ": padding ", padding,
                      " makes x's padded size exceed 2**31-1");
    TORCH_CHECK_VALUE(kernel >= 1 && dilation[d] * (kernel - 1) + 1 <= kIndexLimit, op, ": dilation ", dilation,
                      " makes the dilated kernel extent exceed 2**31-1");
    TORCH_CHECK_VALUE(conv_output_size(size, kernel, stride[d], padding[d], dilation[d]) >= 1, op,
                      ": empty kernel window: x ", x.sizes(), " with padding ", padding,
                      " is smaller than the dilated kernel (weight ", weight.sizes(), ", dilation ", dilation, ")");
  }
  if (residual.has_value() && residual->defined()) {
    const int64_t P = conv_output_size(x.size(2), weight.size(2), stride[0], padding[0], dilation[0]);
    const int64_t Q = conv_output_size(x.size(3), weight.size(3), stride[1], padding[1], dilation[1]);
    TORCH_CHECK_VALUE(residual->sizes() == at::IntArrayRef({x.size(0), weight.size(0), P, Q}), op,
                      ": residual must have the output's shape (", x.size(0), ", ", weight.size(0), ", ", P, ", ", Q,
                      "), got ", residual->sizes());
    TORCH_CHECK_TYPE(residual->scalar_type() == x.scalar_type(), op, ": residual must have x's dtype ",
                     x.scalar_type(), ", got ", residual->scalar_type());
    TORCH_CHECK_VALUE(residual->device() == x.device(), op, ": residual must be on x's device ", x.device());
  }
}

// class_head / localize: a non-empty image (as torch.conv2d requires).
inline void check_head_input(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(2) >= 1 && x.size(3) >= 1, op,
                    ": x must be (N, C, H, W) with height and width >= 1, got shape ", x.sizes());
}

inline void check_upsample(const char* op, int64_t upsample) {
  TORCH_CHECK_VALUE(upsample == 1 || upsample == 8, op, ": upsample must be 1 or 8, got ", upsample);
}

// localize's box is (cell index) * stride: stride in [1, 2^31 - 1] keeps that product exact in int64.
inline void check_box_stride(const char* op, int64_t stride) {
  TORCH_CHECK_VALUE(stride >= 1 && stride <= kIndexLimit, op, ": stride must be in [1, 2**31-1], got ", stride);
}

}  // namespace drn
