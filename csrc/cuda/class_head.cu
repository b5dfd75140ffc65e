// CUDA registration of drn::class_head_native and drn::localize_native (kernels: class_head_kernel.cuh, with the
// low-resolution classifier GEMM on conv_bn_act_kernel.cuh).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "host_ops.cuh"

namespace {

std::tuple<at::Tensor, at::Tensor> class_head_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                   const at::Tensor& bias, int64_t upsample,
                                                   at::ScalarType label_dtype) {
  const c10::cuda::CUDAGuard guard(x.device());
  return drn::class_head_host(x, weight, bias, upsample, label_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> localize_cuda(const at::Tensor& x,
                                                                         const at::Tensor& weight,
                                                                         const at::Tensor& bias, double threshold,
                                                                         int64_t stride) {
  const c10::cuda::CUDAGuard guard(x.device());
  return drn::localize_host(x, weight, bias, threshold, stride);
}

}  // namespace

TORCH_LIBRARY_IMPL(drn, CUDA, m) {
  m.impl("class_head_native", &class_head_cuda);
  m.impl("localize_native", &localize_cuda);
}
