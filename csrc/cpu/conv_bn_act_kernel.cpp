// drn::conv_bn_act_native for CPU tensors.
//
// Math:   y = relu?(conv2d(x, w, stride, padding, dilation) + bias[k] + residual?)   (BatchNorm folded into w, bias)
// Layout: x any memory format (made channels_last), w (K,C,R,S) any format, residual any strides;
//         y (N,K,P,Q) channels_last, i.e. memory (N,P,Q,K) — the layout oneDNN's fast direct/brgemm convolutions
//         use, and the one the fused model keeps between layers.
// Winograd: float32 3×3 stride-1 convolutions with ≥ 64 channels in and out go to winograd/winograd.cpp
//         (F(4×4,3×3): 4× fewer multiplies; DRN_CPU_CONV=direct turns it off), and so do the bfloat16 ones
//         whose caller chose it by measurement (a prepared F(2×2) form; AVX512-BF16 CPUs). Everything else:
// Tiling: none of our own. The GEMM-like core is oneDNN's (it ships inside torch), reached through the fused
//         ops torch registers for inductor: mkldnn::_convolution_pointwise (post-op "none") and its .binary
//         overload (post-op "add" of the residual), so bias and residual are applied to each output tile while it
//         is still in registers. ReLU is torch's relu_ over the output afterwards (one extra pass): oneDNN's relu
//         post-op computes max(x, 0), which turns NaN into 0, where torch.relu keeps NaN. oneDNN re-orders
//         the weight into its blocked format on every call, unless the caller passes the blocked copy it keeps
//         (drn::conv_bn_act_prepared_native, `prepared`: drn.fused prepares it once per layer and input shape).
//         Nothing is cached here: a cache keyed on the weight tensor cannot see writes through .data, numpy
//         views or inference tensors, and would compute with stale weights.
// Fallback (oneDNN missing, disabled with torch.backends.mkldnn.enabled=False, or DRN_CPU_CONV=aten, or a
//         oneDNN error): at::convolution without bias into the channels_last output, then one parallel pass
//         (parallel.h) over its rows applying bias + residual + ReLU in place.
// bfloat16, float16: computed by oneDNN in that dtype where this CPU has oneDNN kernels for it (bfloat16:
//         AVX512-BW/VL/DQ or AVX-NE-CONVERT, as torch's mkldnn checks say; ONEDNN_MAX_CPU_ISA honoured), else by
//         oneDNN in float32 without post-ops — x and the weight widened exactly — and one pass that adds bias and
//         residual, applies ReLU and rounds into the output (conv_onednn_widened), so an AVX2-only CPU never
//         takes ATen's scalar bfloat16 convolution (onednn_compute_dtype).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "cpu/winograd/winograd.h"
#include "input_checks.h"
#include "cpu/cpu_options.h"
#include "cpu/gemm/gemm.h"
#include "cpu/threading/parallel.h"

#include <array>
#include <atomic>
#include <cstdlib>
#include <string>
#include <string_view>

namespace drn::cpu {
namespace {

using at::IntArrayRef;
using at::Tensor;

// ---- oneDNN fused convolution, through the dispatcher ----------------------------------------------------------

using PointwiseFn = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, IntArrayRef, IntArrayRef,
                           IntArrayRef, int64_t, c10::string_view, c10::List<std::optional<at::Scalar>>,
                           std::optional<c10::string_view>);
using BinaryFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, IntArrayRef,
                        IntArrayRef, IntArrayRef, int64_t, c10::string_view, std::optional<at::Scalar>,
                        std::optional<c10::string_view>, c10::List<std::optional<at::Scalar>>,
                        std::optional<c10::string_view>);
using ReorderFn = Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, int64_t, at::OptionalIntArrayRef);

// Where oneDNN failed on a dtype once anyway, stop asking: that dtype takes the ATen path from then on.
std::array<std::atomic<bool>, 3> onednn_failed{};  // float, bfloat16, half

