// The cpu backend's settings (DRN_CPU_CONV, DRN_WINOGRAD_TILE, DRN_CPU_ISA, DRN_CPU_PREFETCH, and the tests' poison
// hook): read and validated in Python by drn_kernels/settings.py, passed here once when the extension loads
// (drn_kernels._C.set_cpu_options, csrc/drn_kernels.cpp) and whenever Python passes them again. The kernels never
// read the environment.
#pragma once

#include <atomic>

namespace drn::cpu {

// DRN_CPU_CONV; the numbers are the index in drn_kernels.settings.TABLE["DRN_CPU_CONV"].choices.
enum class ConvMode : int { kAuto = 0, kWinograd = 1, kDirect = 2, kAten = 3 };

struct CpuOptions {
  std::atomic<int> conv{0};           // ConvMode
  std::atomic<int> winograd_tile{4};  // 2 or 4
  std::atomic<int> isa{-1};           // -1 the best the CPU has, 0 baseline, 1 avx2, 2 avx512 (capped by the CPU)
  std::atomic<bool> poison{false};    // fill Winograd outputs with NaN before writing them (tests)
  std::atomic<int> prefetch{0};       // how the GEMM walks b (gemm.cpp: prefetch_to_l1): 0 by L1 size, 1 L1, 2 L2
};

CpuOptions& cpu_options();

inline ConvMode conv_mode() { return static_cast<ConvMode>(cpu_options().conv.load(std::memory_order_relaxed)); }

// The instruction set our own kernels (Winograd transforms, the GEMM) run with: the best the CPU has
// (AVX-512F+DQ+VL, else AVX2+FMA, else the build's baseline), or the lower one DRN_CPU_ISA asks for.
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

Isa cpu_isa();

// The best the CPU has, whatever DRN_CPU_ISA says: AVX-512F+DQ+VL (what DRN_TARGET_AVX512 compiles for), else
// AVX2+FMA, else the baseline.
Isa best_cpu_isa();

}  // namespace drn::cpu
