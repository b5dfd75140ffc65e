"""The build of drn_kernels._C: setup.py without torch, CUDA toolkit discovery, the build on first use.

The pip-install tests take minutes and are marked slow (they build into temporary folders, never into the tree).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Makes `import torch` fail, as in pip's isolated build environment.
_NO_TORCH = "import sys; sys.modules['torch'] = None; "


def _build_config():
    spec = importlib.util.spec_from_file_location("_cfg_under_test", os.path.join(ROOT, "drn_kernels", "_build",
                                                                                  "config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(code: str, env=None, timeout=600):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_setup_py_without_torch():
    """An isolated build has no torch: setup.py installs the Python package alone, no ext_modules, no crash."""
    code = _NO_TORCH + textwrap.dedent("""
        import runpy
        sys.argv = ["setup.py", "--name"]
        runpy.run_path("setup.py", run_name="__main__")
    """)
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "drn-kernels"
    assert "torch is not importable at build time" in out.stderr
    # make test exports DRN_BUILD_CUDA=1 and installs the package first (pip's isolated build): no error there,
    # the setting applies to the build on first use
    forced = _run(code, env={**os.environ, "DRN_BUILD_CUDA": "1"})
    assert forced.returncode == 0 and "(DRN_BUILD_CUDA=1)" in forced.stderr, forced.stderr


def test_the_product_library_defines_no_schema_and_no_test_op():
    """drn_kernels._C's sources register kernels only (TORCH_LIBRARY_IMPL against drn_kernels/_schemas.py); the
    test-only ops (csrc/testing, their own namespace drn_testing) are compiled into the test library alone."""
    cfg = _build_config()
    product = cfg.cpu_sources() + cfg.cuda_sources()
    testing = cfg.testing_sources()
    assert product and any("testing" in os.path.relpath(s, cfg.CSRC).split(os.sep)[0] for s in testing)
    defines = [s for s in product if re.search(r"TORCH_LIBRARY(_FRAGMENT)?\s*\(", open(s).read())]
    assert defines == [], f"schemas defined in C++ (they belong in drn_kernels/_schemas.py): {defines}"
    assert not [s for s in product if os.path.relpath(s, cfg.CSRC).startswith("testing")]


def test_build_config_is_torch_free():
    code = _NO_TORCH + textwrap.dedent("""
        import importlib.util
        spec = importlib.util.spec_from_file_location("cfg", "drn_kernels/_build/config.py")
        cfg = importlib.util.module_from_spec(spec); spec.loader.exec_module(cfg)
        print(len(cfg.cpu_sources()), cfg.cuda_decision(None, mode="auto")[0])
    """)
    out = _run(code)
    assert out.returncode == 0, out.stderr
    n_cpu, with_cuda = out.stdout.split()
    assert int(n_cpu) >= 3 and with_cuda == "False"


def test_sources_and_flags():
    cfg = _build_config()
    cpu = cfg.cpu_sources(relative=True)
    assert "csrc/drn_kernels.cpp" in cpu and "csrc/cpu/conv_bn_act_kernel.cpp" in cpu
    assert "csrc/cpu/class_head_kernel.cpp" in cpu
    assert all(s.endswith(".cu") for s in cfg.cuda_sources())
    assert "-std=c++20" in cfg.cxx_flags(False) and "-fopenmp" in cfg.cxx_flags(False)
    assert "-DDRN_WITH_CUDA=1" in cfg.cxx_flags(True)
    nvcc = cfg.nvcc_flags(["8.0", "9.0a", "8.6+PTX"])
    assert "-std=c++20" in nvcc and "-Xptxas=-v" in nvcc
    assert "-gencode=arch=compute_80,code=sm_80" in nvcc
    assert "-gencode=arch=compute_90a,code=sm_90a" in nvcc
    assert "-gencode=arch=compute_86,code=compute_86" in nvcc
    with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST"):
        cfg.cuda_arch_flags(["sm80"])


def test_arch_list_default_and_env(monkeypatch):
    cfg = _build_config()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert cfg.cuda_arch_list() == ["8.0", "8.6", "9.0a"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a 8.0")
    assert cfg.cuda_arch_list() == ["9.0a", "8.0"]


def _fake_toolkit(tmp_path, name="cuda-12.9"):
    home = tmp_path / name
    (home / "include").mkdir(parents=True)
    (home / "include" / "cuda_runtime.h").write_text("")
    (home / "bin").mkdir()
    (home / "bin" / "nvcc").write_text("#!/bin/sh\necho nvcc\n")
    (home / "bin" / "nvcc").chmod(0o755)
    return home


def test_cuda_home_through_wrapper_script(tmp_path, monkeypatch):
    """nvcc on PATH may be a shell script exec'ing the real one in another prefix (as /usr/local/bin/nvcc here)."""
    cfg = _build_config()
    home = _fake_toolkit(tmp_path)
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    (wrappers / "nvcc").write_text(f'#!/bin/sh\nexec {home}/bin/nvcc "$@"\n')
    (wrappers / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}/usr/bin{os.pathsep}/bin")
    found, how = cfg.find_cuda_home()
    assert found == str(home) and "nvcc on PATH" in how
    # A $CUDA_HOME without headers is skipped; a valid one wins.
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nowhere"))
    assert cfg.find_cuda_home()[0] == str(home)
    other = _fake_toolkit(tmp_path, "cuda-other")
    monkeypatch.setenv("CUDA_HOME", str(other))
    assert cfg.find_cuda_home() == (str(other), "$CUDA_HOME")