int dtype_slot(at::ScalarType dt) {
  return dt == at::kFloat ? 0 : dt == at::kBFloat16 ? 1 : 2;
}

bool onednn_wanted(at::ScalarType dt) {
  if (!at::hasMKLDNN() || !at::globalContext().userEnabledMkldnn()) return false;
  if (conv_mode() == ConvMode::kAten) return false;
  return !onednn_failed[dtype_slot(dt)].load(std::memory_order_relaxed);
}

// torch's own answer to "does oneDNN compute this dtype here" (mkldnn::_is_mkldnn_bf16_supported / _fp16_),
// asked once: it reads the CPU and oneDNN's ISA cap, neither of which changes in a process.
bool onednn_supports(const char* op) {
  try {
    return c10::Dispatcher::singleton().findSchemaOrThrow(op, "").typed<bool()>().call();
  } catch (const c10::Error&) {
    return false;
  }
}

// The dtype oneDNN computes a conv of dtype dt in: dt where oneDNN has kernels for it on this CPU, else float32.
at::ScalarType onednn_compute_dtype(at::ScalarType dt) {
  static const bool bf16 = onednn_supports("mkldnn::_is_mkldnn_bf16_supported");
  static const bool fp16 = onednn_supports("mkldnn::_is_mkldnn_fp16_supported");
  if (dt == at::kBFloat16) return bf16 ? dt : at::kFloat;
  if (dt == at::kHalf) return fp16 ? dt : at::kFloat;
  return dt;
}

// The weight oneDNN computes with, in dtype cdt: `prepared` when it is a oneDNN (blocked, MKLDNN-layout) copy of
// this weight's shape in cdt (drn::onednn_weight made it for these conv parameters; the values are the caller's
// word), else the dense weight in cdt, which oneDNN re-orders per call.
Tensor onednn_weight(const Tensor& weight, const std::optional<Tensor>& prepared, at::ScalarType cdt) {
  if (prepared.has_value() && prepared->defined() && prepared->is_mkldnn() && prepared->scalar_type() == cdt &&
      prepared->sizes() == weight.sizes()) {
    return *prepared;
  }
  const Tensor w = weight.to(cdt);
  if (w.is_contiguous() || w.is_contiguous(at::MemoryFormat::ChannelsLast)) return w;
  return w.contiguous();
}

c10::TypedOperatorHandle<PointwiseFn>& pointwise_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_convolution_pointwise", "")
                       .typed<PointwiseFn>();
  return op;
}

// y = relu?(conv + bias + residual?) by oneDNN in x's dtype (the caller checked onednn_compute_dtype).
Tensor conv_onednn(const Tensor& x, const Tensor& weight, const Tensor& bias, IntArrayRef stride,
                   IntArrayRef padding, IntArrayRef dilation, const std::optional<Tensor>& residual, bool relu,
                   const std::optional<Tensor>& prepared) {
  static auto binary = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("mkldnn::_convolution_pointwise", "binary")
                           .typed<BinaryFn>();
  const Tensor xin = x.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor w = onednn_weight(weight, prepared, x.scalar_type());
  const std::optional<Tensor> b = bias.contiguous();
  c10::List<std::optional<at::Scalar>> no_scalars;
  Tensor y;
  if (residual.has_value()) {
    const Tensor other = residual->contiguous(at::MemoryFormat::ChannelsLast);
    y = binary.call(xin, other, w, b, padding, stride, dilation, 1, "add", std::nullopt, std::nullopt, no_scalars,
                    std::nullopt);
  } else {
    y = pointwise_op().call(xin, w, b, padding, stride, dilation, 1, "none", no_scalars, "");
  }
  return relu ? y.relu_() : y;
}

// ---- fallback: ATen convolution + one fused epilogue pass -----------------------------------------------------

// torch.relu: negatives to 0, NaN stays NaN (v > 0 ? v : 0 would zero it).
inline float relu_keep_nan(float v) { return v < 0.f ? 0.f : v; }

