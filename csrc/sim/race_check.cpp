// Standalone race check of the CUDA kernels through the SIMT shim, meant to be built with -fsanitize=thread
// (drn_kernels/_build/sim.py build_race_check). No torch runtime: raw arrays in, results checked against a naive
// double-precision loop, so a wrong answer also fails (exit 1), not only a race report.
// It runs: the fp16 conv (cp.async path, mma host model) with every block tile (64x64 with its 3-stage ring, the
// 4-stage 128x128, 128x64 and 64x128) over more k-slices than stages, the fp32 conv with the scalar-gather path
// (C = 3), the x8 class-head pixel kernel and the localize block kernel (warp shuffles, shared atomics); it
// also checks FastDiv against division and that the conv's ldmatrix loads and cp.async stores saw no bank conflict
// (sim::bank_conflicts, sim::store_bank_conflicts, counted by the shim's models). Built with
// -DDRN_SIM_DROP_MAINLOOP_SYNC the conv main loop loses its __syncthreads: the negative control, which
// ThreadSanitizer must report as a data race.
#include "simt.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../conv_output_size.h"
#include "../cuda/class_head_kernel.cuh"
#include "../cuda/conv_bn_act_kernel.cuh"

using drn::conv::Tile128x128;
using drn::conv::Tile128x64;
using drn::conv::Tile64x128;
using drn::conv::Tile64x64;

namespace {

std::mt19937 rng(0);
float uniform() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }

template <class T, class Tile = Tile64x64>
bool check_conv(int C, int K, int R, int stride, int pad, int dil, int H, int W) {
  const int N = 1, S = R;
  const int P = static_cast<int>(drn::conv_output_size(H, R, stride, pad, dil));
  const int Q = static_cast<int>(drn::conv_output_size(W, S, stride, pad, dil));
  std::vector<T> x(N * H * W * C), w(K * R * S * C), b(K), y(N * P * Q * K);
  for (auto& v : x) v = drn::from_float<T>(uniform());
  for (auto& v : w) v = drn::from_float<T>(uniform() * 0.3f);
  for (auto& v : b) v = drn::from_float<T>(uniform());
  drn::ConvParams p{};
  p.x = x.data(), p.w = w.data(), p.bias = b.data(), p.residual = nullptr, p.y = y.data();
  p.N = N, p.H = H, p.W = W, p.C = C, p.K = K, p.R = R, p.S = S, p.P = P, p.Q = Q;
  p.stride_h = p.stride_w = stride, p.pad_h = p.pad_w = pad, p.dil_h = p.dil_w = dil;
  p.M = static_cast<int64_t>(N) * P * Q, p.Kdim = R * S * C, p.relu = true;
  p.div_pq = drn::make_fast_div(P * Q), p.div_q = drn::make_fast_div(Q), p.div_c = drn::make_fast_div(C);
  p.div_s = drn::make_fast_div(S);
  const dim3 grid((p.M + Tile::kBlockM - 1) / Tile::kBlockM, (K + Tile::kBlockN - 1) / Tile::kBlockN);
  if (C % (16 / sizeof(T)) == 0)
    sim::launch(grid, dim3(Tile::kThreads), Tile::kSharedBytes, drn::conv_bn_act_kernel<T, T, true, Tile>, p);
  else sim::launch(grid, dim3(Tile::kThreads), Tile::kSharedBytes, drn::conv_bn_act_kernel<T, T, false, Tile>, p);
  double worst = 0;
  for (int pp = 0; pp < P; ++pp)
    for (int q = 0; q < Q; ++q)
      for (int k = 0; k < K; ++k) {
        double acc = drn::to_float(b[k]);
        for (int r = 0; r < R; ++r)
          for (int s = 0; s < S; ++s)
            for (int c = 0; c < C; ++c) {
              const int h = pp * stride - pad + r * dil, ww = q * stride - pad + s * dil;
              if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
              acc += double(drn::to_float(x[(h * W + ww) * C + c])) * drn::to_float(w[((k * R + r) * S + s) * C + c]);
            }
        acc = acc < 0 ? 0 : acc;
        worst = std::fmax(worst, std::fabs(acc - drn::to_float(y[(pp * Q + q) * K + k])) / (1 + std::fabs(acc)));
      }
  std::printf("conv %s %dx%d C=%d K=%d R=%d: max rel err %.3g\n", sizeof(T) == 2 ? "fp16" : "fp32", Tile::kBlockM,
              Tile::kBlockN, C, K, R, worst);
  return worst < (sizeof(T) == 2 ? 2e-3 : 1e-5);
}

