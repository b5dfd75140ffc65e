// Host side of the CUDA kernels, shared by the CUDA build (conv_bn_act.cu, class_head.cu: real launches on the
// current stream) and the simulator build (csrc/sim/sim_ops.cpp: sim::launch on CPU tensors).
// The caller holds the device guard; input validity was checked once by the public op (drn_kernels._checks).
// Every output is allocated here with at::empty: a kernel that forgets an element leaves garbage, which the
// tests catch by comparing every element.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../conv_output_size.h"
#include "../input_checks.h"
#include "class_head_kernel.cuh"
#include "conv_bn_act_kernel.cuh"

#if !defined(DRN_SIMT_HOST)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <limits>
#include <mutex>
#include <set>
#include <utility>

namespace drn {

// Launches kernel<<<grid, block, shared_bytes>>>(args...) on the current stream (the simulator: sim::launch).
// Dynamic shared memory beyond the default 48 KB needs the kernel's opt-in attribute, set once per kernel and
// device.
template <class... P, class... A>
void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes, A... args) {
#if defined(DRN_SIMT_HOST)
  sim::launch(grid, block, shared_bytes, kernel, args...);
#else
  if (shared_bytes > 48 * 1024) {
    // The attribute belongs to the kernel on one device; kernels of one signature share this template
    // instance, so the record of where it is set is keyed by (kernel, device).
    static std::mutex lock;
    static std::set<std::pair<const void*, int>> opted_in;
    int device = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    const std::lock_guard<std::mutex> guard(lock);
    if (opted_in.insert({reinterpret_cast<const void*>(kernel), device}).second) {
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(shared_bytes));
      if (err != cudaSuccess) opted_in.erase({reinterpret_cast<const void*>(kernel), device});
      C10_CUDA_CHECK(err);
    }
  }
  kernel<<<grid, block, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