template <typename S, typename T>
void epilogue(const S* src, T* out, const Tensor& bias, const std::optional<Tensor>& residual, bool relu,
              int64_t n_rows, int64_t P, int64_t Q, int64_t K) {
  const Tensor bias_f = bias.to(at::kFloat).contiguous();
  const float* b = bias_f.data_ptr<float>();
  const T* res = nullptr;
  int64_t rs[4] = {0, 0, 0, 0};
  if (residual.has_value()) {
    res = residual->const_data_ptr<T>();
    for (int d = 0; d < 4; ++d) rs[d] = residual->stride(d);
  }
  // A row is one output pixel's K channels; the grain keeps ~64K elements per task.
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(K, 1));
  parallel_even(n_rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const S* s = src + r * K;
      T* o = out + r * K;
      if (res != nullptr) {
        const int64_t n = r / (P * Q), pq = r % (P * Q);
        const T* rr = res + n * rs[0] + (pq / Q) * rs[2] + (pq % Q) * rs[3];
        const int64_t sk = rs[1];
        for (int64_t k = 0; k < K; ++k) {
          float v = static_cast<float>(s[k]) + b[k] + static_cast<float>(rr[k * sk]);
          o[k] = static_cast<T>(relu ? relu_keep_nan(v) : v);
        }
      } else {
        for (int64_t k = 0; k < K; ++k) {
          float v = static_cast<float>(s[k]) + b[k];
          o[k] = static_cast<T>(relu ? relu_keep_nan(v) : v);
        }
      }
    }
  });
}

// The (N,K,P,Q) channels_last tensor the fake kernel describes: memory (N,P,Q,K).
Tensor empty_output(const Tensor& x, int64_t K, int64_t P, int64_t Q, at::ScalarType dtype) {
  return at::empty({x.size(0), P, Q, K}, x.options().dtype(dtype)).permute({0, 3, 1, 2});
}

// conv_bn_act for a dtype oneDNN has no kernels for here (onednn_compute_dtype is float32): oneDNN's float32
// convolution of x widened (the weight widened, or its prepared float32 oneDNN copy), no post-ops, then one pass
// (epilogue) adding bias and the residual, applying ReLU and rounding into `into` (an (N,K,P,Q) channels_last
// contiguous tensor of x's dtype, which may be the residual itself) or a new output.
Tensor conv_onednn_widened(const Tensor& x, const Tensor& weight, const Tensor& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, const std::optional<Tensor>& residual, bool relu,
                           const std::optional<Tensor>& prepared, const std::optional<Tensor>& into) {
  const Tensor xin = x.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor w = onednn_weight(weight, prepared, at::kFloat);
  const Tensor y = pointwise_op()
                       .call(xin, w, std::nullopt, padding, stride, dilation, 1, "none",
                             c10::List<std::optional<at::Scalar>>(), "")
                       .contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t K = y.size(1), P = y.size(2), Q = y.size(3);
  Tensor out = into.has_value() ? *into : empty_output(x, K, P, Q, x.scalar_type());
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "drn_conv_bn_act_widened", [&] {
    epilogue<float, scalar_t>(y.const_data_ptr<float>(), out.data_ptr<scalar_t>(), bias, residual, relu,
                              y.size(0) * P * Q, P, Q, K);
  });
  return out;
}

Tensor conv_aten(const Tensor& x, const Tensor& weight, const Tensor& bias, IntArrayRef stride, IntArrayRef padding,
                 IntArrayRef dilation, const std::optional<Tensor>& residual, bool relu) {
  const bool upcast = x.scalar_type() == at::kHalf;
  const at::ScalarType cdt = upcast ? at::kFloat : x.scalar_type();
  const Tensor xin = x.to(cdt).contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor w = weight.to(cdt).contiguous(at::MemoryFormat::ChannelsLast);
  Tensor y = at::convolution(xin, w, std::nullopt, stride, padding, dilation, false, {0, 0}, 1);
  const int64_t K = y.size(1), P = y.size(2), Q = y.size(3);
  {
    Tensor cl = empty_output(x, K, P, Q, cdt);
    if (y.strides() != cl.strides()) y = cl.copy_(y);
  }
  const int64_t rows = y.size(0) * P * Q;
  if (!upcast) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "drn_conv_bn_act_epilogue", [&] {
      epilogue<scalar_t, scalar_t>(y.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), bias, residual, relu, rows,
                                   P, Q, K);
    });
    return y;
  }
  Tensor out = empty_output(x, K, P, Q, at::kHalf);
  epilogue<float, at::Half>(y.const_data_ptr<float>(), out.data_ptr<at::Half>(), bias, residual, relu, rows, P, Q, K);
  return out;
}

