// Host (SIMT-simulated) build of the CUDA kernels: the same headers as csrc/cuda/*.cu, compiled by g++ through
// simt.h, registered for CPU tensors as drn::*_sim (backend "cuda-sim"). Slow by design: each CUDA thread is
// an OS thread. Built by drn_kernels/_sim.py.
#include "simt.h"  // must come first: defines __global__, __shared__, threadIdx, ... for the kernel headers

#include <torch/library.h>

#include "../cuda/host_ops.cuh"

namespace {

at::Tensor conv_bn_act_sim(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           const std::optional<at::Tensor>& residual, bool relu) {
  return drn::conv_bn_act_host(x, weight, bias, stride, padding, dilation, residual, relu);
}

std::tuple<at::Tensor, at::Tensor> class_head_sim(const at::Tensor& x, const at::Tensor& weight,
                                                  const at::Tensor& bias, int64_t upsample,
                                                  at::ScalarType label_dtype) {
  return drn::class_head_host(x, weight, bias, upsample, label_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> localize_sim(const at::Tensor& x, const at::Tensor& weight,
                                                                        const at::Tensor& bias, double threshold,
                                                                        int64_t stride) {
  return drn::localize_host(x, weight, bias, threshold, stride);
}

}  // namespace

TORCH_LIBRARY_IMPL(drn, CPU, m) {
  m.impl("conv_bn_act_sim", &conv_bn_act_sim);
  m.impl("class_head_sim", &class_head_sim);
  m.impl("localize_sim", &localize_sim);
}
