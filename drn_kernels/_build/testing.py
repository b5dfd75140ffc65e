"""The test library drn_kernels_C_testing: ops that probe the cpu backend's internals, for tests and benchmarks only.

    torch.ops.drn_testing.gemm_pack_b, gemm_packed                      the GEMM of csrc/cpu/gemm/ as ops
    torch.ops.drn_testing.parallel_shares_trace, parallel_even_trace    how csrc/cpu/threading/parallel.h shares out work

Its sources (config.testing_sources(): csrc/testing/*.cpp, with the module init and the cpu backend's GEMM and
settings compiled in again) are never part of drn_kernels._C: load() builds it on first use like the CPU build of
_C (the same flags, ninja, build lock and build folder root; a folder of its own) and imports it. It holds its own
copy of the cpu backend's settings, which drn_kernels.push_cpu_options() passes to it as to _C.
The public name is drn_kernels.build.load_testing_library().
"""
from __future__ import annotations

import threading

from . import config, extension

_lock = threading.Lock()
_module = None


def load(verbose: bool = False):
    """The test library's module (torch.ops.drn_testing.* registered), built first where needed; raises
    RuntimeError (carrying the compiler's error lines) when it cannot be built."""
    global _module
    with _lock:
        if _module is None:
            module = extension.build_library(config.JIT_NAME_TESTING, config.testing_sources(), "the test library",
                                             verbose=verbose, progress=verbose)
            extension.also_push_cpu_options_to(module)
            _module = module
        return _module