template <class T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<element type>) for the floating dtypes a kernel takes.
template <class F>
void dispatch_float(at::ScalarType dtype, const char* what, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(TypeTag<float>{});
    case at::kHalf: return f(TypeTag<half_t>{});
    case at::kBFloat16: return f(TypeTag<bf16_t>{});
    default: TORCH_CHECK(false, what, ": unsupported dtype ", dtype);
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The conv's block tiles (conv_bn_act_kernel.cuh), numbered as conv_tile_rule returns them.
enum ConvTileId : int { kTile64x64 = 0, kTile128x128 = 1, kTile128x64 = 2, kTile64x128 = 3, kConvTiles = 4 };

template <class F>
void dispatch_conv_tile(int tile, F&& f) {
  switch (tile) {
    case kTile128x128: return f(TypeTag<conv::Tile128x128>{});
    case kTile128x64: return f(TypeTag<conv::Tile128x64>{});
    case kTile64x128: return f(TypeTag<conv::Tile64x128>{});
    default: return f(TypeTag<conv::Tile64x64>{});
  }
}

// Which tile a vector-path conv launches with: the least roofline bound of drn_kernels/perf_model.py
// (docs/gpu-performance-model.md) over the four tiles, with that model's H100 figures. Per unit of reduction length
// (R*S*C, common to every tile, so it cancels), with tm = ceil(M / BM) row tiles and tn = ceil(K / BN) column tiles:
//   L2 time       ~ (tn M + tm K) elt / l2_bw            (every column tile reads all M input rows, every row
//                                                         tile all K weight rows)
//   compute time  ~ ceil(tm tn / sms) 2 BM BN sms / peak  (the busiest SM's tiles at 1/sms of the peak, masked rows
//                                                         and columns included: the tail of the last wave)
// Both are compared in L2-element units: compute' = ceil(tm tn / sms) BM BN sms / f with f = peak elt / (2 l2_bw)
// (16-bit tensor cores: 989 TFLOP/s x 2 B / (2 x 5.5 TB/s) = 180; fp32 FFMA: 67 TFLOP/s x 4 B / 11 TB/s = 24).
// The bound is the larger of the two; the least bound wins, ties to the tile listed first. So big layers take the
// 128x128 tile (half the L2 bytes per FLOP of 64x64), a narrow K (<= 64) a 64-wide tile (a 128-wide one would
// issue masked columns), and a grid of fewer tiles than SMs smaller tiles that spread over more SMs. The model's
// DRAM roof and the output's bytes are the same for every tile and left out. Tiles whose shared memory exceeds
// the device's opt-in limit are skipped. Unmeasured: a model, as the Triton autotuner's prediction is.
inline int conv_tile_rule(int64_t M, int64_t K, int64_t elt_bytes, int64_t sms, int64_t smem_optin) {
  struct Cand {
    int id;
    int64_t bm, bn, shared;
  };
  const Cand cands[] = {{kTile64x64, 64, 64, conv::Tile64x64::kSharedBytes},
                        {kTile128x64, 128, 64, conv::Tile128x64::kSharedBytes},
                        {kTile64x128, 64, 128, conv::Tile64x128::kSharedBytes},
                        {kTile128x128, 128, 128, conv::Tile128x128::kSharedBytes}};
  const double peak = elt_bytes == 2 ? 989e12 : 67e12, l2_bw = 5.5e12;
  const double f = peak * static_cast<double>(elt_bytes) / (2 * l2_bw);
  sms = std::max<int64_t>(1, sms);
  int best = kTile64x64;
  double best_cost = std::numeric_limits<double>::infinity();
  for (const Cand& c : cands) {
    if (c.id != kTile64x64 && c.shared > smem_optin) continue;
    const int64_t tm = (M + c.bm - 1) / c.bm, tn = (K + c.bn - 1) / c.bn;
    const double l2 = static_cast<double>(tn) * M + static_cast<double>(tm) * K;
    const double compute = static_cast<double>((tm * tn + sms - 1) / sms) * c.bm * c.bn * sms / f;
    const double cost = std::max(l2, compute);
    if (cost < best_cost) best = c.id, best_cost = cost;
  }
  return best;
}

// (SMs, opt-in shared memory per block) of the device the conv launches on; the simulator stands for an H100 SXM.
inline std::pair<int64_t, int64_t> conv_device_limits() {
#if defined(DRN_SIMT_HOST)
  return {132, 227 * 1024};
#else
  int device = 0, sms = 0, smem = 0;  // cudaDeviceGetAttribute reads cached driver state: cheap per launch
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return {sms, smem};
#endif
}

// Launches conv_bn_act_kernel<T, OutT, kVec, Tile> for prepared NHWC tensors: x (N,H,W,C) dense, w (K,R,S,C)
// dense. The vector path (C a multiple of a 16-byte chunk, aligned pointers) with OutT == T takes the tile
// conv_tile_rule picks, or `tile` when given (>= 0: tests force each one); the scalar-gather path (the C=3 stems)
// and the classifier's fp32 logits (OutT = float) keep 64x64. Returns the tile launched.
template <class T, class OutT>
int launch_conv(ConvParams p, int tile = -1) {
  constexpr int vec = 16 / sizeof(T);
  const bool vec_ok = p.C % vec == 0 && aligned16(p.x) && aligned16(p.w);
  if (!vec_ok || !std::is_same_v<T, OutT>) tile = kTile64x64;
  if (tile < 0) {
    const auto [sms, smem] = conv_device_limits();
    tile = conv_tile_rule(p.M, p.K, sizeof(T), sms, smem);
  }
  dispatch_conv_tile(tile, [&](auto tag) {
    using Tile = typename decltype(tag)::type;
    const dim3 grid(static_cast<unsigned>((p.M + Tile::kBlockM - 1) / Tile::kBlockM),
                    static_cast<unsigned>((p.K + Tile::kBlockN - 1) / Tile::kBlockN));
    const auto run = [&](auto kernel) { launch_kernel(kernel, grid, dim3(Tile::kThreads), Tile::kSharedBytes, p); };
    if constexpr (std::is_same_v<T, OutT> || std::is_same_v<Tile, conv::Tile64x64>) {
      if (vec_ok) return run(conv_bn_act_kernel<T, OutT, true, Tile>);
    }
    if constexpr (std::is_same_v<Tile, conv::Tile64x64>) run(conv_bn_act_kernel<T, OutT, false, Tile>);
  });
  return tile;
}

inline ConvParams conv_params(const at::Tensor& x_nhwc, const at::Tensor& w_krsc, const at::Tensor& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t P,
                              int64_t Q) {
  // The kernel indexes pixels within one image with int (the batch index and element offsets are int64).
  TORCH_CHECK_VALUE(x_nhwc.size(2) * x_nhwc.size(3) <= kIndexLimit && P * Q <= kIndexLimit,
                    "conv_bn_act (CUDA kernels): more than 2**31-1 pixels per image: x ", x_nhwc.sizes(),
                    ", output ", P, "x", Q);
  ConvParams p{};
  p.x = x_nhwc.data_ptr();
  p.w = w_krsc.data_ptr();
  p.bias = bias.data_ptr();
  p.N = static_cast<int>(x_nhwc.size(0));
  p.C = static_cast<int>(x_nhwc.size(1));
  p.H = static_cast<int>(x_nhwc.size(2));
  p.W = static_cast<int>(x_nhwc.size(3));
  p.K = static_cast<int>(w_krsc.size(0));
  p.R = static_cast<int>(w_krsc.size(2));
  p.S = static_cast<int>(w_krsc.size(3));
  p.P = static_cast<int>(P);
  p.Q = static_cast<int>(Q);
  p.stride_h = static_cast<int>(stride[0]);
  p.stride_w = static_cast<int>(stride[1]);
  p.pad_h = static_cast<int>(padding[0]);
  p.pad_w = static_cast<int>(padding[1]);
  p.dil_h = static_cast<int>(dilation[0]);
  p.dil_w = static_cast<int>(dilation[1]);
  p.M = static_cast<int64_t>(p.N) * P * Q;
  p.Kdim = p.R * p.S * p.C;
  p.div_pq = make_fast_div(std::max<int64_t>(1, P * Q));
  p.div_q = make_fast_div(std::max<int64_t>(1, Q));
  p.div_c = make_fast_div(std::max(1, p.C));
  p.div_s = make_fast_div(std::max(1, p.S));
  return p;
}

// Weight (K, C, R, S) in any memory format -> dense (K, R, S, C) memory, viewed back as (K, C, R, S).
// A channels_last weight (what drn.fuse stores) is already that memory: no copy.
inline at::Tensor weight_krsc(const at::Tensor& weight) {
  return weight.contiguous(at::MemoryFormat::ChannelsLast);
}

// `tile` >= 0 forces a block tile (launch_conv), `poison` fills the output with NaN before the launch (tests:
// an element the kernel does not write shows); `launched` receives the tile that ran.
inline at::Tensor conv_bn_act_host(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                   const std::optional<at::Tensor>& residual, bool relu, int tile = -1,
                                   bool poison = false, int* launched = nullptr) {
  check_conv_args("conv_bn_act", x_in, weight, bias, residual, stride, padding, dilation);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = weight_krsc(weight);
  const at::Tensor b = bias.contiguous();
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), K = w.size(0), R = w.size(2), S = w.size(3);
  const int64_t P = conv_output_size(H, R, stride[0], padding[0], dilation[0]);
  const int64_t Q = conv_output_size(W, S, stride[1], padding[1], dilation[1]);
  at::Tensor y = at::empty({N, K, P, Q}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor res;
  ConvParams p = conv_params(x, w, b, stride, padding, dilation, P, Q);
  if (residual.has_value()) {
    res = residual->to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
    p.residual = res.data_ptr();
  }
  p.y = y.data_ptr();
  p.relu = relu;
  if (poison) y.fill_(std::numeric_limits<double>::quiet_NaN());
  if (p.M == 0 || p.K == 0) return y;
  dispatch_float(x.scalar_type(), "conv_bn_act", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int ran = launch_conv<T, T>(p, tile);
    if (launched != nullptr) *launched = ran;
  });
  return y;
}

