// drn::conv_bn_act_native on CPU: Winograd F(m×m, 3×3) for float32 (and, F(2×2) only, bfloat16) 3×3 stride-1
// convolutions: the driver. The layers: transforms.h (the matrices), tiles.h/tiles.cpp (where the tiles lie, and
// the input and output transforms per ISA), weight.cpp (U), ../gemm/ (the products).
//
// Math (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). With α = m + 2, per m×m tile:
//   V = Bᵀ d B            d: the α×α input tile of one channel
//   U = G g Gᵀ            g: the 3×3 filter of one (k, c); in float64, rounded to float32 once (per call,
//                         or once by the weight's owner: winograd_weight, then the `prepared` argument)
//   M[ξ] = V[ξ] · U[ξ]    for each of the α² points ξ: a (tiles × C)·(C × K) GEMM — the work, done by our own
//                         register-blocked kernels (gemm/: AVX-512 or AVX2, alike on every x86 vendor)
//   y = Aᵀ M A + bias (+ residual), ReLU
// F(2,3) multiplies 16/36 = 2.25× less than direct convolution, F(4,3) 36/144 = 4× less, at a larger rounding
// error (its transforms carry factors up to 8 and 1/24), which tests/test_cpu_kernels.py bounds per layer
// against float64 (the whole-model errors: docs/cpu-backend.md). DRN_WINOGRAD_TILE=2|4 picks; 4 is the default.
// Dilation d: outputs with equal (p mod d, q mod d) form an ordinary undilated convolution of the inputs with the
//   same phase, so one tile covers outputs (y0 + d·i, x0 + d·j), i, j < m, and reads inputs y0 - pad + d·u, u < α.
//   Tiles are laid out phase by phase (tile_origins); a phase whose length is not a multiple of m gets a partial
//   last tile whose missing outputs are never written, and whose GEMM rows at the points only those outputs read
//   are skipped (TileGrid).
// Layout: x NHWC (channels_last), channels innermost, so both transforms vectorise over channels.
//   V: [α²][T][C], U: [α²][C][K] packed in panels of 32 columns (gemm.h: pack_b), M: [α²][T][Kp] (Kp: K rounded up
//   to 32) for a chunk of T tiles sized so that V and M stay ~8 MB each
//   (the 1/8-resolution maps of a 1024×2048 image have 8192 tiles: the chunks bound the workspace).
// Epilogue in the output transform: bias, residual, ReLU, stored straight into the channels_last output.
// Threads: the transforms share out the chunk's tiles, the GEMMs the (ξ, column panel) pairs, each thread starting
//   on its own stretch and taking from the others' once done (parallel.h: parallel_shares).
// bfloat16: x, the residual and the output in bf16, the transforms in float32. Where the CPU has AVX512-BF16
//   (gemm_bf16_supported), F(2×2) only: V and U rounded to bf16 (the GEMM's operands, gemm.h: gemm_packed_bf16;
//   V by vcvtneps2bf16: tiles.cpp, store_v), M in float32; the two extra roundings put the error at 1.4–2.1×
//   torch's own bf16 convolution on DRN layers; in F(4×4) (factors up to 25) it is ~15×, so that tile is refused there
//   (winograd_tiles, winograd_weight). Elsewhere (AVX2-only CPUs, or DRN_CPU_ISA below avx512) V, U and the GEMM
//   are float32, as for a float32 conv, both tiles: bf16 is storage only, rounded once at the output.
#include "cpu/winograd/winograd.h"

#include "cpu/cpu_options.h"
#include "cpu/gemm/gemm.h"
#include "cpu/threading/parallel.h"
#include "cpu/winograd/tiles.h"
#include "cpu/winograd/transforms.h"
#include "cpu/winograd/weight.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "conv_output_size.h"