def test_cuda_decision_switches(monkeypatch):
    cfg = _build_config()
    for var in ("DRN_FORCE_CPU", "DRN_FORCE_CUDA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DRN_BUILD_CUDA", "0")
    ok, _, reason = cfg.cuda_decision("13.0")
    assert not ok and "DRN_BUILD_CUDA=0" in reason
    monkeypatch.setenv("DRN_BUILD_CUDA", "auto")
    ok, _, reason = cfg.cuda_decision(None)
    assert not ok and "CPU-only" in reason
    monkeypatch.setenv("DRN_BUILD_CUDA", "1")
    with pytest.raises(RuntimeError, match="DRN_BUILD_CUDA=1"):
        cfg.cuda_decision(None)
    assert not cfg.cuda_decision(None, mode="auto")[0]  # the caller's request (the build command) over the variable
    with pytest.raises(ValueError, match="build mode"):
        cfg.cuda_decision("13.0", mode="cpu")
    monkeypatch.delenv("DRN_BUILD_CUDA")
    monkeypatch.setenv("DRN_FORCE_CUDA", "1")  # the deprecated name of DRN_BUILD_CUDA=1
    with pytest.warns(DeprecationWarning, match="DRN_BUILD_CUDA=1"):
        with pytest.raises(RuntimeError, match="DRN_BUILD_CUDA=1"):
            cfg.cuda_decision(None)


def test_cuda_kernels_without_gpu_only_on_request(tmp_path, monkeypatch):
    """No GPU visible: the CPU kernels only (what the machine can run), unless DRN_BUILD_CUDA=1 asks."""
    cfg = _build_config()
    monkeypatch.setenv("CUDA_HOME", str(_fake_toolkit(tmp_path)))
    for var in ("DRN_FORCE_CPU", "DRN_FORCE_CUDA", "DRN_BUILD_CUDA"):
        monkeypatch.delenv(var, raising=False)
    assert cfg.cuda_decision("13.0", gpu_visible=True)[0]
    ok, _, reason = cfg.cuda_decision("13.0", gpu_visible=False)
    assert not ok and "no GPU visible" in reason and "DRN_BUILD_CUDA=1" in reason
    monkeypatch.setenv("DRN_BUILD_CUDA", "1")
    ok, _, reason = cfg.cuda_decision("13.0", gpu_visible=False)
    assert ok and "on request" in reason
    monkeypatch.setenv("DRN_BUILD_CUDA", "0")
    assert not cfg.cuda_decision("13.0", gpu_visible=True)[0]


def test_one_ninja_whatever_path(monkeypatch):
    """Every build uses the ninja package of this Python, not the first ninja on PATH (two ninja versions
    rewrite each other's build log and rebuild everything)."""
    ninja = pytest.importorskip("ninja")
    cfg = _build_config()
    chosen, how = cfg.find_ninja()
    assert chosen == os.path.join(ninja.BIN_DIR, "ninja") and os.access(chosen, os.X_OK), how
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert cfg.find_ninja()[0] == chosen
    assert cfg.path_with_ninja_first(chosen).split(os.pathsep)[:2] == [os.path.dirname(chosen), "/usr/bin"]


