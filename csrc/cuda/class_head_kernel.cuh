// class_head and localize: per-pixel argmax / softmax probability of a 1x1 classifier's logits, optionally
// after the reference's x8 bilinear transposed convolution, and the localisation reductions.
//
// Math. logits_low = conv1x1(x, w) + b, computed by conv_bn_act_kernel<T, float> into an fp32 (N, h, w, K) map
// (tensor cores, low resolution only: K*h*w is 1/64 of the output-resolution logits, which are never stored).
// x8 up-sampling, separable: output row o reads low-res rows j = (o+4)/8 with weight (2k+1)/16 and j-1 with
// weight (15-2k)/16, k = (o+4)%8; rows outside [0, h) contribute zero (the transposed conv's zero border).
// All weights are multiples of 1/16, so the 2x2 tap weights are exact in fp32.
// Per pixel: one pass over the K classes keeps the running maximum (torch.argmax rules: first NaN wins,
// otherwise first maximum) and the softmax denominator relative to it (online softmax: rescale by
// exp(old_max - new_max) when the maximum moves), so probs = 1 / denominator without a second pass; NaN when
// the maximum is NaN or +-inf (including all -inf), as torch.softmax gives.
// Layout. logits_low (N, h, w, K) fp32 contiguous: a pixel's K logits are contiguous. labels/probs (N, H, W).
// Tiling. class_head_pixel_kernel: one thread per output pixel (int64 linear index), 256 threads per block.
// localize_image_kernel: one block per image: class means (threads over classes), block argmax (warp
// shuffles, then shared memory), then the box as shared-memory atomic min/max over qualifying cells.
#pragma once

#include "common.cuh"

namespace drn {

namespace head {
constexpr int kPixelThreads = 256;
constexpr int kImageThreads = 128;
}  // namespace head

template <class LabelT>
__global__ void __launch_bounds__(head::kPixelThreads)
    class_head_pixel_kernel(const float* __restrict__ logits, LabelT* __restrict__ labels,
                            float* __restrict__ probs, int N, int h, int w, int K, int upsample) {
  const int out_h = h * upsample, out_w = w * upsample;
  const int64_t total = static_cast<int64_t>(N) * out_h * out_w;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int n = static_cast<int>(idx / (static_cast<int64_t>(out_h) * out_w));
  const int rem = static_cast<int>(idx - static_cast<int64_t>(n) * out_h * out_w);
  const int oy = rem / out_w, ox = rem - oy * out_w;

  // The 2x2 low-res cells feeding this pixel: logit rows, weights, and whether the cell lies inside the map
  // (outside = the transposed conv's zero border). Fixed-size and fully unrolled so it stays in registers.
  const float* cell[4];
  float weight[4];
  bool inside[4];
  const int64_t image = static_cast<int64_t>(n) * h * w;
  if (upsample == 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      cell[i] = logits + (image + static_cast<int64_t>(oy) * w + ox) * K;
      weight[i] = 1.f;
      inside[i] = i == 0;
    }
  } else {
    const int jy = (oy + 4) / 8, ky = (oy + 4) % 8, jx = (ox + 4) / 8, kx = (ox + 4) % 8;
    const int ys[2] = {jy, jy - 1}, xs[2] = {jx, jx - 1};
    const float wy[2] = {(2 * ky + 1) / 16.f, (15 - 2 * ky) / 16.f};
    const float wx[2] = {(2 * kx + 1) / 16.f, (15 - 2 * kx) / 16.f};
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const int i = 2 * a + b;
        inside[i] = ys[a] >= 0 && ys[a] < h && xs[b] >= 0 && xs[b] < w;
        cell[i] = logits + (image + (inside[i] ? static_cast<int64_t>(ys[a]) * w + xs[b] : 0)) * K;
        weight[i] = wy[a] * wx[b];
      }
  }

  float best = -INFINITY, denom = 0.f;
  int best_k = 0;
  for (int k = 0; k < K; ++k) {
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (inside[i]) v = fmaf(weight[i], cell[i][k], v);
    if (argmax_better(v, k, best, best_k) || k == 0) {
      // A new maximum: rescale the denominator to it. exp(-inf - v) = 0 covers the first class and a -inf max.
      denom = (k == 0 ? 0.f : denom * expf(best - v)) + 1.f;
      best = v;
      best_k = k;
    } else if (v != -INFINITY) {
      // a -inf logit adds exp(-inf) = 0, also under a -inf maximum (where v - best would be NaN)
      denom += expf(v - best);
    }
  }
  labels[idx] = static_cast<LabelT>(best_k);
  // torch.softmax: a NaN or +-inf maximum makes every probability NaN (l - max is NaN); else 1 / denominator.
  probs[idx] = is_finite(best) ? 1.f / denom : NAN;
}

