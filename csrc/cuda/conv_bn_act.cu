// CUDA registration of drn::conv_bn_act_native: device guard, current stream, launch (csrc/cuda/host_ops.cuh).
// The kernel itself (implicit GEMM on mma.sync, cp.async ring, fused epilogue) is conv_bn_act_kernel.cuh.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "host_ops.cuh"

namespace {

at::Tensor conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            const std::optional<at::Tensor>& residual, bool relu) {
  const c10::cuda::CUDAGuard guard(x.device());
  return drn::conv_bn_act_host(x, weight, bias, stride, padding, dilation, residual, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(drn, CUDA, m) { m.impl("conv_bn_act_native", &conv_bn_act_cuda); }