namespace drn::cpu {
namespace {

using at::IntArrayRef;
using at::Tensor;
using winograd::AxisTiles;
using winograd::InArgs;
using winograd::OutArgs;
using winograd::TileGrid;
using winograd::Transform;

constexpr int64_t kWorkspaceFloats = 2 << 20;     // ~8 MB for each of V and M per chunk
constexpr int64_t kTileRun = 8;                   // tiles a thread takes at a time in the transforms (parallel.h)

int tile_size() { return cpu_options().winograd_tile.load(std::memory_order_relaxed) == 2 ? 2 : 4; }

// Whether a conv of this dtype computes its GEMM in bfloat16 (V and U bf16): bfloat16 where the CPU has AVX512-BF16
// and DRN_CPU_ISA allows AVX-512; otherwise V, U and the GEMM are float32, whatever the input dtype.
bool bf16_gemm(at::ScalarType dt) { return dt == at::kBFloat16 && gemm_bf16_supported(); }

// The tile a call runs: the one asked for (a prepared form's, or 0: DRN_WINOGRAD_TILE), except that a bfloat16
// GEMM runs F(2×2) only — see winograd_tiles.
int resolve_tile(at::ScalarType dt, int asked) {
  const int tile = asked != 0 ? asked : tile_size();
  return bf16_gemm(dt) ? 2 : tile;
}

// `prepared` when it is this weight's U for tile size M (the shape says so; the values are the caller's word),
// else U computed now.
template <int M>
Tensor weight_for_tile(const Tensor& weight, const std::optional<Tensor>& prepared) {
  constexpr int A = Transform<M>::kAlpha;
  const bool bf16 = bf16_gemm(weight.scalar_type());
  if (prepared.has_value() && prepared->defined() && !prepared->is_mkldnn() &&
      prepared->scalar_type() == (bf16 ? at::kBFloat16 : at::kFloat) && prepared->device() == weight.device() &&
      prepared->sizes() == at::IntArrayRef(packed_shape(A * A, weight.size(1), weight.size(0), bf16)) &&
      prepared->is_contiguous()) {
    return *prepared;
  }
  return winograd::transformed_weight(weight, M, bf16);
}

template <int M, class E, class VT>
Tensor run(const Tensor& x, const Tensor& weight, const Tensor& bias, IntArrayRef padding, IntArrayRef dilation,
           const std::optional<Tensor>& residual, bool relu, const std::optional<Tensor>& into,
           const std::optional<Tensor>& prepared) {
  constexpr int A = Transform<M>::kAlpha;
  const Tensor xin = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = xin.size(0), C = xin.size(1), H = xin.size(2), W = xin.size(3), K = weight.size(0);
  const int64_t ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  const int64_t P = conv_output_size(H, 3, 1, ph, dh), Q = conv_output_size(W, 3, 1, pw, dw);
  Tensor out;  // (N, P, Q, K) contiguous
  if (into.has_value()) {
    TORCH_CHECK(into->sizes() == at::IntArrayRef({N, K, P, Q}) && into->scalar_type() == x.scalar_type() &&
                    into->is_contiguous(at::MemoryFormat::ChannelsLast),
                "conv_bn_act (cpu, winograd): the output buffer must be a ", x.scalar_type(), " channels_last (", N,
                ", ", K,
                ", ", P, ", ", Q, ") tensor, got ", into->sizes(), " ", into->scalar_type());
    out = into->permute({0, 2, 3, 1});
  } else {
    out = at::empty({N, P, Q, K}, xin.options());
    if (cpu_options().poison.load(std::memory_order_relaxed)) {
      out.fill_(std::numeric_limits<float>::quiet_NaN());  // tests: an output element never written shows up
    }
  }
  if (out.numel() == 0) return out.permute({0, 3, 1, 2});

  const Tensor u = weight_for_tile<M>(weight, prepared);
  const Tensor b = bias.to(at::kFloat).contiguous();
  Tensor res;
  if (residual.has_value()) res = residual->contiguous(at::MemoryFormat::ChannelsLast);
  const AxisTiles ty = winograd::tile_origins(P, dh, M), tx = winograd::tile_origins(Q, dw, M);
  const TileGrid grid(ty, tx, N);
  const int64_t total = grid.total(N);
  // chunks of whole GEMM register blocks (a chunk of 113 tiles would end in a 1-row block, which runs at a quarter
  // of full speed: gemm.cpp, Blocks)
  constexpr bool bf16 = std::is_same_v<VT, c10::BFloat16>;  // the bfloat16 GEMM (bf16_gemm)
  const int64_t block = gemm_block_rows(bf16);
  const int64_t fit = kWorkspaceFloats / (A * A * std::max(C, K));
  const int64_t chunk = std::clamp<int64_t>(fit > block ? fit / block * block : fit, 1, total);

  // V rows padded (gemm.h: padded_row); bf16 pairs channels, so an odd C gets a zero column (never written)
  const int64_t pairs = (C + 1) / 2, ldv = padded_row(bf16 ? 2 * pairs : C);
  const auto vopt = xin.options().dtype(bf16 ? at::kBFloat16 : at::kFloat);
  Tensor vbuf = bf16 && C % 2 != 0 ? at::zeros({A * A, chunk, ldv}, vopt) : at::empty({A * A, chunk, ldv}, vopt);
  const int64_t panels = panels_of(K), kp = panels * kPanel;
  Tensor mbuf = at::empty({A * A, chunk, kp}, xin.options().dtype(at::kFloat));
  // the bfloat16 GEMM runs where the CPU has AVX512-BF16 only (conv_winograd chose VT by bf16_gemm)
  if constexpr (bf16) TORCH_CHECK(gemm_bf16_supported(), "conv_bn_act (cpu, winograd): bfloat16 needs AVX512-BF16");
  const Tensor zeros = at::zeros({C}, xin.options());
  const InArgs<E, VT> in{xin.const_data_ptr<E>(), zeros.const_data_ptr<E>(), H, W, C, ph, pw, dh, dw, grid,
                         vbuf.data_ptr<VT>(), chunk * ldv, ldv};
  const Isa isa = cpu_isa();
  for (int64_t t0 = 0; t0 < total; t0 += chunk) {
    const int64_t tc = std::min(chunk, total - t0);
    parallel_even(tc, kTileRun, [&](int64_t begin, int64_t end) {
      winograd::in_tiles_on<M, E, VT>(isa, in, t0, begin, end);
    });
    RowRange rows[A * A];
    for (int xi = 0; xi < A * A; ++xi) rows[xi] = grid.needed_rows(xi / A, xi % A, A, N, t0, tc);
    if constexpr (bf16) {
      gemm_packed_bf16(A * A, tc, pairs, panels, vbuf.const_data_ptr<VT>(), ldv, chunk * ldv,
                       u.const_data_ptr<VT>(), panels * pairs * 2 * kPanel, mbuf.data_ptr<float>(), kp, chunk * kp,
                       rows);
    } else {
      gemm_packed(A * A, tc, C, panels, vbuf.const_data_ptr<VT>(), ldv, chunk * ldv, u.const_data_ptr<VT>(),
                  panels * C * kPanel, mbuf.data_ptr<float>(), kp, chunk * kp, rows);
    }
    const OutArgs<E> o{mbuf.const_data_ptr<float>(), chunk * kp, kp, K, b.const_data_ptr<float>(),
                       res.defined() ? res.const_data_ptr<E>() : nullptr, out.data_ptr<E>(), P, Q, dh, dw, grid,
                       relu};
    parallel_even(tc, kTileRun, [&](int64_t begin, int64_t end) {
      winograd::out_tiles_on<M, E>(isa, o, t0, begin, end);
    });
  }
  return out.permute({0, 3, 1, 2});
}

}  // namespace

bool winograd_computes(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  const auto dt = x.scalar_type();
  if (weight.scalar_type() != dt) return false;
  if (dt != at::kFloat && dt != at::kBFloat16) return false;
  if (weight.dim() != 4 || weight.size(2) != 3 || weight.size(3) != 3 || x.size(1) != weight.size(1)) return false;
  return stride[0] == 1 && stride[1] == 1;
}

bool winograd_applicable(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  // auto: float32, and bfloat16 where it computes in float32 (no bfloat16 GEMM) — a bfloat16 GEMM's input stays on
  // oneDNN, which has AMX kernels on the Intel CPUs that have AMX; a fused model's layers measure both
  // (winograd_tiles)
  return !winograd_tiles(x, weight, stride).empty() &&
         (conv_mode() == ConvMode::kWinograd || !bf16_gemm(x.scalar_type()));
}

std::vector<int64_t> winograd_tiles(const Tensor& x, const Tensor& weight, IntArrayRef stride) {
  const ConvMode mode = conv_mode();
  if (mode == ConvMode::kDirect || mode == ConvMode::kAten || !winograd_computes(x, weight, stride)) return {};
  // auto: only where both channel counts are at least 64 (below that oneDNN's direct convolution is as fast)
  if (mode == ConvMode::kAuto && std::min(weight.size(0), weight.size(1)) < 64) return {};
  if (bf16_gemm(x.scalar_type())) return {2};
  return {4, 2};
}

int winograd_tile_of(const Tensor& weight, const std::optional<Tensor>& prepared) {
  if (!prepared.has_value() || !prepared->defined() || prepared->is_mkldnn() || weight.dim() != 4 ||
      prepared->dim() < 1) {
    return 0;
  }
  const bool bf16 = bf16_gemm(weight.scalar_type());
  if (prepared->scalar_type() != (bf16 ? at::kBFloat16 : at::kFloat)) return 0;
  for (const int tile : {4, 2}) {
    const int64_t alpha = tile + 2;
    if (prepared->sizes() == at::IntArrayRef(packed_shape(alpha * alpha, weight.size(1), weight.size(0),
                                                                  bf16))) {
      return tile;
    }
  }
  return 0;
}

Tensor conv_winograd(const Tensor& x, const Tensor& weight, const Tensor& bias, IntArrayRef padding,
                     IntArrayRef dilation, const std::optional<Tensor>& residual, bool relu,
                     const std::optional<Tensor>& out, const std::optional<Tensor>& prepared) {
  // the caller's choice of tile, made by measurement
  const bool four = resolve_tile(x.scalar_type(), winograd_tile_of(weight, prepared)) == 4;
  using BF16 = c10::BFloat16;
  if (bf16_gemm(x.scalar_type())) {
    return four ? run<4, BF16, BF16>(x, weight, bias, padding, dilation, residual, relu, out, prepared)
                : run<2, BF16, BF16>(x, weight, bias, padding, dilation, residual, relu, out, prepared);
  }
  if (x.scalar_type() == at::kBFloat16) {  // bfloat16 storage, float32 V, U and GEMM
    return four ? run<4, BF16, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared)
                : run<2, BF16, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared);
  }
  return four ? run<4, float, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared)
              : run<2, float, float>(x, weight, bias, padding, dilation, residual, relu, out, prepared);
}

Tensor winograd_weight(const Tensor& weight, int64_t tile) {
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 &&
                        (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16) &&
                        weight.device().is_cpu(),
                    "winograd_weight: weight must be a float32 or bfloat16 (K, C, 3, 3) CPU tensor, got ",
                    weight.sizes(), " ", weight.scalar_type());
  TORCH_CHECK_VALUE(tile == 0 || tile == 2 || tile == 4, "winograd_weight: tile must be 2, 4 or 0 (the "
                    "DRN_WINOGRAD_TILE setting), got ", tile);
  TORCH_CHECK_VALUE(!(tile == 4 && bf16_gemm(weight.scalar_type())), "winograd_weight: tile 4 is not "
                    "offered in bfloat16 on this CPU (its bfloat16 GEMM: F(4x4) loses too much accuracy there, ~15x "
                    "torch's own bfloat16 error); use tile 2");
  return winograd::transformed_weight(weight, resolve_tile(weight.scalar_type(), static_cast<int>(tile)),
                                     bf16_gemm(weight.scalar_type()));
}

}  // namespace drn::cpu