// oneDNN returns channels_last; give it exactly the fake kernel's strides (they differ only on size-1 dims).
Tensor as_declared_layout(const Tensor& y, const Tensor& x) {
  Tensor cl = empty_output(x, y.size(1), y.size(2), y.size(3), y.scalar_type());
  if (y.strides() == cl.strides()) return y;
  if (y.is_contiguous(at::MemoryFormat::ChannelsLast)) return y.as_strided(cl.sizes(), cl.strides());
  return cl.copy_(y);
}

// Whether this call runs the Winograd path. A prepared form is its caller's choice of algorithm (made by
// measurement, drn_kernels.prepared): a Winograd U of either tile size -> Winograd at that tile, a oneDNN copy ->
// oneDNN direct, whatever the channel threshold says; so does a dense tensor of the weight's shape (the weight
// itself, passed where no MKLDNN-layout tensor may go, as inside torch.compile) -> oneDNN, re-ordering the weight
// per call. Without one, the settings decide (winograd_applicable).
bool takes_winograd(const Tensor& x, const Tensor& weight, IntArrayRef stride, const std::optional<Tensor>& prepared) {
  if (prepared.has_value() && prepared->defined()) {
    const bool onednn_form = prepared->is_mkldnn() || prepared->sizes() == weight.sizes();
    if (onednn_form && onednn_wanted(x.scalar_type())) return false;
    if (winograd_tile_of(weight, prepared) != 0 && winograd_computes(x, weight, stride)) return true;
  }
  return winograd_applicable(x, weight, stride);
}

// `prepared`: a form of `weight` its caller keeps (see conv_bn_act_prepared_cpu); none for the public op.
Tensor conv_bn_act_cpu_impl(const Tensor& x, const Tensor& weight, const Tensor& bias, c10::SymIntArrayRef stride_s,
                            c10::SymIntArrayRef padding_s, c10::SymIntArrayRef dilation_s,
                            const std::optional<Tensor>& residual, bool relu, const std::optional<Tensor>& prepared) {
  // Our kernels are inference kernels: never record autograd history for the ATen ops we call.
  at::AutoDispatchBelowADInplaceOrView guard;
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                   "conv_bn_act (cpu): x must be float32, bfloat16 or float16, got ", dt);
  const std::vector<int64_t> stride = C10_AS_INTARRAYREF_SLOW(stride_s).vec();
  const std::vector<int64_t> padding = C10_AS_INTARRAYREF_SLOW(padding_s).vec();
  const std::vector<int64_t> dilation = C10_AS_INTARRAYREF_SLOW(dilation_s).vec();
  check_conv_args("conv_bn_act (cpu)", x, weight, bias, residual, stride, padding, dilation);
  if (takes_winograd(x, weight, stride, prepared)) {
    return conv_winograd(x, weight, bias, padding, dilation, residual, relu, std::nullopt, prepared);
  }
  if (onednn_wanted(dt)) {
    try {
      if (onednn_compute_dtype(dt) != dt) {
        return conv_onednn_widened(x, weight, bias, stride, padding, dilation, residual, relu, prepared,
                                   std::nullopt);
      }
      return as_declared_layout(conv_onednn(x, weight, bias, stride, padding, dilation, residual, relu, prepared),
                                x);
    } catch (const c10::Error&) {
      // oneDNN refused this dtype after all: remember, and use the ATen path for that dtype from now on.
      if (dt != at::kFloat) onednn_failed[dtype_slot(dt)].store(true, std::memory_order_relaxed);
    }
  }
  return conv_aten(x, weight, bias, stride, padding, dilation, residual, relu);
}

