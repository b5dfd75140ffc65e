// Host (SIMT-simulated) build of the CUDA kernels: the same headers as csrc/cuda/*.cu, compiled by g++ through
// simt.h, registered for CPU tensors as drn::*_sim (backend "cuda-sim"). Slow by design: each CUDA thread is
// an OS thread. Built by drn_kernels/_build/sim.py.
#include "simt.h"  // must come first: defines __global__, __shared__, threadIdx, ... for the kernel headers

#include <torch/library.h>

#include "../cuda/host_ops.cuh"

namespace {

at::Tensor conv_bn_act_sim(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           const std::optional<at::Tensor>& residual, bool relu) {
  return drn::conv_bn_act_host(x, weight, bias, stride, padding, dilation, residual, relu);
}

// Tests only: the conv with a forced block tile (tile >= 0; -1: the host rule) and NaN-poisoned output; returns
// the output and the tile that ran.
std::tuple<at::Tensor, int64_t> conv_bn_act_sim_tile(const at::Tensor& x, const at::Tensor& weight,
                                                      const at::Tensor& bias, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                                      const std::optional<at::Tensor>& residual, bool relu,
                                                      int64_t tile, bool poison) {
  TORCH_CHECK_VALUE(tile >= -1 && tile < drn::kConvTiles, "conv_bn_act_sim_tile: tile must be -1..",
                    drn::kConvTiles - 1, ", got ", tile);
  int launched = -1;
  at::Tensor y = drn::conv_bn_act_host(x, weight, bias, stride, padding, dilation, residual, relu,
                                       static_cast<int>(tile), poison, &launched);
  return {y, launched};
}

// (ldmatrix phases, cp.async quarter warps) with a shared-memory bank conflict so far in this process.
std::vector<int64_t> sim_bank_conflicts() { return {sim::bank_conflicts.load(), sim::store_bank_conflicts.load()}; }

int64_t conv_tile_rule(int64_t M, int64_t K, int64_t elt_bytes, int64_t sms, int64_t smem_optin) {
  return drn::conv_tile_rule(M, K, elt_bytes, sms, smem_optin);
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

// Test hooks of the simulator build (no other backend has them): drn_kernels' schemas are for the public ops.
TORCH_LIBRARY_FRAGMENT(drn, m) {
  m.def("conv_bn_act_sim_tile(Tensor x, Tensor weight, Tensor bias, int[] stride, int[] padding, int[] dilation, "
        "Tensor? residual, bool relu, int tile, bool poison) -> (Tensor, int)");
  m.def("conv_tile_rule(int M, int K, int elt_bytes, int sms, int smem_optin) -> int", &conv_tile_rule);
  m.def("sim_bank_conflicts() -> int[]", &sim_bank_conflicts);
}

TORCH_LIBRARY_IMPL(drn, CPU, m) {
  m.impl("conv_bn_act_sim_tile", &conv_bn_act_sim_tile);
  m.impl("conv_bn_act_sim", &conv_bn_act_sim);
  m.impl("class_head_sim", &class_head_sim);
  m.impl("localize_sim", &localize_sim);
}
