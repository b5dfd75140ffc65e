// drn::class_head_native and drn::localize_native for CPU tensors.
//
// Math:   logits[n,k,i,j] = sum_c W[k,c] x[n,c,i,j] + b[k]                  (the 1x1 classifier, low resolution)
//         upsample == 8: the reference's frozen bilinear ConvTranspose2d(K,K,16,stride 8,padding 4,groups K):
//           along each axis output o reads cell j=(o+4)/8 with weight t/8+1/16 and cell j-1 with 15/16-t/8,
//           t=(o+4)%8; cells outside the map contribute zero.
//         labels = argmax_k (first index on ties, first NaN wins), probs = softmax prob of that label
//                = 1 / sum_k exp(l_k - l_max) (NaN when the max is NaN or infinite, as torch.softmax gives).
//         localize: image logits = mean over cells of the low-res logits; per-cell argmax/prob; the box of the
//           cells labelled with the image's top-1 class scoring above threshold (see reference.localize).
// Layout: x any memory format. The low-res logits are materialised as (N,K,h,w) float32 — 1/64 of the output
//         size for upsample 8 — with at::addmm on a strided view of x (BLAS reads NCHW or NHWC without a copy;
//         bf16/fp16 are widened a few thousand pixels at a time so no full-size copy of x exists).
// Tiling: one task = a run of output rows (parallel.h: parallel_even). Per output row: the two contributing low-res
//         rows are blended once into a zero-padded (K, w+2) row; then output columns go in tiles of ~16 KB per
//         class: the tile's K x TILE logits are interpolated into a stack-sized buffer (class-major, so every
//         loop is contiguous over columns and vectorises), reduced to max/argmax, then to sum exp. Only labels
//         and probs are written to memory; the (N,K,H,W) full-resolution logits never exist.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu/simd.h"
#include "cpu/threading/parallel.h"
#include "input_checks.h"

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at load time (simd.h: DRN_MULTIVERSION), so
// one build is fast on the machine it runs on without -march=native.

