"""drn.tools.flops and drn.tools.profile: FLOP counts match published figures; a real profiled run; the CLI's JSON."""
import json
import subprocess
import sys

import pytest
import torch

import drn
from drn.fused import FusedConv
from drn.tools import profile
from drn.tools.flops import conv_count, count_layers, device_peaks, roofline_fraction
from helpers import require_backend

pytestmark = pytest.mark.unit

# OpenVINO Open Model Zoo, public model "drn-d-38" (Cityscapes, 19 classes, 1x3x1024x2048):
# 1768.3276 GFLOPs, 25.9939 M parameters (BatchNorm folded into the convs).
OPENVINO_DRN_D_38_GFLOPS = 1768.3276
OPENVINO_DRN_D_38_MPARAMS = 25.9939


def test_drn_d_38_segment_flops_match_openvino():
    model = profile.build_meta_model("drn_d_38", "segment", 19)
    rows = count_layers(model, (1, 3, 1024, 2048))
    gflops = sum(r.flops for r in rows) / 1e9
    assert abs(gflops - OPENVINO_DRN_D_38_GFLOPS) / OPENVINO_DRN_D_38_GFLOPS < 0.01
    fused = profile.build_meta_model("drn_d_38", "segment", 19, fused=True)
    fused_rows = count_layers(fused, (1, 3, 1024, 2048))
    assert sum(r.flops for r in fused_rows) == sum(r.flops for r in rows)
    assert abs(sum(r.params for r in fused_rows) / 1e6 - OPENVINO_DRN_D_38_MPARAMS) < 0.01
    assert [r.name for r in rows][-2:] == ["seg", "up"] and rows[-1].kind == "conv_transpose"


def test_conv_count_by_hand():
    c = conv_count("x", (2, 16, 9, 13), (2, 32, 9, 13), (32, 16, 3, 3), residual=True, itemsize=2)
    assert c.flops == 2 * 2 * 32 * 9 * 13 * 16 * 9
    assert c.bytes == 2 * (2 * 16 * 9 * 13 + 2 * 2 * 32 * 9 * 13 + 32 * 16 * 9 + 32)
    up = conv_count("up", (1, 19, 4, 5), (1, 19, 32, 40), (19, 1, 16, 16), (8, 8), groups=19, transposed=True,
                    bias=False)
    assert up.flops == 2 * 19 * 4 * 5 * 256


def test_counts_follow_the_model_structure():
    """Every conv of the model is counted once; drn_c_58's unused projection only in the unfused model."""
    for name in ("drn_a_18", "drn_c_58", "drn_d_22"):
        model = profile.build_meta_model(name)
        rows = count_layers(model, (1, 3, 224, 224))
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "fc"]
        assert sorted(r.name for r in rows[:-1]) == sorted(convs) and rows[-1].name == "fc"
        fused_rows = count_layers(profile.build_meta_model(name, fused=True), (1, 3, 224, 224))
        skipped = {"layer7.0.downsample.0"} if name == "drn_c_58" else set()
        # same convs; the fused block runs its projection before the conv that adds it, so the order differs
        assert sorted(r.name for r in fused_rows) == sorted(r.name for r in rows if r.name not in skipped)


@pytest.mark.build
def test_roofline_fraction():
    peaks = device_peaks("cpu")
    assert peaks.flops > 0 and peaks.bytes_per_s > 0
    compute_bound = roofline_fraction(peaks.flops, 1, 1.0, peaks)
    assert compute_bound == pytest.approx(1.0)


def test_profiled_run_small_cpu():
    """Each layer's time is its own: a layer made 0.2 s slower (a sleep in its forward hook) shows the 0.2 s in its
    row, and the rows add up to no more than the measured total, so the sleep is counted once."""
    import time

    model = drn.build("drn_d_22", num_classes=10, fused=True, backend="reference")
    x = torch.randn(1, 3, 32, 48)
    slow = next(m for m in model.modules() if isinstance(m, FusedConv) and m.name == "layer4.0.conv1")
    slow.register_forward_hook(lambda m, a, out: time.sleep(0.2))  # runs before the profiler's closing hook
    rows, total = profile.profile_model(model, x, "classify", iters=1)
    convs = [r for r in rows if r.count is not None and r.name != "head"]
    n_convs = sum(isinstance(m, FusedConv) for m in model.modules())
    assert len(convs) == n_convs == 25 and all(r.seconds > 0 for r in convs)
    assert {r.name: r.seconds for r in convs}["layer4.0.conv1"] >= 0.2
    assert total >= sum(r.seconds for r in rows) * 0.99 >= 0.2
    assert all(r.backend == "reference" for r in convs)
    stem = next(r for r in convs if r.count.kernel == (7, 7))  # 3 -> 16 channels, 7x7, stride 1, on 32x48
    assert stem.count.flops == 2 * 16 * 32 * 48 * 3 * 7 * 7