// One block per image. logits_low (N, h*w, K) fp32; labels/scores (N, h*w) from class_head_pixel_kernel.
template <class T>
__global__ void __launch_bounds__(head::kImageThreads)
    localize_image_kernel(const float* __restrict__ logits_low, const int64_t* __restrict__ labels,
                          const float* __restrict__ scores, T* __restrict__ image_logits,
                          float* __restrict__ boxes, int h, int w, int K, float threshold, int64_t stride) {
  constexpr int kWarps = head::kImageThreads / 32;
  __shared__ float warp_best[kWarps];
  __shared__ int warp_best_k[kWarps];
  __shared__ int top1;
  __shared__ int box[4];  // x_min, y_min, x_max, y_max over qualifying cells

  const int n = blockIdx.x, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int cells = h * w;
  const float* maps = logits_low + static_cast<int64_t>(n) * cells * K;

  // Image logits = mean over cells (sequential per class: deterministic), and this thread's best class.
  float best = NAN;
  int best_k = -1;
  for (int k = tid; k < K; k += blockDim.x) {
    float sum = 0.f;
    for (int c = 0; c < cells; ++c) sum += maps[static_cast<int64_t>(c) * K + k];
    const float mean = sum / static_cast<float>(cells);
    image_logits[static_cast<int64_t>(n) * K + k] = from_float<T>(mean);
    if (best_k < 0 || argmax_better(mean, k, best, best_k)) {
      best = mean;
      best_k = k;
    }
  }
  // Threads without a class carry index -1, which loses to any real class.
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int other_k = __shfl_xor_sync(0xffffffffu, best_k, offset);
    if (other_k >= 0 && (best_k < 0 || argmax_better(other, other_k, best, best_k))) {
      best = other;
      best_k = other_k;
    }
  }
  if (lane == 0) {
    warp_best[warp] = best;
    warp_best_k[warp] = best_k;
  }
  if (tid == 0) {
    box[0] = box[1] = INT32_MAX;
    box[2] = box[3] = -1;
  }
  __syncthreads();
  if (tid == 0) {
    float b = warp_best[0];
    int bk = warp_best_k[0];
    for (int i = 1; i < kWarps; ++i)
      if (warp_best_k[i] >= 0 && (bk < 0 || argmax_better(warp_best[i], warp_best_k[i], b, bk))) {
        b = warp_best[i];
        bk = warp_best_k[i];
      }
    top1 = bk;
  }
  __syncthreads();

  // Box of the cells labelled top1 with score > threshold (min/max commute: atomics stay deterministic).
  const int cls = top1;
  int x_min = INT32_MAX, y_min = INT32_MAX, x_max = -1, y_max = -1;
  for (int c = tid; c < cells; c += blockDim.x) {
    const int64_t i = static_cast<int64_t>(n) * cells + c;
    if (labels[i] == cls && scores[i] > threshold) {
      const int cy = c / w, cx = c - cy * w;
      x_min = cx < x_min ? cx : x_min;
      y_min = cy < y_min ? cy : y_min;
      x_max = cx > x_max ? cx : x_max;
      y_max = cy > y_max ? cy : y_max;
    }
  }
  if (x_max >= 0) {
    atomicMin(&box[0], x_min);
    atomicMin(&box[1], y_min);
    atomicMax(&box[2], x_max);
    atomicMax(&box[3], y_max);
  }
  __syncthreads();
  if (tid < 4) {
    const bool found = box[2] >= 0;
    // x2, y2 are exclusive pixel edges: (last cell + 1) * stride; the product is exact in int64, rounded once.
    const int64_t v = (box[tid] + (tid >= 2 ? 1 : 0)) * stride;
    boxes[static_cast<int64_t>(n) * 4 + tid] = found ? static_cast<float>(v) : -1.f;
  }
}

}  // namespace drn