Tensor conv_bn_act_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, c10::SymIntArrayRef stride,
                       c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                       const std::optional<Tensor>& residual, bool relu) {
  return conv_bn_act_cpu_impl(x, weight, bias, stride, padding, dilation, residual, relu, std::nullopt);
}

// drn::conv_bn_act_prepared_native: conv_bn_act_native with `prepared`, a form of `weight` that its caller made
// once and keeps (drn.fused owns one per layer): drn::winograd_weight(weight, tile) for the Winograd path at that
// tile, or mkldnn::_reorder_convolution_weight(weight, padding, stride, dilation, 1, input_size) for oneDNN's.
// The form is the caller's choice of algorithm (takes_winograd); its shapes are checked, and a form that does
// not fit the call is ignored (the settings then decide). The caller vouches that it was made from
// the weight's current values: nothing here can check that without redoing the work.
Tensor conv_bn_act_prepared_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& prepared,
                                c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
                                c10::SymIntArrayRef dilation, const std::optional<Tensor>& residual, bool relu) {
  return conv_bn_act_cpu_impl(x, weight, bias, stride, padding, dilation, residual, relu, prepared);
}

// drn::winograd_weight: the Winograd-transformed weight conv_bn_act_prepared_native takes, for output tile side
// `tile` (2 or 4; 0: the DRN_WINOGRAD_TILE setting). Passing it chooses the Winograd path at that tile.
Tensor winograd_weight_cpu(const Tensor& weight, int64_t tile) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return winograd_weight(weight, tile);
}

// drn::conv_bn_act_residual_native: the same y written over `residual` (float32/bf16/fp16 channels_last
// contiguous, y's shape, x's dtype) — no output allocation. drn.fused's memory-frugal segmentation runner uses it
// for a block's identity shortcut, which nothing reads afterwards.
void conv_bn_act_residual_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              c10::SymIntArrayRef stride_s, c10::SymIntArrayRef padding_s,
                              c10::SymIntArrayRef dilation_s, const Tensor& residual, bool relu,
                              const std::optional<Tensor>& prepared) {
  at::AutoDispatchBelowADInplaceOrView guard;
  TORCH_CHECK_VALUE(residual.scalar_type() == x.scalar_type() &&
                        residual.is_contiguous(at::MemoryFormat::ChannelsLast),
                    "conv_bn_act_residual_ (cpu): residual must be a channels_last contiguous tensor of x's dtype");
  const std::vector<int64_t> stride = C10_AS_INTARRAYREF_SLOW(stride_s).vec();
  const std::vector<int64_t> padding = C10_AS_INTARRAYREF_SLOW(padding_s).vec();
  const std::vector<int64_t> dilation = C10_AS_INTARRAYREF_SLOW(dilation_s).vec();
  check_conv_args("conv_bn_act_residual_ (cpu)", x, weight, bias, residual, stride, padding, dilation);
  const std::optional<Tensor> res = residual;
  if (takes_winograd(x, weight, stride, prepared)) {
    conv_winograd(x, weight, bias, padding, dilation, res, relu, res, prepared);
    return;
  }
  const auto dt = x.scalar_type();
  if (onednn_wanted(dt) && onednn_compute_dtype(dt) != dt) {
    try {
      conv_onednn_widened(x, weight, bias, stride, padding, dilation, res, relu, prepared, residual);
      return;
    } catch (const c10::Error&) {
      onednn_failed[dtype_slot(dt)].store(true, std::memory_order_relaxed);
    }
  }
  if (onednn_wanted(dt)) {
    static auto inplace = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary")
                              .typed<Tensor&(Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                             IntArrayRef, IntArrayRef, IntArrayRef, int64_t, c10::string_view,
                                             std::optional<at::Scalar>, std::optional<c10::string_view>,
                                             c10::List<std::optional<at::Scalar>>,
                                             std::optional<c10::string_view>)>();
    try {
      const Tensor xin = x.contiguous(at::MemoryFormat::ChannelsLast);
      const Tensor w = onednn_weight(weight, prepared, dt);
      Tensor other = residual;
      inplace.call(other, xin, w, bias.contiguous(), padding, stride, dilation, 1, "add", std::nullopt,
                   std::nullopt, c10::List<std::optional<at::Scalar>>(), std::nullopt);
      if (relu) other.relu_();  // not oneDNN's relu post-op (see conv_onednn)
      return;
    } catch (const c10::Error&) {
      if (dt != at::kFloat) onednn_failed[dtype_slot(dt)].store(true, std::memory_order_relaxed);
    }
  }
  residual.copy_(conv_aten(x, weight, bias, stride, padding, dilation, res, relu));
}

