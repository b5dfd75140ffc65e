"""The "cuda-sim" backend: the CUDA kernel sources (csrc/cuda/*.cuh) built for the host through the SIMT shim.

`load()` builds csrc/sim/sim_ops.cpp with g++ (no nvcc, no GPU) through torch.utils.cpp_extension.load, cached
in the build folder ($DRN_BUILD_DIR, else the torch extensions directory; ninja rebuilds only what changed), and
registers torch.ops.drn.*_sim for CPU tensors. Each CUDA thread runs as an OS thread, so this is for tests on small shapes only.

`build_race_check(drop_sync=False)` compiles csrc/sim/race_check.cpp, a standalone program that runs small
launches of every kernel under -fsanitize=thread; with drop_sync=True the conv main loop loses its
__syncthreads (negative control: ThreadSanitizer must report it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from . import config, extension

_ROOT = Path(__file__).resolve().parents[2]
CSRC = _ROOT / "csrc"
NAME = "drn_kernels_sim"

_lock = threading.Lock()
_loaded = False
_error: str | None = None


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _missing() -> str | None:
    if not (CSRC / "sim" / "sim_ops.cpp").is_file():
        return f"the SIMT shim sources are missing ({CSRC / 'sim'}; an installed wheel does not ship csrc/)"
    if _compiler() is None:
        return "no C++ compiler found (set CXX) to build the host simulation of the CUDA kernels"
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
    except Exception:
        return "ninja is not installed (pip install ninja); it builds the host simulation of the CUDA kernels"
    return None


def _kernel_sources() -> list[Path]:
    return (sorted(CSRC.glob("*.h")) + sorted((CSRC / "cuda").glob("*.cuh")) + sorted((CSRC / "sim").glob("*.h"))
            + sorted((CSRC / "sim").glob("*.cpp")))


@contextlib.contextmanager
def _build_jobs(default: int):
    """MAX_JOBS (torch's ninja build reads only the environment) = `default` while the build runs, unless the
    user set it; restored afterwards, so the rest of the process never sees it."""
    if "MAX_JOBS" in os.environ:
        yield
        return
    os.environ["MAX_JOBS"] = str(default)
    try:
        yield
    finally:
        os.environ.pop("MAX_JOBS", None)


def load(verbose: bool = False) -> None:
    """Build (first call, ~1 minute) or load the cached simulator extension; raises RuntimeError on failure."""
    global _loaded, _error
    with _lock:
        if _loaded:
            return
        if _error is not None:
            raise RuntimeError(_error)
        reason = _missing()
        if reason is not None:
            _error = reason
            raise RuntimeError(reason)
        from torch.utils import cpp_extension

        try:
            with _build_jobs(2):
                cpp_extension.load(
                    name=NAME,
                    sources=[str(CSRC / "sim" / "sim_ops.cpp")],
                    extra_cflags=["-O2", "-std=c++20", f"-DDRN_SIM_DIGEST={config.sources_digest(_kernel_sources())}"],
                    extra_ldflags=["-pthread"],
                    is_python_module=False,
                    build_directory=extension.build_directory(False, create=True, name=NAME),
                    verbose=verbose,
                )
        except Exception as exc:  # compiler errors: keep the reason, report it from why_unavailable()
            _error = f"building the host simulation of the CUDA kernels failed: {exc}"
            raise RuntimeError(_error) from exc
        _loaded = True


def why_unavailable() -> str | None:
    """None when torch.ops.drn.*_sim can run (building the extension on first call), else the reason."""
    try:
        load()
    except RuntimeError as exc:
        return str(exc)
    return None


# ---- ThreadSanitizer build of a standalone driver --------------------------------------------------------------

def _torch_include() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return [f"-I{p}" for p in include_paths()]


def build_race_check(drop_sync: bool = False) -> Path:
    """Path of csrc/sim/race_check.cpp built with -fsanitize=thread (cached by source digest)."""
    if _compiler() is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    digest = config.sources_digest(_kernel_sources())
    out_dir = Path(extension.build_directory(False, create=True, name="drn_kernels_sim_tsan"))
    exe = out_dir / f"race_check_{'dropsync_' if drop_sync else ''}{digest}"
    if exe.is_file():
        return exe
    cmd = [_compiler(), "-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread", *_torch_include(),
           str(CSRC / "sim" / "race_check.cpp"), "-o", str(exe) + ".tmp"]
    if drop_sync:
        cmd.insert(1, "-DDRN_SIM_DROP_MAINLOOP_SYNC")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the race check failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
    os.replace(str(exe) + ".tmp", exe)
    return exe


def run_race_check(drop_sync: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the TSAN driver; its stderr holds any 'WARNING: ThreadSanitizer: data race' reports."""
    exe = build_race_check(drop_sync)
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 report_signal_unsafe=0 history_size=4")
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout, env=env)


if __name__ == "__main__":  # python -m drn_kernels._build.sim: build and report
    load(verbose=True)
    print("drn_kernels_sim loaded", file=sys.stderr)