namespace drn::cpu {
namespace {

using at::Tensor;

// ---- low-resolution logits --------------------------------------------------------------------------------------

// (N, K, h, w) float32 contiguous = conv1x1(x, weight) + bias, computed with BLAS on strided views of x.
Tensor low_res_logits(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t N = x.size(0), C = x.size(1), h = x.size(2), w = x.size(3), hw = h * w;
  const int64_t K = weight.size(0);
  const Tensor W = weight.reshape({K, C}).to(at::kFloat).contiguous();
  const Tensor b = bias.to(at::kFloat).contiguous().view({K, 1});
  Tensor L = at::empty({N, K, h, w}, x.options().dtype(at::kFloat));
  if (hw == 0) return L;
  const bool widen = x.scalar_type() != at::kFloat;
  // Widened chunks stay ~4 MB; float32 is read in place, one GEMM per image.
  const int64_t chunk = widen ? std::max<int64_t>(256, (int64_t{1} << 20) / C) : hw;
  const bool nhwc = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  const Tensor xs = nhwc ? x.permute({0, 2, 3, 1}).reshape({N, hw, C}) : x.contiguous().view({N, C, hw});
  for (int64_t n = 0; n < N; ++n) {
    const Tensor Ln = L[n].view({K, hw});
    for (int64_t p0 = 0; p0 < hw; p0 += chunk) {
      const int64_t len = std::min(chunk, hw - p0);
      Tensor out = Ln.narrow(1, p0, len);                            // (K, len), row stride hw
      Tensor X = nhwc ? xs[n].narrow(0, p0, len).t() : xs[n].narrow(1, p0, len);  // (C, len)
      if (widen) X = X.to(at::kFloat);
      at::addmm_out(out, b, W, X);
    }
  }
  return L;
}

// ---- per-pixel reduction: argmax and softmax probability of the max ---------------------------------------------

// exp(x) for x <= 0 (x = l_k - l_max), vectorisable: Cephes' expf polynomial (rel. error ~1e-7) and 2^n built in
// the exponent bits. Inputs below -87 (incl. -inf) are clamped, giving ~1e-38 instead of 0 — harmless in a sum >= 1.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(e);
}

// T holds K rows of `len` logits, row k at T + k*ks. Writes idx[len] (argmax) and prob[len]; m, s are scratch.
DRN_MULTIVERSION
void reduce_columns(const float* T, int64_t ks, int64_t len, int64_t K, int32_t* idx, float* prob, float* m,
                    float* s) {
  for (int64_t o = 0; o < len; ++o) {
    m[o] = T[o];
    idx[o] = 0;
    s[o] = 0.f;
  }
  for (int64_t k = 1; k < K; ++k) {
    const float* row = T + k * ks;
    const int32_t kk = static_cast<int32_t>(k);
    for (int64_t o = 0; o < len; ++o) {
      const float v = row[o], cur = m[o];
      // torch.argmax: strictly greater wins (first index on ties); the first NaN wins and stays.
      const bool take = (v > cur) | ((v != v) & (cur == cur));
      m[o] = take ? v : cur;
      idx[o] = take ? kk : idx[o];
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* row = T + k * ks;
    for (int64_t o = 0; o < len; ++o) s[o] += exp_nonpositive(row[o] - m[o]);
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t o = 0; o < len; ++o) {
    const float mm = m[o];
    // A NaN or +-inf max makes every softmax term NaN in torch; so does ours.
    prob[o] = (mm - mm == 0.f) ? 1.0f / s[o] : nan;
  }
}

// ---- x8 bilinear transposed convolution ----------------------------------------------------------------------

// Weight of the cell on the right (j) and on the left (j-1) for phase t = (o+4) % 8.
constexpr float kRight[8] = {1 / 16.f, 3 / 16.f, 5 / 16.f, 7 / 16.f, 9 / 16.f, 11 / 16.f, 13 / 16.f, 15 / 16.f};
constexpr float kLeft[8] = {15 / 16.f, 13 / 16.f, 11 / 16.f, 9 / 16.f, 7 / 16.f, 5 / 16.f, 3 / 16.f, 1 / 16.f};

// Blend the two low-res rows feeding output row oy into Rp (K rows of w+2, zero at both ends: Rp[k][j+1] is
// cell j, so the left neighbour of cell 0 and the right neighbour of cell w-1 read zeros).
DRN_MULTIVERSION
void blend_rows(const float* Ln, int64_t K, int64_t h, int64_t w, int64_t oy, float* Rp) {
  const int64_t j = (oy + 4) >> 3, t = (oy + 4) & 7;
  const float wr = kRight[t], wl = kLeft[t];
  const bool has_l = j - 1 >= 0 && j - 1 < h, has_r = j < h;
  for (int64_t k = 0; k < K; ++k) {
    float* r = Rp + k * (w + 2);
    const float* top = Ln + (k * h + (j - 1)) * w;
    const float* bot = Ln + (k * h + j) * w;
    r[0] = 0.f;
    r[w + 1] = 0.f;
    if (has_l && has_r) {
      for (int64_t c = 0; c < w; ++c) r[c + 1] = wl * top[c] + wr * bot[c];
    } else if (has_l) {
      for (int64_t c = 0; c < w; ++c) r[c + 1] = wl * top[c];
    } else if (has_r) {
      for (int64_t c = 0; c < w; ++c) r[c + 1] = wr * bot[c];
    } else {
      for (int64_t c = 0; c < w; ++c) r[c + 1] = 0.f;
    }
  }
}

// Interpolate output columns [o0, o0+len) of every class from the blended row Rp into T (K rows of len).
DRN_MULTIVERSION
void interpolate_columns(const float* Rp, int64_t K, int64_t w, int64_t o0, int64_t len, float* T) {
  // Output o = 8*jx - 4 + t reads Rp[jx] (cell jx-1, weight kLeft[t]) and Rp[jx+1] (cell jx, kRight[t]).
  const int64_t jx_begin = (o0 + 4) >> 3, jx_end = (o0 + len - 1 + 4) >> 3;
  for (int64_t k = 0; k < K; ++k) {
    const float* r = Rp + k * (w + 2);
    float* out = T + k * len;
    for (int64_t jx = jx_begin; jx <= jx_end; ++jx) {
      const float a = r[jx], b = r[jx + 1];
      const int64_t base = 8 * jx - 4 - o0;
      if (base >= 0 && base + 8 <= len) {
        for (int t = 0; t < 8; ++t) out[base + t] = kLeft[t] * a + kRight[t] * b;
      } else {
        const int64_t lo = std::max<int64_t>(0, -base), hi = std::min<int64_t>(8, len - base);
        for (int64_t t = lo; t < hi; ++t) out[base + t] = kLeft[t] * a + kRight[t] * b;
      }
    }
  }
}

template <typename L>
void store_labels(const int32_t* idx, int64_t len, L* out) {
  for (int64_t o = 0; o < len; ++o) out[o] = static_cast<L>(idx[o]);
}

void store_labels_any(const int32_t* idx, int64_t len, const Tensor& labels, int64_t offset) {
  switch (labels.scalar_type()) {
    case at::kLong: return store_labels(idx, len, labels.data_ptr<int64_t>() + offset);
    case at::kInt: return store_labels(idx, len, labels.data_ptr<int32_t>() + offset);
    case at::kShort: return store_labels(idx, len, labels.data_ptr<int16_t>() + offset);
    case at::kByte: return store_labels(idx, len, labels.data_ptr<uint8_t>() + offset);
    default: TORCH_CHECK(false, "class_head (cpu): unsupported label_dtype ", labels.scalar_type());
  }
}

// labels/probs (N, h*u, w*u) from the low-res logits L (N, K, h, w).
void argmax_prob_map(const Tensor& L, int64_t upsample, const Tensor& labels, const Tensor& probs) {
  const int64_t N = L.size(0), K = L.size(1), h = L.size(2), w = L.size(3);
  const int64_t H = h * upsample, W = w * upsample;
  if (N * H * W == 0) return;
  const float* Lp = L.const_data_ptr<float>();
  float* probs_p = probs.data_ptr<float>();
  // Column tile: ~16 K floats of interpolated logits per task (a multiple of 8 between 64 and 2048 columns).
  const int64_t tile = std::min<int64_t>(W, std::clamp<int64_t>((16384 / K) & ~int64_t{7}, 64, 2048));
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(W * K, 1));
  // runs of 4 grains (~256 K logits): each run allocates and zeroes its own buffers
  parallel_even(N * H, 4 * grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> T(upsample == 8 ? K * tile : 0), Rp(upsample == 8 ? K * (w + 2) : 0);
    std::vector<float> m(tile), s(tile);
    std::vector<int32_t> idx(tile);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / H, oy = r % H;
      const float* Ln = Lp + n * K * h * w;
      if (upsample == 8) blend_rows(Ln, K, h, w, oy, Rp.data());
      for (int64_t o0 = 0; o0 < W; o0 += tile) {
        const int64_t len = std::min(tile, W - o0);
        const int64_t out_off = r * W + o0;
        if (upsample == 8) {
          interpolate_columns(Rp.data(), K, w, o0, len, T.data());
          reduce_columns(T.data(), len, len, K, idx.data(), probs_p + out_off, m.data(), s.data());
        } else {
          reduce_columns(Ln + oy * w + o0, h * w, len, K, idx.data(), probs_p + out_off, m.data(), s.data());
        }
        store_labels_any(idx.data(), len, labels, out_off);
      }
    }
  });
}

