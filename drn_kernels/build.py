"""`python -m drn_kernels.build [--cpu | --cuda] [--quiet | --verbose]`: build the C++/CUDA extension ahead of time.

The command lives in drn_kernels._build.cli (the build and load machinery); this module is its public name.
forbid_jit_build and log_path: for a program that runs this build in a background process and then only loads
its result (benchmarks/device_check.py). load_testing_library(): the test-only ops (torch.ops.drn_testing.*), built
on first call, for tests and benchmarks; never part of drn_kernels._C (drn_kernels._build.testing).
"""
import sys

from ._build.cli import forbid_jit_build, log_path, main
from ._build.testing import load as load_testing_library

__all__ = ["main", "forbid_jit_build", "log_path", "load_testing_library"]

if __name__ == "__main__":
    sys.exit(main())
