"""Loading the compiled extension drn_kernels._C (and asking the host-simulated CUDA build for "cuda-sim").

load() order:
  1. `import drn_kernels._C` — built in place by setup.py (`pip install --no-build-isolation -e .`);
  2. else build it on first use with torch.utils.cpp_extension.load against the installed torch (ninja, cached
     in the torch extensions dir, rebuilt only when csrc/ changes; one line on stderr while it compiles).
     DRN_NO_JIT_BUILD=1 forbids this step; DRN_FORCE_CPU=1 builds the CPU kernels only (quick);
     DRN_FORCE_CUDA=1 makes a build without CUDA an error. `python -m drn_kernels.build` does it ahead of time.
The result (module or failure) is cached for the process; why_unavailable() reports the failure.
drn_kernels._library is imported first: the kernels register with TORCH_LIBRARY_IMPL against its schemas.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import time

from . import _build_config

_lock = threading.RLock()
_tried = False
_module = None
_error: str | None = None
_cuda_reason: str | None = None  # why a module we built (or found) has no CUDA kernels


def _tail(text: str, lines: int = 12) -> str:
    """The compiler's error lines (a verbose nvcc log buries them), then the last lines of the output."""
    kept = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    errors = [ln for ln in kept if "error" in ln.lower() or ln.startswith("FAILED")][:lines]
    tail = [ln for ln in kept[-4:] if ln not in errors]
    return "\n".join(errors + tail) if errors else "\n".join(kept[-lines:])


def build_directory(with_cuda: bool, create: bool = False) -> str:
    """Where the build on first use keeps its objects and library: $DRN_BUILD_DIR if set, else the torch
    extensions dir ($TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions), per Python and torch version."""
    import torch

    cpp_extension = _import_cpp_extension()
    root = os.environ.get("DRN_BUILD_DIR") or os.environ.get("TORCH_EXTENSIONS_DIR") \
        or cpp_extension.get_default_build_root()
    cu = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
    tv = torch.__version__.split("+")[0]
    folder = f"py{sys.version_info.major}{sys.version_info.minor}_{cu}_torch{tv}"
    name = _build_config.JIT_NAME_CUDA if with_cuda else _build_config.JIT_NAME_CPU
    path = os.path.join(root, folder, name)
    if create:
        os.makedirs(path, exist_ok=True)
    return path


def _set_cuda_home(home: str) -> None:
    """torch.utils.cpp_extension decides CUDA_HOME when first imported (from $CUDA_HOME or `nvcc` on PATH, which
    may be a wrapper script in the wrong prefix); point it at the toolkit we found."""
    os.environ["CUDA_HOME"] = home
    cpp_extension = _import_cpp_extension()
    cpp_extension.CUDA_HOME = home


def _import_cpp_extension():
    """torch.utils.cpp_extension, without its import-time warning that this machine has no CUDA driver
    (irrelevant: the CUDA kernels compile without a GPU)."""
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def _is_stale(library: str) -> bool:
    if not os.path.exists(library):
        return True
    built = os.path.getmtime(library)
    return any(os.path.getmtime(f) > built for f in _build_config.all_inputs())