// ---- ops ------------------------------------------------------------------------------------------------------

void check_dtype(const Tensor& x, const char* op) {
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
                   " (cpu): x must be float32, bfloat16 or float16, got ", dt);
}

std::tuple<Tensor, Tensor> class_head_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t upsample,
                                          at::ScalarType label_dtype) {
  at::AutoDispatchBelowADInplaceOrView guard;
  check_dtype(x, "class_head");
  check_head_input("class_head (cpu)", x);
  check_upsample("class_head (cpu)", upsample);
  const int64_t N = x.size(0), h = x.size(2), w = x.size(3);
  Tensor labels = at::empty({N, h * upsample, w * upsample}, x.options().dtype(label_dtype));
  Tensor probs = at::empty({N, h * upsample, w * upsample}, x.options().dtype(at::kFloat));
  const Tensor L = low_res_logits(x, weight, bias);
  argmax_prob_map(L, upsample, labels, probs);
  return {labels, probs};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> localize_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                        double threshold, int64_t stride) {
  at::AutoDispatchBelowADInplaceOrView guard;
  check_dtype(x, "localize");
  check_head_input("localize (cpu)", x);
  check_box_stride("localize (cpu)", stride);
  const int64_t N = x.size(0), h = x.size(2), w = x.size(3), hw = h * w;
  const int64_t K = weight.size(0);
  Tensor labels = at::empty({N, h, w}, x.options().dtype(at::kLong));
  Tensor scores = at::empty({N, h, w}, x.options().dtype(at::kFloat));
  Tensor boxes = at::full({N, 4}, -1.0, x.options().dtype(at::kFloat));
  Tensor logits = at::zeros({N, K}, x.options().dtype(at::kDouble));
  if (hw == 0) return {logits.to(x.scalar_type()), labels, scores, boxes};
  const Tensor L = low_res_logits(x, weight, bias);
  argmax_prob_map(L, 1, labels, scores);
  const float* Lp = L.const_data_ptr<float>();
  double* lg = logits.data_ptr<double>();
  const int64_t* lab = labels.const_data_ptr<int64_t>();
  const float* sc = scores.const_data_ptr<float>();
  float* bx = boxes.data_ptr<float>();
  parallel_even(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      // Image logits: mean of the cells' responses (= global average pool then the classifier), in double.
      int64_t top1 = 0;
      double best = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float* map = Lp + (n * K + k) * hw;
        double acc = 0;
        for (int64_t p = 0; p < hw; ++p) acc += map[p];
        const double v = acc / static_cast<double>(hw);
        lg[n * K + k] = v;
        if (k == 0 || v > best || (std::isnan(v) && !std::isnan(best))) {
          best = v;
          top1 = k;
        }
      }
      int64_t x0 = w, y0 = h, x1 = -1, y1 = -1;
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          const int64_t p = n * hw + i * w + j;
          if (lab[p] == top1 && sc[p] > threshold) {
            x0 = std::min(x0, j);
            y0 = std::min(y0, i);
            x1 = std::max(x1, j);
            y1 = std::max(y1, i);
          }
        }
      }
      if (x1 >= 0) {
        bx[n * 4 + 0] = static_cast<float>(x0 * stride);
        bx[n * 4 + 1] = static_cast<float>(y0 * stride);
        bx[n * 4 + 2] = static_cast<float>((x1 + 1) * stride);
        bx[n * 4 + 3] = static_cast<float>((y1 + 1) * stride);
      }
    }
  });
  return {logits.to(x.scalar_type()), labels, scores, boxes};
}

}  // namespace

TORCH_LIBRARY_IMPL(drn, CPU, m) {
  m.impl("class_head_native", TORCH_FN(class_head_cpu));
  m.impl("localize_native", TORCH_FN(localize_cpu));
}

}  // namespace drn::cpu
