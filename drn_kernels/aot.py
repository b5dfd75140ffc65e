"""The old name of drn_kernels.kernel_report (the GPU kernels' static resource report: registers, spills, shared
memory, tensor-core instructions; nothing is compiled ahead of time for use). `python -m drn_kernels.aot` runs
the report; `from drn_kernels import aot` gives the kernel_report module itself.
"""
import os
import sys

if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # before any kernel module (and so triton's JIT) is imported
    from drn_kernels import kernel_report

    sys.exit(kernel_report.main(prog="python -m drn_kernels.aot"))
else:
    from . import kernel_report

    sys.modules[__name__] = kernel_report
