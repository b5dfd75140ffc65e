"""Build the C++/CUDA extension ahead of time: `python -m drn_kernels.build [--quiet] [--cpu]`.

Runs the same build that drn_kernels would run on first use (torch.utils.cpp_extension.load, ninja, cached), with
the compiler output shown (nvcc's -Xptxas=-v register report included), and prints where the library is.
--cpu builds the CPU kernels only (same as DRN_FORCE_CPU=1). Exit status 1 when the build fails.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drn_kernels.build", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="hide the compiler output")
    parser.add_argument("--cpu", action="store_true", help="CPU kernels only (DRN_FORCE_CPU=1)")
    args = parser.parse_args(argv)
    if args.cpu:
        os.environ["DRN_FORCE_CPU"] = "1"

    import torch

    from . import _build_config, _extension, _library  # noqa: F401  (_library: schemas before the kernels load)

    with_cuda, cuda_home, reason = _build_config.cuda_decision(torch.version.cuda)
    print(f"drn_kernels.build: {'CPU + CUDA' if with_cuda else 'CPU-only'} build — {reason}", flush=True)
    if importlib.util.find_spec("drn_kernels._C") is not None:
        print("drn_kernels.build: note: an in-place drn_kernels._C (from setup.py) exists and is loaded first; "
              "delete it to use this build", flush=True)
    start = time.perf_counter()
    try:
        module = _extension.jit_build(verbose=not args.quiet, announce=args.quiet)
    except Exception as e:  # noqa: BLE001
        print(f"drn_kernels.build: FAILED: {type(e).__name__}: {_extension._tail(e)}", file=sys.stderr)
        return 1
    print(f"drn_kernels.build: {module.__file__} (CUDA kernels: {module.has_cuda()}, "
          f"OpenMP: {module.has_openmp()}) in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