// fp32 (N, h, w, K) logits of the 1x1 classifier (weight (K, C, 1, 1) or (K, C)), on tensor cores.
inline at::Tensor classifier_logits(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias) {
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t K = weight.size(0), C = x.size(1);
  const at::Tensor w = weight.reshape({K, C, 1, 1}).contiguous();
  const at::Tensor b = bias.contiguous();
  const int64_t one[2] = {1, 1}, zero[2] = {0, 0};
  at::Tensor logits = at::empty({x.size(0), x.size(2), x.size(3), K}, x.options().dtype(at::kFloat));
  ConvParams p = conv_params(x, w, b, one, zero, one, x.size(2), x.size(3));
  p.y = logits.data_ptr();
  p.relu = false;
  dispatch_float(x.scalar_type(), "classifier", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_conv<T, float>(p);
  });
  return logits;
}

template <class F>
void dispatch_label(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kLong: return f(TypeTag<int64_t>{});
    case at::kInt: return f(TypeTag<int32_t>{});
    case at::kShort: return f(TypeTag<int16_t>{});
    case at::kByte: return f(TypeTag<uint8_t>{});
    default: TORCH_CHECK(false, "class_head: unsupported label_dtype ", dtype);
  }
}

template <class LabelT>
void launch_pixels(const at::Tensor& logits, at::Tensor& labels, at::Tensor& probs, int64_t upsample) {
  const int64_t total = labels.numel();
  TORCH_CHECK_VALUE(labels.size(1) * labels.size(2) <= kIndexLimit,
                    "class_head (CUDA kernels): more than 2**31-1 output pixels per image: ", labels.sizes());
  const dim3 grid(static_cast<unsigned>((total + head::kPixelThreads - 1) / head::kPixelThreads));
  launch_kernel(class_head_pixel_kernel<LabelT>, grid, dim3(head::kPixelThreads), 0, logits.data_ptr<float>(),
                labels.data_ptr<LabelT>(), probs.data_ptr<float>(), static_cast<int>(logits.size(0)),
                static_cast<int>(logits.size(1)), static_cast<int>(logits.size(2)),
                static_cast<int>(logits.size(3)), static_cast<int>(upsample));
}