def _ninja_dir(tmp_path):
    """A build folder whose build.ninja copies src.txt to lib.so, built once; ({settings}, library, source)."""
    from drn_kernels._build import extension as _extension

    ninja, _ = _build_config().find_ninja()
    (tmp_path / "src.txt").write_text("a")
    (tmp_path / "build.ninja").write_text("rule cp\n  command = cp $in $out\nbuild lib.so: cp src.txt\n")
    subprocess.run([ninja, "-C", str(tmp_path)], check=True, capture_output=True)
    settings = {"ninja": ninja, "flags": ["-O3"]}
    (tmp_path / _extension.SETTINGS_FILE).write_text(__import__("json").dumps(settings))
    return settings, str(tmp_path / "lib.so"), tmp_path / "src.txt"


def test_staleness_is_ninjas_answer(tmp_path):
    """The check before a build says what ninja will do: up to date, a changed input, other settings."""
    from drn_kernels._build import extension as _extension

    settings, library, src = _ninja_dir(tmp_path)
    assert _extension._stale_reason(library, settings) is None
    later = os.path.getmtime(library) + 10
    os.utime(src, (later, later))
    assert "1 step(s) to run" in _extension._stale_reason(library, settings)
    os.utime(src, (later - 20, later - 20))
    assert _extension._stale_reason(library, settings) is None
    assert _extension._stale_reason(library, {**settings, "flags": ["-O2"]}) == "built with another flags"
    os.remove(tmp_path / _extension.SETTINGS_FILE)
    assert "no record" in _extension._stale_reason(library, settings)
    assert _extension._stale_reason(str(tmp_path / "missing.so"), settings) == "not built yet"


def test_compile_steps_are_announced_and_logged(tmp_path, capfd):
    """Whatever ninja writes goes to build.log; each step also gives one progress line on stderr."""
    from drn_kernels._build import extension as _extension

    with _extension._compiler_output_to_log(str(tmp_path)) as steps:
        os.write(1, f"[1/2] c++ -O3 -c {ROOT}/csrc/cpu/x.cpp -o x.o\nptxas info : Used 40 registers\n".encode())
        os.write(2, b"[2/2] c++ x.o -shared -o drn_x.so\n")
    out, err = capfd.readouterr()
    assert "drn_kernels: [1/2] csrc/cpu/x.cpp" in err and "drn_kernels: [2/2] link drn_x.so" in err
    assert "ptxas" not in out + err and len(steps) == 2
    assert "Used 40 registers" in (tmp_path / _extension.LOG_FILE).read_text()
    with _extension._compiler_output_to_log(str(tmp_path)):  # nothing compiled: the last log stays
        os.write(1, b"ninja: no work to do.\n")
    assert "Used 40 registers" in (tmp_path / _extension.LOG_FILE).read_text()
    assert capfd.readouterr() == ("", "")


def test_in_place_module_freshness_and_cpu_only(tmp_path, monkeypatch):
    """An in-place _C older than csrc/ is not loaded, nor any under DRN_BUILD_CUDA=0 (it may hold CUDA kernels)."""
    from drn_kernels._build import extension as _extension

    lib = tmp_path / "_C.so"
    lib.write_bytes(b"")
    for var in ("DRN_FORCE_CPU", "DRN_FORCE_CUDA", "DRN_BUILD_CUDA"):
        monkeypatch.delenv(var, raising=False)
    newest = max(os.path.getmtime(f) for f in _build_config().all_inputs())
    os.utime(lib, (newest + 10, newest + 10))
    assert _extension.in_place_skip_reason(str(lib)) is None
    os.utime(lib, (newest - 10, newest - 10))
    assert "older than" in _extension.in_place_skip_reason(str(lib))
    os.utime(lib, (newest + 10, newest + 10))
    monkeypatch.setenv("DRN_BUILD_CUDA", "0")
    assert "DRN_BUILD_CUDA=0" in _extension.in_place_skip_reason(str(lib))


