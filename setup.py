"""Build of drn_kernels._C (metadata lives in pyproject.toml).

- `pip install -e .` (build isolation: no torch here): installs the Python package only; drn_kernels._C is built
  on first use against the installed torch (drn_kernels._build.extension), or ahead of time by
  `python -m drn_kernels.build`.
- `pip install --no-build-isolation -e .` (torch importable): also builds drn_kernels._C in place with
  torch.utils.cpp_extension + ninja: a CUDAExtension (csrc/*.cpp, csrc/cpu, csrc/cuda) where DRN_BUILD_CUDA asks
  for the CUDA kernels and they can be built (drn_kernels/_build/config.py cuda_decision), else a CppExtension with
  the CPU kernels; always with the ninja of config.find_ninja() (the ninja package of this Python), whatever PATH
  says.
Environment: DRN_BUILD_CUDA (auto, 0 or 1: docs/install.md), TORCH_CUDA_ARCH_LIST (default 8.0;8.6;9.0a), CUDA_HOME,
MAX_JOBS.
Sources and flags come from drn_kernels/_build/config.py, read by path (no torch, no drn_kernels import).
"""
import importlib.util
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_config():
    path = os.path.join(HERE, "drn_kernels", "_build", "config.py")
    spec = importlib.util.spec_from_file_location("_drn_build_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    """(ext_modules, cmdclass): empty when torch is not importable (isolated build: nothing is compiled, whatever
    DRN_BUILD_CUDA says; it applies to the build on first use, which fails then where DRN_BUILD_CUDA=1 cannot be
    met)."""
    cfg = _build_config()
    try:
        import torch
    except ImportError:
        print("drn_kernels: torch is not importable at build time (isolated build); installing the Python package "
              f"only — drn_kernels._C is built on first use (DRN_BUILD_CUDA={cfg.build_mode()}), or now with "
              "`python -m drn_kernels.build`", file=sys.stderr)
        return [], {}

    with_cuda, cuda_home, reason = cfg.cuda_decision(torch.version.cuda, torch.cuda.is_available())
    ninja, _ = cfg.find_ninja()
    if ninja is not None:  # torch's build runs `ninja` from PATH: make it the one every build of _C uses
        os.environ["PATH"] = cfg.path_with_ninja_first(ninja)
    if cuda_home is not None:
        # cpp_extension reads CUDA_HOME when imported; a wrapper-script nvcc on PATH would mislead it.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    if cuda_home is not None:
        cpp_extension.CUDA_HOME = cuda_home
    print(f"drn_kernels: building drn_kernels._C with {'CPU + CUDA' if with_cuda else 'CPU'} kernels ({reason})",
          file=sys.stderr)
    sources = cfg.cpu_sources(relative=True) + (cfg.cuda_sources(relative=True) if with_cuda else [])
    extra = {"cxx": cfg.cxx_flags(with_cuda)}
    kind = cpp_extension.CppExtension
    if with_cuda:
        extra["nvcc"] = cfg.nvcc_flags()
        kind = cpp_extension.CUDAExtension
    ext = kind(
        name=cfg.EXTENSION_NAME,
        sources=sources,
        include_dirs=cfg.include_dirs(),
        extra_compile_args=extra,
        extra_link_args=cfg.ld_flags(),
    )
    # Verbose ninja output keeps nvcc's -Xptxas=-v register/spill report in the build log.
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True, no_python_abi_suffix=False)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