// drn::cpu_conv_algorithm: which path conv_bn_act_cpu takes for x's dtype and channels, this weight and stride
// (profiles and benchmarks report it): "winograd", "onednn" or "aten".
std::string cpu_conv_algorithm(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  if (winograd_applicable(x, weight, stride)) return "winograd";
  return onednn_wanted(x.scalar_type()) ? "onednn" : "aten";
}

// drn::cpu_winograd_tiles: the Winograd tiles offered for this call (the algorithm search's candidates).
std::vector<int64_t> cpu_winograd_tiles(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  return winograd_tiles(x, weight, stride);
}

// drn::onednn_weight: the oneDNN (blocked) copy of `weight` that conv_bn_act_prepared_native takes for these conv
// parameters and input size, in the dtype oneDNN computes the weight's dtype in here (onednn_compute_dtype).
Tensor onednn_weight_cpu(const Tensor& weight, IntArrayRef padding, IntArrayRef stride, IntArrayRef dilation,
                         IntArrayRef input_size) {
  static auto reorder = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("mkldnn::_reorder_convolution_weight", "")
                            .typed<ReorderFn>();
  at::AutoDispatchBelowADInplaceOrView guard;
  const Tensor w = weight.to(onednn_compute_dtype(weight.scalar_type())).contiguous();
  return reorder.call(w, padding, stride, dilation, 1, input_size);
}

}  // namespace

// drn::cpu_isa: the ISA our own kernels run now (cpu_isa(): the CPU's best, capped by DRN_CPU_ISA).
std::string cpu_isa_name() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

// The ops without a tensor argument (what this CPU runs) have no dispatch key of their own.
TORCH_LIBRARY_IMPL(drn, CompositeImplicitAutograd, m) {
  m.impl("cpu_isa", &cpu_isa_name);
  m.impl("cpu_bf16_gemm", &gemm_bf16_supported);
}

TORCH_LIBRARY_IMPL(drn, CPU, m) {
  m.impl("cpu_winograd_tiles", TORCH_FN(cpu_winograd_tiles));
  m.impl("cpu_conv_algorithm", TORCH_FN(cpu_conv_algorithm));
  m.impl("conv_bn_act_native", TORCH_FN(conv_bn_act_cpu));
  m.impl("conv_bn_act_residual_native", TORCH_FN(conv_bn_act_residual_cpu));
  m.impl("conv_bn_act_prepared_native", TORCH_FN(conv_bn_act_prepared_cpu));
  m.impl("winograd_weight", TORCH_FN(winograd_weight_cpu));
  m.impl("onednn_weight", TORCH_FN(onednn_weight_cpu));
}

// A oneDNN-prepared weight is an MKLDNN-layout tensor, which makes the dispatcher pick this key.
TORCH_LIBRARY_IMPL(drn, MkldnnCPU, m) {
  m.impl("conv_bn_act_residual_native", TORCH_FN(conv_bn_act_residual_cpu));
  m.impl("conv_bn_act_prepared_native", TORCH_FN(conv_bn_act_prepared_cpu));
}

}  // namespace drn::cpu
