"""The AVX2-only emulation that `make test`'s second CPU pass runs under is real: each library honours its variable.

An AVX2-only x86 CPU (AMD Zen 2/3, Intel Haswell to Skylake client) is emulated on a newer one with three
variables, one per library: ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN: no AVX-512 kernels, so no bfloat16 convolution),
ATEN_CPU_CAPABILITY=avx2 (ATen's vectorised kernels) and DRN_CPU_ISA=avx2 (this package's Winograd transforms and
GEMM; no bfloat16 GEMM). Each is checked in a fresh process, since oneDNN and ATen read theirs once at start-up.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import require_backend

pytestmark = pytest.mark.build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "DRN_CPU_ISA": "avx2"}

_PROBE = textwrap.dedent("""
    import json, torch, drn_kernels
    drn_kernels.available_backends("cpu")
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.ops.mkldnn._convolution_pointwise(x, torch.randn(16, 16, 3, 3), None, [1, 1], [1, 1], [1, 1], 1, "none",
                                            [], "")  # oneDNN itself: it prints its ISA on first use
    xb = torch.randn(1, 64, 9, 9).bfloat16()
    wb = (torch.randn(64, 64, 3, 3) * 0.05).bfloat16()
    print(json.dumps({"aten": torch.backends.cpu.get_cpu_capability(), "drn": torch.ops.drn.cpu_isa(),
                      "bf16_gemm": torch.ops.drn.cpu_bf16_gemm(),
                      "onednn_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                      "tiles": torch.ops.drn.cpu_winograd_tiles(xb, wb, [1, 1]),
                      "path": torch.ops.drn.cpu_conv_algorithm(xb, wb, [2, 2])}))
""")


def _probe(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ONLY}
    env.update(env_extra, ONEDNN_VERBOSE="1")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    isa = [ln.split("isa:", 1)[1] for ln in lines if ln.startswith("onednn_verbose") and ",isa:" in ln]
    return json.loads(lines[-1]), isa[0] if isa else None


def _cpu_has(flag):
    with open("/proc/cpuinfo") as f:
        return any(flag in line.split() for line in f if line.startswith("flags"))


def test_each_library_honours_its_variable():
    require_backend("cpu")
    if not os.path.exists("/proc/cpuinfo") or not _cpu_has("avx2"):
        pytest.skip("needs an x86 CPU with AVX2 (Linux)")
    native, native_isa = _probe({})
    emulated, emulated_isa = _probe(AVX2_ONLY)
    # ATen
    assert emulated["aten"] == "AVX2"
    # oneDNN: its ISA line, and no bfloat16 convolution without AVX-512
    assert emulated_isa is not None and "AVX2" in emulated_isa and "AVX-512" not in emulated_isa, emulated_isa
    assert emulated["onednn_bf16"] is False
    # ours: AVX2 kernels, float32 GEMM for bfloat16 (both Winograd tiles), oneDNN for a strided bf16 conv
    assert emulated["drn"] == "avx2" and emulated["bf16_gemm"] is False and emulated["tiles"] == [4, 2]
    assert emulated["path"] == "onednn"
    # and without the variables, what the CPU has
    if _cpu_has("avx512f") and _cpu_has("avx512vl") and _cpu_has("avx512dq"):
        assert native["drn"] == "avx512" and "AVX-512" in (native_isa or "") and native["aten"] != "AVX2"
        assert native["bf16_gemm"] == _cpu_has("avx512_bf16")
        assert native["tiles"] == ([2] if native["bf16_gemm"] else [4, 2])


def test_this_process_runs_as_its_variables_say():
    """Under `make test`'s emulated pass this process itself is AVX2-only: the expectations of the other tests
    must come from what the CPU (or the emulation) offers, which is what this pins."""
    require_backend("cpu")
    if os.environ.get("DRN_CPU_ISA", "").lower() != "avx2" or "ONEDNN_MAX_CPU_ISA" not in os.environ:
        pytest.skip("only in the emulated pass (make test sets the three variables)")
    assert torch.ops.drn.cpu_isa() == "avx2" and not torch.ops.drn.cpu_bf16_gemm()
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()
