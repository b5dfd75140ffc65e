"""Build the C++/CUDA extension ahead of time: `python -m drn_kernels.build [--cpu | --cuda] [--quiet | --verbose]`.

Runs the same build that drn_kernels would run on first use (torch.utils.cpp_extension.load, always the same ninja,
cached), one progress line per compile step; the compiler output (nvcc's -Xptxas=-v register report included) goes
to build.log in the build folder. Then says which build a fresh process loads (in-place / jit-cpu / jit-cuda).
--cpu and --cuda ask for what DRN_BUILD_CUDA=0 and DRN_BUILD_CUDA=1 ask for, over the variable. Exit status 1 when
the build fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import extension
from .extension import forbid_jit_build

# forbid_jit_build, log_path: for a program that runs this build in the background (drn_kernels.build re-exports them)
__all__ = ["main", "forbid_jit_build", "log_path"]


def log_path() -> str:
    """The build.log of the build this process's settings select (the compiler output of its last compile,
    nvcc's -Xptxas=-v report included); it may not exist (nothing compiled yet)."""
    with_cuda, _, _ = extension.build_decision()
    return os.path.join(extension.build_directory(with_cuda), extension.LOG_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drn_kernels.build", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cpu", action="store_true", help="CPU kernels only (as DRN_BUILD_CUDA=0)")
    which.add_argument("--cuda", action="store_true",
                       help="CUDA kernels too, even without a GPU; fail where they cannot (as DRN_BUILD_CUDA=1)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    shown.add_argument("--verbose", action="store_true", help="also print the compiler output (it is in build.log)")
    args = parser.parse_args(argv)

    mode = "0" if args.cpu else "1" if args.cuda else None
    try:
        with_cuda, _, reason = extension.build_decision(mode)
    except (RuntimeError, ValueError) as e:  # DRN_BUILD_CUDA=1 (or --cuda) where CUDA cannot be built, a bad value
        print(f"drn_kernels.build: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"drn_kernels.build: {'CPU + CUDA' if with_cuda else 'CPU-only'} build — {reason}", flush=True)
    start = time.perf_counter()
    try:
        module = extension.jit_build(verbose=args.verbose, progress=not args.quiet, mode=mode)
    except Exception as e:  # noqa: BLE001
        print(f"drn_kernels.build: FAILED: {type(e).__name__}: {extension.error_lines(e)}", file=sys.stderr)
        return 1
    print(f"drn_kernels.build: {module.__file__} ({extension.variant_of(module)}; CUDA kernels: "
          f"{module.has_cuda()}, OpenMP: {module.has_openmp()}) in {time.perf_counter() - start:.0f} s", flush=True)
    in_place = extension.in_place_library()
    if in_place is not None:
        skip = extension.in_place_skip_reason(in_place, mode)
        print(f"drn_kernels.build: note: the in-place {in_place} (from setup.py) "
              + (f"is not loaded: {skip}" if skip else "is loaded first: a fresh process uses it, not this build; "
                                                         "delete it to use this build"), flush=True)
    else:
        print(f"drn_kernels.build: a fresh process with the same settings loads this build "
              f"({extension.variant_of(module)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