@pytest.mark.build
def test_profile_names_the_cpu_algorithm(cpu_settings):
    """The cpu backend's rows say which algorithm each layer chose: fp32 3x3 stride-1 convs with >= 64 channels
    by measurement among Winograd F(4x4), F(2x2) and oneDNN (drn_kernels.prepared), oneDNN for the rest;
    DRN_CPU_CONV=winograd / direct pins it."""
    require_backend("cpu")
    cpu_settings.unset("DRN_CPU_CONV")
    cpu_settings.unset("DRN_WINOGRAD_TILE")
    x = torch.randn(1, 3, 32, 48)

    def rows():
        model = drn.build("drn_d_22", num_classes=10, fused=True, backend="cpu")
        return {r.name: r.backend for r in profile.profile_model(model, x, "classify", iters=1)[0]}

    measured = rows()
    assert {measured["layer6.1.conv2"], measured["layer3.0.conv2"]} <= {"cpu:winograd4", "cpu:winograd2",
                                                                        "cpu:onednn"}
    assert measured["layer1.0"] == measured["layer4.0.conv1"] == measured["layer4.0.downsample.0"] == "cpu:onednn"
    cpu_settings.set("DRN_CPU_CONV", "winograd")
    assert rows()["layer6.1.conv2"] == "cpu:winograd4"
    cpu_settings.set("DRN_CPU_CONV", "direct")
    assert rows()["layer6.1.conv2"] == "cpu:onednn"


def test_profile_segment_unfused_with_trace(tmp_path):
    model = drn.build("drn_c_26", task="segment", num_classes=5)
    rows, total = profile.profile_model(model, torch.randn(1, 3, 40, 40), "segment", iters=1,
                                        trace=str(tmp_path / "t.json"))
    assert rows[-1].name == "head" and rows[-1].count.name == "seg+up"
    assert {"traceEvents"} <= json.loads((tmp_path / "t.json").read_text()).keys()


def run_cli(*args):
    out = subprocess.run([sys.executable, "-m", "drn.profile", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_json_flops_only():
    result = json.loads(run_cli("drn_d_38", "--task", "segment", "--flops-only", "--json"))
    assert result["total_gflops"] == pytest.approx(OPENVINO_DRN_D_38_GFLOPS, rel=0.01)
    assert isinstance(result["layers"], list) and result["layers"][0]["name"] == "base.0.0"


@pytest.mark.build
def test_cli_json_timed_and_table():
    result = json.loads(run_cli("drn_d_22", "--fused", "--backend", "reference", "--size", "32", "32",
                                "--iters", "1", "--json"))
    layers = result["layers"]
    assert all("time_ms" in layer and "roofline" in layer for layer in layers)
    # the rates are the counts over the times, the rows add up to the total, the stem's FLOPs are 2*K*P*Q*C*R*S
    assert result["total_gflops"] == pytest.approx(sum(layer["gflops"] for layer in layers))
    assert 0 < sum(layer["time_ms"] for layer in layers) <= result["time_ms"] * 1.01
    for layer in layers:
        if layer["time_ms"] > 0:
            assert layer["tflops_per_s"] == pytest.approx(layer["flops"] / (layer["time_ms"] * 1e-3) / 1e12)
    stem = next(layer for layer in layers if layer["kernel"] == [7, 7])
    assert stem["flops"] == 2 * 16 * 32 * 32 * 3 * 7 * 7
    table = run_cli("drn_c_26", "--flops-only", "--size", "1000", "1000", "--batch", "4")
    assert "total:" in table and "layer8.0.conv2" in table


@pytest.mark.build
def test_cpu_roofline_peak_is_the_fma_peak(cpu_settings):
    """The CPU's float32 roofline ceiling is drn::cpu_fma_peak (FMA chains on every thread), per ISA; no speed
    is asserted, only that it measured something and says so."""
    require_backend("cpu")
    from drn.tools import flops

    assert flops.cpu_fma_peak("avx2") > 0
    with pytest.raises(ValueError, match="isa"):
        torch.ops.drn.cpu_fma_peak(7, 10)
    with pytest.raises(ValueError, match="iters"):
        torch.ops.drn.cpu_fma_peak(-1, 0)
    cpu_settings.set("DRN_CPU_ISA", "avx2")
    peaks = flops.device_peaks("cpu", torch.float32)
    assert peaks.source == "measured FMA peak" and "avx2" in peaks.device and peaks.flops > 0
