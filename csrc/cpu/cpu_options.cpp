// Storage of the cpu backend's settings (see cpu_options.h).
#include "cpu_options.h"

namespace drn::cpu {

CpuOptions& cpu_options() {
  static CpuOptions options;
  return options;
}

Isa best_cpu_isa() {
  static const Isa best = (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                           __builtin_cpu_supports("avx512vl"))
                              ? Isa::kAvx512
                          : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? Isa::kAvx2
                                                                                                : Isa::kBaseline;
  return best;
}

Isa cpu_isa() {
  const Isa best = best_cpu_isa();
  const int asked = cpu_options().isa.load(std::memory_order_relaxed);  // -1: the best
  return asked >= 0 && asked < static_cast<int>(best) ? static_cast<Isa>(asked) : best;
}

}  // namespace drn::cpu
