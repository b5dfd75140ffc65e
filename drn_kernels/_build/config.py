"""How drn_kernels._C is built: sources, compiler flags, CUDA toolkit discovery.

Torch-free on purpose: setup.py reads this file (by path, without importing drn_kernels or torch) to decide
what to build, and drn_kernels._build.extension uses the same answers for the build on first use, so an install-time
build and a JIT build compile the same thing with the same flags.

Environment (the DRN_* variables are read through drn_kernels/settings.py, loaded here by path too):
    DRN_BUILD_CUDA        auto | 0 | 1: which kernels are built (cuda_decision; docs/install.md)
    TORCH_CUDA_ARCH_LIST  CUDA archs, default "8.0;8.6;9.0a" (an arch with "+PTX" also embeds PTX)
    CUDA_HOME / CUDA_PATH the toolkit, used when it has include/cuda_runtime.h
    MAX_JOBS              parallel compile jobs (read by torch's ninja build)
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")

DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;9.0a"
EXTENSION_NAME = "drn_kernels._C"          # the in-place module setup.py builds
JIT_NAME_CPU = "drn_kernels_C_cpu"          # cpp_extension.load names: one per variant, so both stay cached
JIT_NAME_CUDA = "drn_kernels_C_cuda"
JIT_NAME_TESTING = "drn_kernels_C_testing"  # the test library (drn_kernels._build.testing), never shipped


def _load_settings():
    """drn_kernels.settings: imported as usual inside the package, loaded by path when setup.py loads this file."""
    if __package__:
        from .. import settings as module
        return module
    spec = importlib.util.spec_from_file_location("_drn_settings", os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "settings.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


settings = _load_settings()


BUILD_MODES = ("auto", "0", "1")  # DRN_BUILD_CUDA's values (drn_kernels/settings.py says what each builds)


def build_mode(requested: str | None = None) -> str:
    """"auto", "0" (CPU kernels only) or "1" (CUDA kernels required): the caller's request (`python -m
    drn_kernels.build --cpu` asks for "0", `--cuda` for "1"), else DRN_BUILD_CUDA."""
    if requested is not None and requested not in BUILD_MODES:
        raise ValueError(f"build mode must be one of {', '.join(BUILD_MODES)}, got {requested!r}")
    return requested or settings.build_cuda()


# ---- sources ------------------------------------------------------------------------------------------------

def _rel(paths: list[str], relative: bool) -> list[str]:
    return [os.path.relpath(p, ROOT) if relative else p for p in paths]


def cpu_sources(relative: bool = False) -> list[str]:
    """csrc/*.cpp (module init, registration) and csrc/cpu/**/*.cpp (the CPU ops, and their winograd/, gemm/ and
    threading/ layers); sorted for a stable build."""
    found = sorted(glob.glob(os.path.join(CSRC, "*.cpp"))) + sorted(glob.glob(os.path.join(CSRC, "cpu", "**", "*.cpp"),
                                                                              recursive=True))
    return _rel(found, relative)


def testing_sources() -> list[str]:
    """The test library: csrc/testing/*.cpp (test-only ops), and from the product the module init (csrc/*.cpp), the
    cpu backend's settings and the GEMM they probe (csrc/cpu/cpu_options.cpp, gemm/*.cpp)."""
    return (sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
            + [os.path.join(CSRC, "cpu", "cpu_options.cpp")]
            + sorted(glob.glob(os.path.join(CSRC, "cpu", "gemm", "*.cpp")))
            + sorted(glob.glob(os.path.join(CSRC, "testing", "*.cpp"))))


def cuda_sources(relative: bool = False) -> list[str]:
    """csrc/cuda/*.cu (the CUDA kernels and their CUDA dispatch-key registration)."""
    return _rel(sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu"))), relative)


def all_inputs() -> list[str]:
    """Every file under csrc/ that a build of _C may depend on (sources and headers; not the test library's
    csrc/testing/), for staleness checks."""
    out = []
    for dirpath, _, files in os.walk(CSRC):
        if os.path.relpath(dirpath, CSRC).split(os.sep)[0] == "testing":
            continue
        out += [os.path.join(dirpath, f) for f in files
                if f.endswith((".cpp", ".cu", ".h", ".cuh", ".hpp", ".inl"))]
    return sorted(out)


def include_dirs() -> list[str]:
    return [CSRC]


# ---- flags ----------------------------------------------------------------------------------------------------

def cxx_flags(with_cuda: bool) -> list[str]:
    # -fopenmp: at::parallel_for is a header template that only runs in parallel when compiled with OpenMP;
    # the extension then links the libgomp.so.1 torch has already loaded (same soname).
    flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unused-parameter",
             "-Wno-maybe-uninitialized"]  # false positives inside c10's optional<Scalar> (torch builds with it too)
    if with_cuda:
        flags.append("-DDRN_WITH_CUDA=1")
    return flags


def ld_flags() -> list[str]:
    return ["-fopenmp"]


def cuda_arch_list() -> list[str]:
    raw = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_CUDA_ARCH_LIST
    return [a for a in re.split(r"[;\s,]+", raw) if a]


def cuda_arch_flags(archs: list[str] | None = None) -> list[str]:
    """-gencode flags for "8.0", "9.0a", "8.6+PTX" ...: SASS for every arch (the kernel report reads these cubins),
    PTX as well where "+PTX" asks for it. Given explicitly, so torch does not guess from a (missing) GPU."""
    flags = []
    for arch in archs if archs is not None else cuda_arch_list():
        ptx = arch.endswith("+PTX")
        arch = arch[:-4] if ptx else arch
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)", arch)
        if not m:
            raise ValueError(f"TORCH_CUDA_ARCH_LIST: cannot parse arch {arch!r} (expected e.g. 8.0, 9.0a, 8.6+PTX)")
        num = f"{m.group(1)}{m.group(2)}{m.group(3)}"
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def nvcc_flags(archs: list[str] | None = None) -> list[str]:
    # -Xptxas=-v: the register/spill/shared-memory report of every kernel, kept in the build log (build.log in
    # the build folder for the build on first use), never printed on the terminal.
    return ["-O3", "-std=c++20", "-Xptxas=-v", "-lineinfo", "--expt-relaxed-constexpr",
            "-DDRN_WITH_CUDA=1"] + cuda_arch_flags(archs)


# ---- ninja ----------------------------------------------------------------------------------------------------

def find_ninja() -> tuple[str | None, str]:
    """(path of the ninja every build uses, how it was found). One ninja, whatever PATH says: the `ninja` package
    of this Python (a dependency of drn-kernels), else the ninja next to this Python, else the first on PATH.
    Two ninja versions write incompatible build logs (.ninja_log), and each then rebuilds everything."""
    try:
        import ninja  # the PyPI package: its binary lives in ninja.BIN_DIR

        path = os.path.join(ninja.BIN_DIR, "ninja")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, "the ninja package of this Python"
    except (ImportError, AttributeError):
        pass
    for folder in dict.fromkeys((os.path.dirname(sys.executable), sysconfig.get_path("scripts"))):
        path = os.path.join(folder, "ninja")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, "next to this Python"
    path = shutil.which("ninja")
    return (path, "first on PATH") if path else (None, "no ninja: pip install ninja")


def ninja_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def path_with_ninja_first(ninja: str, path: str | None = None) -> str:
    """$PATH with the chosen ninja's folder first (torch's builds run `ninja` from PATH)."""
    path = os.environ.get("PATH", "") if path is None else path
    return os.pathsep.join([os.path.dirname(ninja)] + [p for p in path.split(os.pathsep) if p])


# ---- CUDA toolkit discovery -----------------------------------------------------------------------------------

def _is_toolkit(home: str | None) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def _toolkit_of_nvcc(nvcc: str) -> str | None:
    """The toolkit behind an nvcc on PATH: follow symlinks, and read wrapper scripts (`exec /x/bin/nvcc "$@"`)."""
    seen = set()
    todo = [nvcc]
    while todo:
        path = os.path.realpath(todo.pop())
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        home = os.path.dirname(os.path.dirname(path))
        if _is_toolkit(home):
            return home
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
        except OSError:
            continue
        if not head.startswith(b"#!"):
            continue
        for token in re.findall(rb"[\"']?(/[^\s\"';|&]*nvcc)\b", head):
            todo.append(token.decode(errors="replace"))
    return None


def sources_digest(paths, prefix: str = "") -> str:
    """16 hex digits of sha256 over `prefix`, then each file's name and bytes in path order: a cache key that
    changes when any of the sources does (the host simulation build, the kernel report's cubins)."""
    h = hashlib.sha256(prefix.encode())
    for p in sorted(paths):
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _version_key(path: str):
    nums = re.findall(r"\d+", os.path.basename(path))
    return tuple(int(n) for n in nums) if nums else (-1,)


def find_cuda_home() -> tuple[str | None, str]:
    """(toolkit root or None, how it was found / why none was)."""
    tried = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if _is_toolkit(home):
                return os.path.abspath(home), f"${var}"
            tried.append(f"${var}={home} has no include/cuda_runtime.h")
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = _toolkit_of_nvcc(nvcc)
        if home:
            return home, f"nvcc on PATH ({nvcc})"
        tried.append(f"nvcc on PATH ({nvcc}) does not lead to a toolkit")
    else:
        tried.append("no nvcc on PATH")
    candidates = ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), key=_version_key, reverse=True)
    for home in candidates:
        if _is_toolkit(home):
            return os.path.realpath(home), f"{home}"
    tried.append("no /usr/local/cuda* with include/cuda_runtime.h")
    return None, "; ".join(tried)


def cuda_decision(torch_cuda_version: str | None, gpu_visible: bool = True,
                  mode: str | None = None) -> tuple[bool, str | None, str]:
    """(build the CUDA kernels?, CUDA_HOME, reason in words), as build_mode(mode) asks: "auto" where a GPU is
    visible, torch is a CUDA build and a toolkit is found; "0" never; "1" even without a GPU, and RuntimeError where
    they cannot be built. `torch_cuda_version` is torch.version.cuda (None for a CPU-only torch); `gpu_visible` is
    torch.cuda.is_available()."""
    mode = build_mode(mode)
    home, how = find_cuda_home()
    if mode == "0":
        ok, reason = False, "DRN_BUILD_CUDA=0 (or --cpu) asks for the CPU kernels only"
    elif torch_cuda_version is None:
        ok, reason = False, "torch is a CPU-only build (torch.version.cuda is None)"
    elif not gpu_visible and mode == "auto":
        ok, reason = False, ("no GPU visible, so the CPU kernels only (DRN_BUILD_CUDA=1 or "
                             "`python -m drn_kernels.build --cuda` compiles the CUDA kernels anyway)")
    elif home is None:
        ok, reason = False, f"no CUDA toolkit found ({how}); set CUDA_HOME"
    elif not cuda_sources():
        ok, reason = False, f"no CUDA sources in {os.path.join(CSRC, 'cuda')}/*.cu"
    else:
        ok, reason = True, f"CUDA toolkit {home} (found via {how}), archs {';'.join(cuda_arch_list())}"
        if not gpu_visible:
            reason += ", no GPU visible: built on request (DRN_BUILD_CUDA=1)"
    if mode == "1" and not ok:
        raise RuntimeError(f"DRN_BUILD_CUDA=1 (or --cuda) but the CUDA kernels cannot be built: {reason}")
    return ok, home, reason