def jit_build(verbose: bool = False, announce: bool = True):
    """Build (or load the cached build of) the extension with torch.utils.cpp_extension.load; returns the module.
    Raises on failure (RuntimeError carrying the compiler output)."""
    global _cuda_reason
    import torch

    with_cuda, cuda_home, reason = _build_config.cuda_decision(torch.version.cuda)
    _cuda_reason = None if with_cuda else reason
    if cuda_home is not None and (with_cuda or "torch.utils.cpp_extension" not in sys.modules):
        _set_cuda_home(cuda_home)
    cpp_extension = _import_cpp_extension()

    name = _build_config.JIT_NAME_CUDA if with_cuda else _build_config.JIT_NAME_CPU
    sources = _build_config.cpu_sources() + (_build_config.cuda_sources() if with_cuda else [])
    if not sources:
        raise RuntimeError(f"the C++ sources are missing ({_build_config.CSRC} has no *.cpp): the build on first "
                           f"use needs a source checkout installed with `pip install -e .`")
    build_dir = build_directory(with_cuda, create=True)
    library = os.path.join(build_dir, name + ".so")
    stale = _is_stale(library)
    if stale and announce:
        what = "CPU + CUDA kernels (" + reason + ")" if with_cuda else "CPU kernels (" + reason + ")"
        print(f"drn_kernels: compiling the C++ extension with ninja, once — {what}; "
              f"cache {build_dir} (a CUDA build takes minutes; DRN_FORCE_CPU=1 for CPU only)",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    module = cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=_build_config.cxx_flags(with_cuda),
        extra_cuda_cflags=_build_config.nvcc_flags() if with_cuda else None,
        extra_ldflags=_build_config.ld_flags(),
        extra_include_paths=_build_config.include_dirs(),
        build_directory=build_dir,
        verbose=verbose,
        with_cuda=with_cuda,
        is_python_module=True,
    )
    if stale and announce:
        print(f"drn_kernels: built {module.__file__} in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
    return module


def _load_cached_build():
    """Import an up-to-date library of the build on first use without running the build (DRN_NO_JIT_BUILD=1)."""
    global _cuda_reason
    import torch

    with_cuda, _, reason = _build_config.cuda_decision(torch.version.cuda)
    _cuda_reason = None if with_cuda else reason
    name = _build_config.JIT_NAME_CUDA if with_cuda else _build_config.JIT_NAME_CPU
    library = os.path.join(build_directory(with_cuda), name + ".so")
    if not os.path.exists(library):
        raise FileNotFoundError(f"no {library}")
    if _is_stale(library):
        raise RuntimeError(f"{library} is older than the sources in {_build_config.CSRC}")
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(verbose: bool = False):
    """The loaded extension module, or None (then why_unavailable() says why). Cached for the process."""
    global _tried, _module, _error, _cuda_reason
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        from . import _library  # noqa: F401  (the schemas the kernels register against)

        in_place_error = None
        try:
            _module = importlib.import_module("drn_kernels._C")
            if not _module.has_cuda():
                _cuda_reason = ("setup.py built the in-place drn_kernels._C CPU-only; rebuild it where torch is a "
                                "CUDA build and a CUDA toolkit is found, or delete it to build on first use")
        except ModuleNotFoundError:
            pass
        except ImportError as e:  # e.g. built against another torch: try the build on first use instead
            in_place_error = f"drn_kernels._C exists but does not import ({e})"
        if _module is None:
            if _build_config._env_flag("DRN_NO_JIT_BUILD"):
                try:
                    _module = _load_cached_build()
                except Exception as e:  # noqa: BLE001
                    _error = ((in_place_error + "; " if in_place_error else "")
                              + f"the C++ extension drn_kernels._C is not built ({e}) and DRN_NO_JIT_BUILD=1 "
                                "forbids building it on first use (run `python -m drn_kernels.build`)")
            else:
                try:
                    _module = jit_build(verbose=verbose)
                except Exception as e:  # noqa: BLE001 — any build failure means "no extension", with the reason
                    _error = f"building the C++ extension drn_kernels._C failed: {type(e).__name__}: {_tail(e)}"
        _tried = True
        return _module


def library_path() -> str | None:
    """Path of the loaded _C shared library (setup.py's in-place build or the JIT build), or None."""
    module = load()
    return getattr(module, "__file__", None) if module is not None else None


def why_unavailable(kind: str) -> str | None:
    """None when the extension provides kernels of `kind` ("cpu", "cuda", "cuda-sim"), else the reason."""
    if kind == "cuda-sim":
        if importlib.util.find_spec("drn_kernels._sim") is None:
            return "drn_kernels._sim (the CUDA kernel sources built for the host through csrc/sim) is missing"
        return importlib.import_module("drn_kernels._sim").why_unavailable()
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"kind must be 'cpu', 'cuda' or 'cuda-sim', got {kind!r}")
    module = load()
    if module is None:
        return _error
    if kind == "cuda" and not module.has_cuda():
        return f"drn_kernels._C was built without CUDA kernels: {_cuda_reason}"
    return None
