"""python -m drn_kernels.aot: the GPU kernels compile for sm_80 and sm_90 without a GPU, with 0 spills, tensor-core
instructions in every fp16/bf16 GEMM kernel and shared memory within the device limit.

The compile runs in a subprocess with TRITON_INTERPRET unset (this test process has it set, so its kernels are
interpreted functions). The test covers the first config of every kernel list (fp16, plus fp32 conv on sm_80) to stay around a minute on 2 cores; the full list (every config x dtype) runs through the CLI.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SHARED_LIMITS = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}


def _run_aot(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "drn_kernels.aot", "--json", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def _check_record(r):
    where = f"{r['kernel']} {r['arch']} {r['dtype']} [{r['config']}]"
    assert r["spill_bytes"] == 0, where
    assert 0 < r["registers"] <= 255, where
    assert r["shared_bytes"] <= SHARED_LIMITS[r["arch"]], where
    if r["kernel"] in ("conv_bn_act", "class_head") and r["dtype"] in ("fp16", "bf16"):
        # sm_80: HMMA; sm_90: HGMMA (wgmma) or HMMA, both counted in tensor_core_instructions
        assert r["tensor_core_instructions"] > 0, where


@pytest.mark.slow
def test_aot_subset():
    rc, recs, err = _run_aot("--no-cuda", "--max-configs", "1", "--dtypes", "fp16", "--kernels", "conv_bn_act",
                             "class_head")
    rc2, recs2, err2 = _run_aot("--no-cuda", "--max-configs", "1", "--kernels", "upsample_argmax", "box")
    recs, rc, err = recs + recs2, rc or rc2, err + err2
    keys = {"source", "kernel", "arch", "dtype", "config", "registers", "spill_bytes", "shared_bytes",
            "tensor_core_instructions", "wgmma_instructions"}
    assert recs and all(set(r) == keys and r["source"] == "triton" for r in recs)
    assert {r["kernel"] for r in recs} == {"conv_bn_act", "class_head", "upsample_argmax", "box"}
    assert {r["arch"] for r in recs} == {"sm_80", "sm_90"}
    assert any("FLAT=1" in r["config"] for r in recs) and any("INT64=1" in r["config"] for r in recs)
    assert any("C%16!=0" in r["config"] for r in recs)  # the vector path with C only a multiple of 8
    # the first conv config is the Hopper-sized 128x128x64 tile: wgmma on sm_90, mma.sync on sm_80
    conv = [r for r in recs if r["kernel"] == "conv_bn_act" and "FLAT=0" in r["config"]]
    assert conv and all("BLOCK_C=64" in r["config"] for r in conv)
    assert all(r["wgmma_instructions"] > 0 for r in conv if r["arch"] == "sm_90")
    assert all(r["wgmma_instructions"] == 0 and r["tensor_core_instructions"] > 0 for r in conv
               if r["arch"] == "sm_80")
    for r in recs:
        _check_record(r)
    assert rc == 0, err


def test_aot_exact_fp32_conv():
    rc, recs, err = _run_aot("--no-cuda", "--max-configs", "1", "--dtypes", "fp32", "--kernels", "conv_bn_act",
                             "--arches", "sm_80")
    assert any("DOT=ieee" in r["config"] for r in recs)
    for r in recs:
        _check_record(r)
    assert rc == 0, err


def test_problems_flags_bad_records():
    from drn_kernels import aot

    good = {"source": "triton", "kernel": "conv_bn_act", "arch": "sm_80", "dtype": "fp16", "config": "c",
            "registers": 128, "spill_bytes": 0, "shared_bytes": 1024, "tensor_core_instructions": 8,
            "wgmma_instructions": 0}
    assert aot.problems([good]) == []
    assert aot.problems([{**good, "spill_bytes": 8}])
    assert aot.problems([{**good, "tensor_core_instructions": 0}])
    assert aot.problems([{**good, "shared_bytes": 200 * 1024}])
    assert aot.problems([{**good, "arch": "sm_90", "shared_bytes": 200 * 1024}]) == []


def test_problems_flags_cuda_conv_calls_division_and_missing_ldmatrix():
    from drn_kernels import aot

    good = {"source": "cuda", "kernel": "conv_bn_act_kernel", "arch": "sm_80", "dtype": "fp16", "config": "c",
            "registers": 153, "spill_bytes": 0, "shared_bytes": 65536, "tensor_core_instructions": 64,
            "wgmma_instructions": 0, "ldsm": 24, "calls": 0, "loop_exit_calls": 0, "division_ops": 0,
            "main_loop": None}
    assert aot.problems([good]) == []
    assert aot.problems([{**good, "calls": 2}])
    assert aot.problems([{**good, "division_ops": 12}])
    assert aot.problems([{**good, "ldsm": 0}])
    assert aot.problems([{**good, "dtype": "fp32", "ldsm": 0, "tensor_core_instructions": 0}]) == []
    assert aot.problems([{**good, "kernel": "class_head_pixel_kernel", "calls": 2, "ldsm": 0}]) == []


@pytest.mark.build
def test_cuda_report_every_conv_tile():
    """The CUDA half of the report (--no-triton): every conv tile on sm_80 and sm_90 passes the proof (0 spills,
    ldmatrix at 16 bit, no CALL, no integer division) and carries its main-loop mix."""
    from helpers import skip_or_fail_unbuilt
    from drn_kernels._build import cuda_cubins as _cuda_cubins

    reason = _cuda_cubins.why_unavailable()
    if reason is not None:
        skip_or_fail_unbuilt("the CUDA kernels' cubins", reason)
    rc, recs, err = _run_aot("--no-triton")
    conv = [r for r in recs if r["kernel"] == "conv_bn_act_kernel"]
    tiles = {r["config"].split("_BK")[0] for r in conv}
    assert tiles == {"BM64_BN64", "BM128_BN128", "BM128_BN64", "BM64_BN128"}
    assert {r["arch"] for r in conv} == {"sm_80", "sm_90"}
    for r in conv:
        _check_record(r)
        assert r["main_loop"] and r["main_loop"]["division_ops"] == 0
    assert rc == 0, err