bool check_head() {
  const int N = 2, h = 3, w = 4, K = 5, up = 8;
  std::vector<float> logits(N * h * w * K);
  for (auto& v : logits) v = uniform() * 3;
  std::vector<int64_t> labels(N * h * up * w * up), cell_labels(N * h * w);
  std::vector<float> probs(labels.size()), scores(N * h * w), image_logits(N * K), boxes(N * 4);
  sim::launch(dim3((labels.size() + 255) / 256), dim3(256), 0, drn::class_head_pixel_kernel<int64_t>, logits.data(),
              labels.data(), probs.data(), N, h, w, K, up);
  sim::launch(dim3(1), dim3(256), 0, drn::class_head_pixel_kernel<int64_t>, logits.data(), cell_labels.data(),
              scores.data(), N, h, w, K, 1);
  sim::launch(dim3(N), dim3(128), 0, drn::localize_image_kernel<float>, static_cast<const float*>(logits.data()),
              static_cast<const int64_t*>(cell_labels.data()), static_cast<const float*>(scores.data()),
              image_logits.data(), boxes.data(), h, w, K, 0.2f, 8);
  bool ok = true;
  for (size_t i = 0; i < labels.size(); ++i) ok &= labels[i] >= 0 && labels[i] < K && probs[i] > 0 && probs[i] <= 1;
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) {
      double mean = 0;
      for (int c = 0; c < h * w; ++c) mean += logits[(n * h * w + c) * K + k];
      ok &= std::fabs(mean / (h * w) - image_logits[n * K + k]) < 1e-5;
    }
  std::printf("class head / localize: %s\n", ok ? "ok" : "WRONG");
  return ok;
}

// FastDiv against division: divisors 1..2^31-1 (powers of two, their neighbours, random), dividends up to 2^63-1.
bool check_fast_div() {
  std::vector<int64_t> divisors, dividends = {0, 1, 2, 3, INT64_MAX, INT64_MAX - 1, int64_t(1) << 62};
  for (int b = 0; b < 31; ++b)
    for (int64_t d : {(int64_t(1) << b) - 1, int64_t(1) << b, (int64_t(1) << b) + 1})
      if (d >= 1 && d < (int64_t(1) << 31)) divisors.push_back(d);
  std::uniform_int_distribution<int64_t> any_d(1, INT32_MAX), any_n(0, INT64_MAX), small_n(0, 1 << 20);
  for (int i = 0; i < 200; ++i) divisors.push_back(any_d(rng));
  for (int i = 0; i < 200; ++i) dividends.push_back(i % 2 ? any_n(rng) : small_n(rng));
  bool ok = true;
  for (int64_t d : divisors) {
    const drn::FastDiv f = drn::make_fast_div(d);
    for (int64_t n : dividends) ok &= f.div(n) == n / d;
    for (int64_t k : {int64_t(1), int64_t(7), int64_t(1) << 20})  // around multiples of d
      if (k <= INT64_MAX / d)
        for (int64_t n : {k * d - 1, k * d, k * d + 1})
          if (n >= 0) ok &= f.div(n) == n / d;
  }
  std::printf("fast division: %s\n", ok ? "ok" : "WRONG");
  return ok;
}

}  // namespace

int main() {
  bool ok = check_fast_div();
  // C = 40 (fp16: 1.25 slices per tap), 3x3, dilation 2: 12 k-slices, more than any ring's stages; rows and
  // columns that end inside a tile.
  ok &= check_conv<drn::half_t, Tile64x64>(40, 24, 3, 1, 2, 2, 6, 7);
  ok &= check_conv<drn::half_t, Tile128x128>(40, 136, 3, 1, 2, 2, 9, 15);
  ok &= check_conv<drn::half_t, Tile128x64>(40, 24, 3, 1, 2, 2, 9, 15);
  ok &= check_conv<drn::half_t, Tile64x128>(40, 72, 3, 1, 2, 2, 6, 7);
  ok &= check_conv<float>(3, 8, 3, 2, 2, 2, 7, 5);
  const long conflicts = sim::bank_conflicts.load(), store_conflicts = sim::store_bank_conflicts.load();
  std::printf("ldmatrix phases with a bank conflict: %ld; cp.async quarter warps with one: %ld\n", conflicts,
              store_conflicts);
  ok &= conflicts == 0 && store_conflicts == 0;
  ok &= check_head();
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