@pytest.mark.build
def test_build_module_and_jit_loaded_extension():
    """`python -m drn_kernels.build` builds (or finds cached) the extension; a fresh process loads it on first use."""
    out = subprocess.run([sys.executable, "-m", "drn_kernels.build", "--quiet"], cwd=ROOT, capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "drn_kernels.build:" in out.stdout and ".so" in out.stdout
    assert "(jit-cpu;" in out.stdout or "(jit-cuda;" in out.stdout
    code = textwrap.dedent("""
        import os, torch
        from drn_kernels._build import extension as _extension
        m = _extension.load()
        assert m is not None, _extension.why_unavailable("cpu")
        assert _extension.why_unavailable("cpu") is None
        assert os.path.isfile(_extension.library_path())
        assert m.has_openmp()
        x = torch.randn(1, 3, 8, 8)
        y = torch.ops.drn.conv_bn_act_native(x, torch.randn(4, 3, 3, 3), torch.randn(4), [1, 1], [1, 1], [1, 1],
                                             None, True)
        assert y.shape == (1, 4, 8, 8)
        variant = _extension.loaded_variant()
        assert variant == ("in-place" if _extension.in_place_library() else "jit-cuda" if m.has_cuda() else "jit-cpu")
        print("cuda:", m.has_cuda(), _extension.why_unavailable("cuda"))
    """)
    loaded = _run(code, env={**os.environ, "DRN_NO_JIT_BUILD": "1"})
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "cuda:" in loaded.stdout


def test_no_jit_build_reports_reason(tmp_path):
    """Nothing built in the build folder and DRN_NO_JIT_BUILD=1: no module, and why. DRN_BUILD_CUDA=0 makes this
    hold with an in-place drn_kernels._C present too (it is not loaded then)."""
    code = ("from drn_kernels._build import extension as _extension; assert _extension.load() is None; "
            "assert _extension.loaded_variant() is None; print(_extension.why_unavailable('cpu'))")
    out = _run(code, env={**os.environ, "DRN_NO_JIT_BUILD": "1", "DRN_BUILD_DIR": str(tmp_path),
                          "DRN_BUILD_CUDA": "0"})
    assert out.returncode == 0, out.stderr
    assert "DRN_NO_JIT_BUILD=1" in out.stdout and "python -m drn_kernels.build" in out.stdout


@pytest.mark.build
def test_why_unavailable_kinds():
    import torch

    import drn_kernels
    from drn_kernels._build import extension as _extension
    from drn_kernels._build import sim as _sim

    # cuda-sim's answer is the simulator's own: None exactly when its ops are registered, else a reason
    sim = drn_kernels.why_unavailable("cuda-sim", torch.device("cpu"))
    assert sim == _sim.why_unavailable()
    with pytest.raises(ValueError, match="kind"):
        _extension.why_unavailable("cuda-sim")  # a library of its own, not the extension's

    x, w, b = torch.randn(1, 2, 3, 3), torch.randn(3, 2, 1, 1), torch.randn(3)
    if sim is None:  # the backend runs
        out = drn_kernels.conv_bn_act(x, w, b, backend="cuda-sim")
        torch.testing.assert_close(out, drn_kernels.conv_bn_act(x, w, b, backend="reference"))
    else:  # the backend refuses, naming the reason
        assert isinstance(sim, str) and sim
        assert drn_kernels.available_backends("cpu")["cuda-sim"] is not None
    with pytest.raises(ValueError):
        _extension.why_unavailable("gpu")


@pytest.mark.build
@pytest.mark.slow
def test_setup_py_builds_extension_with_torch(tmp_path):
    """What `pip install --no-build-isolation -e .` runs: setup.py sees torch and builds drn_kernels._C (CPU-only
    here to keep it to about a minute; built into tmp_path, then loaded in a fresh process)."""
    env = {**os.environ, "DRN_BUILD_CUDA": "0", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                          "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    libs = list((tmp_path / "lib" / "drn_kernels").glob("_C*.so"))
    assert len(libs) == 1
    code = textwrap.dedent(f"""
        import importlib.util, torch
        import drn_kernels._schemas
        spec = importlib.util.spec_from_file_location("drn_kernels._C", {str(libs[0])!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        assert m.has_openmp() and not m.has_cuda()
        labels, probs = torch.ops.drn.class_head_native(torch.randn(1, 4, 3, 5), torch.randn(6, 4), torch.randn(6),
                                                         8, torch.int64)
        assert labels.shape == (1, 24, 40)
    """)
    loaded = _run(code)
    assert loaded.returncode == 0, loaded.stderr


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.pip_install
def test_pip_wheel_isolated_has_no_extension(tmp_path):
    """pip's default build isolation has no torch: the wheel carries the Python package and no compiled _C."""
    import shutil

    src = tmp_path / "src"  # a copy: the wheel build writes build/ and *.egg-info next to setup.py
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "*.so",
                                                             "__pycache__", ".pytest_cache", ".benchmarks"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(src)],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import zipfile

    (wheel,) = tmp_path.glob("drn_kernels-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "drn_kernels/_build/config.py" in names
    assert not [n for n in names if n.endswith(".so")]