inline std::tuple<at::Tensor, at::Tensor> class_head_host(const at::Tensor& x, const at::Tensor& weight,
                                                          const at::Tensor& bias, int64_t upsample,
                                                          at::ScalarType label_dtype) {
  check_head_input("class_head", x);
  check_upsample("class_head", upsample);
  const at::Tensor logits = classifier_logits(x, weight, bias);
  const int64_t N = x.size(0), H = x.size(2) * upsample, W = x.size(3) * upsample;
  at::Tensor labels = at::empty({N, H, W}, x.options().dtype(label_dtype));
  at::Tensor probs = at::empty({N, H, W}, x.options().dtype(at::kFloat));
  dispatch_label(label_dtype, [&](auto tag) {
    using L = typename decltype(tag)::type;
    launch_pixels<L>(logits, labels, probs, upsample);
  });
  return {labels, probs};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> localize_host(const at::Tensor& x,
                                                                                const at::Tensor& weight,
                                                                                const at::Tensor& bias,
                                                                                double threshold, int64_t stride) {
  check_head_input("localize", x);
  check_box_stride("localize", stride);
  const at::Tensor maps = classifier_logits(x, weight, bias);
  const int64_t N = x.size(0), h = x.size(2), w = x.size(3), K = weight.size(0);
  at::Tensor labels = at::empty({N, h, w}, x.options().dtype(at::kLong));
  at::Tensor scores = at::empty({N, h, w}, x.options().dtype(at::kFloat));
  launch_pixels<int64_t>(maps, labels, scores, 1);
  at::Tensor logits = at::empty({N, K}, x.options());
  at::Tensor boxes = at::empty({N, 4}, x.options().dtype(at::kFloat));
  dispatch_float(x.scalar_type(), "localize", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_kernel(localize_image_kernel<T>, dim3(static_cast<unsigned>(N)), dim3(head::kImageThreads), 0,
                  maps.data_ptr<float>(), labels.data_ptr<int64_t>(), scores.data_ptr<float>(),
                  static_cast<T*>(logits.data_ptr()), boxes.data_ptr<float>(), static_cast<int>(h),
                  static_cast<int>(w), static_cast<int>(K), static_cast<float>(threshold), stride);
  });
  return {logits, labels, scores, boxes};
}

}  // namespace drn
