"""Loading the compiled extension drn_kernels._C (and asking the host-simulated CUDA build for "cuda-sim").

load() order (loaded_variant() says which one this process uses):
  1. "in-place": `import drn_kernels._C`, built in place by setup.py (`pip install --no-build-isolation -e .`),
     unless DRN_BUILD_CUDA=0 or a file under csrc/ is newer than it (then a note on stderr, and step 2);
  2. "jit-cpu" / "jit-cuda": the build on first use, torch.utils.cpp_extension.load against the installed torch
     (always the same ninja, config.find_ninja(); cached in the build folder, rebuilt when csrc/, the
     flags, torch or ninja change; any compile is announced on stderr with one line per step, the compiler
     output goes to build.log in the build folder). With or without the CUDA kernels as DRN_BUILD_CUDA asks
     (config.cuda_decision); DRN_NO_JIT_BUILD=1 only loads an up-to-date cached build.
     `python -m drn_kernels.build` does it ahead of time. One process builds in a build folder at a time
     (drn_kernels._build.lock): others starting the same build wait, then load its result.
The result (module or failure) is cached for the process; why_unavailable() reports the failure.
The op schemas the kernels register against (TORCH_LIBRARY_IMPL) are defined by drn_kernels._schemas, which the
package imports before anything can call load().
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time

from .. import settings
from . import config
from . import lock

_lock = threading.RLock()
_tried = False
_module = None
_error: str | None = None
_cuda_reason: str | None = None  # why a module we built (or found) has no CUDA kernels


def error_lines(text: str, lines: int = 12) -> str:
    """The compiler's error lines (a verbose nvcc log buries them), then the last lines of the output."""
    kept = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    errors = [ln for ln in kept if "error" in ln.lower() or ln.startswith("FAILED")][:lines]
    tail = [ln for ln in kept[-4:] if ln not in errors]
    return "\n".join(errors + tail) if errors else "\n".join(kept[-lines:])


def build_directory(with_cuda: bool, create: bool = False, name: str | None = None) -> str:
    """Where the build on first use keeps its objects and library: $DRN_BUILD_DIR if set, else the torch
    extensions dir ($TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions), per Python and torch version; one folder
    per library (`name`; default: _C's CPU or CUDA build)."""
    import torch

    cpp_extension = _import_cpp_extension()
    root = settings.path("DRN_BUILD_DIR") or os.environ.get("TORCH_EXTENSIONS_DIR") \
        or cpp_extension.get_default_build_root()
    cu = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
    tv = torch.__version__.split("+")[0]
    folder = f"py{sys.version_info.major}{sys.version_info.minor}_{cu}_torch{tv}"
    name = name or (config.JIT_NAME_CUDA if with_cuda else config.JIT_NAME_CPU)
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


SETTINGS_FILE = "drn_build_settings.json"  # in the build folder: how its library was built (see _build_settings)
LOG_FILE = "build.log"                    # in the build folder: the compiler output of the last compile


def _gpu_visible() -> bool:
    import torch

    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 — a broken driver means no usable GPU
        return False


def build_decision(mode: str | None = None) -> tuple[bool, str | None, str]:
    """config.cuda_decision for this torch and machine (a GPU visible or not); mode: as DRN_BUILD_CUDA (None: it)."""
    import torch

    return config.cuda_decision(torch.version.cuda, _gpu_visible(), mode)


def _build_settings(name: str, sources: list[str], with_cuda: bool, ninja: str) -> dict:
    """Everything besides the sources' contents that decides what the build produces; a change means rebuild."""
    import torch

    return {"name": name, "sources": sources, "cflags": config.cxx_flags(with_cuda),
            "cuda_cflags": config.nvcc_flags() if with_cuda else None, "ldflags": config.ld_flags(),
            "cuda_home": os.environ.get("CUDA_HOME") if with_cuda else None, "torch": torch.__version__,
            "ninja": ninja, "ninja_version": config.ninja_version(ninja)}


def _newer_input(library: str) -> str | None:
    built = os.path.getmtime(library)
    newer = [f for f in config.all_inputs() if os.path.getmtime(f) > built]
    return os.path.relpath(newer[0], config.ROOT) if newer else None


