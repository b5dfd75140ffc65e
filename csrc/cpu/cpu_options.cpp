// Storage of the cpu backend's settings (see cpu_options.h).
#include "cpu_options.h"

namespace drn::cpu {

CpuOptions& cpu_options() {
  static CpuOptions options;
  return options;
}

}  // namespace drn::cpu
