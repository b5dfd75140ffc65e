// Output size of a convolution along one axis: the C++ twin of drn_kernels._checks.conv_output_size (the inputs
// are checked there first, so the numerator is never negative and C++'s division agrees with Python's //).
#pragma once

#include <cstdint>

namespace drn {

constexpr int64_t conv_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  return (size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

}  // namespace drn