def _stale_reason(library: str, record: dict) -> str | None:
    """Why cpp_extension.load would compile (None: it will not): the library is missing, was built with other
    settings (flags, sources, torch, ninja), or ninja's own dry run has steps to run (a changed source or any
    header it includes, per ninja's dependency log)."""
    if not os.path.exists(library):
        return "not built yet"
    build_dir = os.path.dirname(library)
    try:
        with open(os.path.join(build_dir, SETTINGS_FILE)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        return "no record of how the cached library was built"
    changed = [k for k in record if recorded.get(k) != record[k]]
    if changed:
        return "built with another " + ", ".join(changed)
    if os.path.isfile(os.path.join(build_dir, "build.ninja")):
        dry = subprocess.run([record["ninja"], "-n", "-C", build_dir], capture_output=True, text=True)
        steps = [ln for ln in dry.stdout.splitlines() if _STEP.match(ln)]
        if dry.returncode != 0 or steps:
            return f"ninja has {len(steps)} step(s) to run" if dry.returncode == 0 else "ninja's dry run failed"
        return None
    newer = _newer_input(library)
    return f"{newer} changed" if newer else None


_STEP = re.compile(r"\[(\d+)/(\d+)\]\s+(.*)")


def _describe_step(line: str) -> str:
    """'[3/12] csrc/cpu/x.cpp' for ninja -v's '[3/12] c++ ... -c /abs/csrc/cpu/x.cpp -o x.o' (and the link)."""
    m = _STEP.match(line)
    command = m.group(3)
    src = re.search(r"\s-c\s+(\S+)", command)
    if src:
        what = os.path.relpath(src.group(1), config.ROOT) if os.path.isabs(src.group(1)) else src.group(1)
    else:
        lib = re.search(r"-o\s+(\S+\.so)\b", command)
        what = f"link {os.path.basename(lib.group(1))}" if lib else command[:60]
    return f"[{m.group(1)}/{m.group(2)}] {what}"


@contextlib.contextmanager
def _compiler_output_to_log(build_dir: str, echo: bool = False, progress: bool = True):
    """While cpp_extension.load runs: file descriptors 1 and 2 (ninja, the compilers, nvcc's -Xptxas=-v register
    report) go to BUILD_DIR/build.log, and a thread prints each finished ninja step on the terminal's stderr as
    a progress line ("drn_kernels: [3/12] csrc/cpu/x.cpp"; progress=False: none); echo=True prints every line. Yields the list of steps
    seen; the log is kept when a step ran (or the build failed), else removed."""
    partial = os.path.join(build_dir, LOG_FILE + ".partial")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    steps: list[str] = []
    stop = threading.Event()

    def watch():
        pending = ""
        with open(partial, errors="replace") as f:
            while True:
                chunk = f.read()
                if not chunk:
                    if stop.is_set():
                        break
                    stop.wait(0.25)
                    continue
                *lines, pending = (pending + chunk).split("\n")
                for ln in lines:
                    if _STEP.match(ln):
                        steps.append(ln)
                        if progress and not echo:
                            print(f"drn_kernels: {_describe_step(ln)}", file=terminal)
                    if echo:
                        print(ln, file=terminal)

    watcher = threading.Thread(target=watch, name="drn_kernels build log", daemon=True)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    watcher.start()
    failed = True
    try:
        yield steps
        failed = False
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (log_fd, *saved):
            os.close(fd)
        stop.set()
        watcher.join()
        terminal.close()
        if steps or failed:
            os.replace(partial, os.path.join(build_dir, LOG_FILE))
        else:
            os.remove(partial)


def _decide(mode: str | None) -> tuple[bool, str]:
    """build_decision, kept for why_unavailable, with CUDA_HOME pointed at the toolkit found (the build records it,
    so building and loading a cached build must see the same one). (with CUDA kernels?, reason)."""
    global _cuda_reason

    with_cuda, cuda_home, reason = build_decision(mode)
    _cuda_reason = None if with_cuda else reason
    if cuda_home is not None and (with_cuda or "torch.utils.cpp_extension" not in sys.modules):
        _set_cuda_home(cuda_home)
    return with_cuda, reason


def jit_build(verbose: bool = False, progress: bool = True, mode: str | None = None):
    """Build (or load the cached build of) the extension with torch.utils.cpp_extension.load; returns the module.
    Always with the ninja of config.find_ninja() (first on PATH while it runs). A compile is announced on
    stderr (why, then one line per finished step; the compiler output goes to BUILD_DIR/build.log) — whether or
    not the check beforehand predicted it. verbose=True also prints the compiler output; progress=False leaves out
    the per-step lines (the first and last line stay). mode: "auto", "0" or "1", as DRN_BUILD_CUDA (None: it).
    Raises on failure (RuntimeError carrying the compiler's error lines)."""
    with_cuda, reason = _decide(mode)
    ninja, how = config.find_ninja()
    if ninja is None:
        raise RuntimeError(f"ninja is needed to build the C++ extension ({how})")

    name = config.JIT_NAME_CUDA if with_cuda else config.JIT_NAME_CPU
    sources = config.cpu_sources() + (config.cuda_sources() if with_cuda else [])
    if not sources:
        raise RuntimeError(f"the C++ sources are missing ({config.CSRC} has no *.cpp): the build on first "
                           f"use needs a source checkout installed with `pip install -e .`")
    build_dir = build_directory(with_cuda, create=True)
    with lock.held(build_dir, _say):  # one build at a time here: the others wait, then load its result
        return _build_locked(build_dir, name, sources, with_cuda, ninja, reason, verbose, progress)


def build_library(name: str, sources: list[str], what: str, verbose: bool = False, progress: bool = True):
    """Build (or load the cached build of) another CPU library from csrc/ as the CPU build of _C is built: the
    same flags, ninja, lock and folder root (a folder `name` of its own). The test library's build."""
    ninja, how = config.find_ninja()
    if ninja is None:
        raise RuntimeError(f"ninja is needed to build the C++ extension ({how})")
    build_dir = build_directory(False, create=True, name=name)
    with lock.held(build_dir, _say):
        return _build_locked(build_dir, name, sources, False, ninja, what, verbose, progress)


def _say(text: str) -> None:
    print(f"drn_kernels: {text}", file=sys.stderr, flush=True)


def _build_locked(build_dir: str, name: str, sources: list[str], with_cuda: bool, ninja: str, reason: str,
                  verbose: bool, progress: bool):
    """jit_build's work, holding the build folder's lock: the check (after any wait: another process may just
    have built it), the compile and load, the record of the settings."""
    cpp_extension = _import_cpp_extension()
    library = os.path.join(build_dir, name + ".so")
    record = _build_settings(name, sources, with_cuda, ninja)
    stale = _stale_reason(library, record)
    what = ("CPU + CUDA kernels (" if with_cuda else "CPU kernels (") + reason + ")"
    announced = False
    if stale:
        _say(f"compiling the C++ extension ({stale}) — {what}; ninja {ninja}; build folder {build_dir} "
             f"(compiler output in {LOG_FILE}){'; a CUDA build takes minutes' if with_cuda else ''}")
        announced = True
    start = time.perf_counter()
    old_path = os.environ.get("PATH")
    os.environ["PATH"] = config.path_with_ninja_first(ninja)
    try:
        with _compiler_output_to_log(build_dir, echo=verbose, progress=progress) as steps:
            module = cpp_extension.load(
                name=name,
                sources=sources,
                extra_cflags=config.cxx_flags(with_cuda),
                extra_cuda_cflags=config.nvcc_flags() if with_cuda else None,
                extra_ldflags=config.ld_flags(),
                extra_include_paths=config.include_dirs(),
                build_directory=build_dir,
                verbose=True,  # ninja's output to fd 1, which _compiler_output_to_log sends to build.log
                with_cuda=with_cuda,
                is_python_module=True,
            )
    except Exception as e:
        log = os.path.join(build_dir, LOG_FILE)
        raise RuntimeError(f"{type(e).__name__}: {e}\n{error_lines(_read(log))}\n(compiler output: {log})") from None
    finally:
        if old_path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old_path
    with open(os.path.join(build_dir, SETTINGS_FILE), "w") as f:
        json.dump(record, f, indent=1)
    if steps and not announced:  # ninja compiled although the check beforehand said up to date: say so anyway
        _say(f"compiled the C++ extension ({len(steps)} steps the check beforehand did not predict) — {what}")
    if steps:
        _say(f"built {module.__file__} in {time.perf_counter() - start:.0f} s ({len(steps)} ninja steps; "
             f"compiler output in {os.path.join(build_dir, LOG_FILE)})")
    elif announced:
        _say(f"nothing to compile: {module.__file__} was up to date")
    return module


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _load_cached_build():
    """Import an up-to-date library of the build on first use without running the build (DRN_NO_JIT_BUILD=1)."""
    with_cuda, reason = _decide(None)
    name = config.JIT_NAME_CUDA if with_cuda else config.JIT_NAME_CPU
    build_dir = build_directory(with_cuda)
    library = os.path.join(build_dir, name + ".so")
    with lock.held(build_dir, _say, shared=True):  # a build under way there finishes first
        if not os.path.exists(library):
            raise FileNotFoundError(f"no {library}")
        ninja, _ = config.find_ninja()
        sources = config.cpu_sources() + (config.cuda_sources() if with_cuda else [])
        stale = _stale_reason(library, _build_settings(name, sources, with_cuda, ninja)) if ninja \
            else _newer_input(library)
        if stale:
            raise RuntimeError(f"{library} is out of date: {stale}")
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def in_place_library() -> str | None:
    """Path of the in-place drn_kernels._C (setup.py's build, in the package folder), or None."""
    spec = importlib.util.find_spec("drn_kernels._C")
    return spec.origin if spec is not None and spec.origin and os.path.isfile(spec.origin) else None


def in_place_skip_reason(path: str, mode: str | None = None) -> str | None:
    """Why the in-place library at `path` must not be loaded (None: load it): DRN_BUILD_CUDA=0 (or mode "0") asks
    for CPU kernels only (setup.py's build may hold CUDA kernels), or a file under csrc/ is newer than it."""
    if config.build_mode(mode) == "0":
        return "DRN_BUILD_CUDA=0 (or --cpu) asks for the CPU-only build on first use"
    newer = _newer_input(path)
    if newer:
        return (f"it is older than {newer} (rebuild it with `pip install --no-build-isolation -e .`, or delete "
                f"it)")
    return None


def variant_of(module) -> str | None:
    """"in-place" (setup.py's drn_kernels._C), "jit-cuda" or "jit-cpu" (the build on first use, with or
    without CUDA kernels), or None for no module."""
    if module is None:
        return None
    if module.__name__ == config.EXTENSION_NAME:
        return "in-place"
    return "jit-cuda" if module.has_cuda() else "jit-cpu"


def loaded_variant() -> str | None:
    """Which build of the extension this process uses (loading it first if needed): see variant_of."""
    return variant_of(load())


_jit_build_allowed = True
_also_told: list = []  # libraries with their own copy of the cpu backend's settings (the test library)


def forbid_jit_build() -> None:
    """From now on this process only loads an up-to-date cached build, as under DRN_NO_JIT_BUILD=1 (for a caller
    that built the extension itself, e.g. the device check, without writing the flag into os.environ)."""
    global _jit_build_allowed
    _jit_build_allowed = False


def load(verbose: bool = False):
    """The loaded extension module, or None (then why_unavailable() says why). Cached for the process."""
    global _tried, _module, _error, _cuda_reason
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        settings.cpu_options()  # a bad DRN_CPU_* value raises (naming it) before anything is built

        in_place_error = None
        in_place = in_place_library()
        skip = in_place_skip_reason(in_place) if in_place else None
        if skip and config.build_mode() != "0":
            print(f"drn_kernels: not loading the in-place {in_place}: {skip}", file=sys.stderr, flush=True)
        try:
            if in_place and not skip:
                _module = importlib.import_module("drn_kernels._C")
                if not _module.has_cuda():
                    _cuda_reason = ("setup.py built the in-place drn_kernels._C CPU-only; rebuild it where torch is "
                                    "a CUDA build and a CUDA toolkit is found (and DRN_BUILD_CUDA=1 without a GPU), "
                                    "or delete it to build on first use")
        except ImportError as e:  # e.g. built against another torch: try the build on first use instead
            in_place_error = f"drn_kernels._C exists but does not import ({e})"
        if _module is None:
            if not _jit_build_allowed or settings.flag("DRN_NO_JIT_BUILD"):
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
                    _error = (f"building the C++ extension drn_kernels._C failed: {type(e).__name__}: "
                              f"{error_lines(e)}")
        _tried = True
        push_cpu_options()
        return _module


def push_cpu_options():
    """Pass drn_kernels.settings.cpu_options() (DRN_CPU_CONV, DRN_WINOGRAD_TILE, DRN_CPU_ISA,
    DRN_CPU_PREFETCH, read and validated now) to the loaded extension's kernels, which never read the environment
    themselves. Done when the extension loads; call it again after changing those variables in this process. Returns the options
    (None when the extension is not loaded: it reads them when it is)."""
    told = ([_module] if _module is not None else []) + _also_told
    if not told:
        return None
    options = settings.cpu_options()
    for module in told:
        module.set_cpu_options(*options.codes())
    return options


def also_push_cpu_options_to(module) -> None:
    """From now on push_cpu_options() passes the settings to `module` too (a library built with its own copy of
    csrc/cpu/cpu_options.cpp); done once now."""
    _also_told.append(module)
    module.set_cpu_options(*settings.cpu_options().codes())


def library_path() -> str | None:
    """Path of the loaded _C shared library (setup.py's in-place build or the JIT build), or None."""
    module = load()
    return getattr(module, "__file__", None) if module is not None else None


def built_library() -> str | None:
    """Path of the extension library this process uses, without ever starting a build: the loaded one once load()
    has run (None when it failed), else setup.py's in-place build (None without one)."""
    return library_path() if _tried else in_place_library()


def why_unavailable(kind: str) -> str | None:
    """None when the extension provides kernels of `kind` ("cpu", "cuda"), else the reason (cuda-sim, a library
    of its own: drn_kernels._build.sim.why_unavailable)."""
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"kind must be 'cpu' or 'cuda', got {kind!r}")
    module = load()
    if module is None:
        return _error
    if kind == "cuda" and not module.has_cuda():
        return f"drn_kernels._C was built without CUDA kernels: {_cuda_reason}"
    return None
