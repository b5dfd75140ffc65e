"""The benchmark suite's guards against misleading numbers, on the CPU: Inductor cases cannot silently
run eager, every case's output is checked against the float64 reference on poisoned buffers, precision and dtype
reach every provider and the roofline, the Triton autotune keys hold the problem size, measured ceilings win over
datasheet figures."""
import json
import subprocess
import sys

import pytest
import torch

import drn_kernels
from benchmarks import common
from drn.tools import flops

pytestmark = pytest.mark.unit

# Tiny layers (fast on 2 cores) that differ in geometry, so each is a recompile of ConvBNAct.forward.
TINY = [common.LayerShape(1, 4, 7, 6, 5, 3, 3, 1, d, d, residual=d % 2 == 0, relu=True, first_seen=f"tiny{d}")
        for d in (1, 2, 3, 4)]


def _eager_backend(gm, example_inputs):
    return gm.forward


class FakeBenchmark:
    """What common.run needs of pytest-benchmark's fixture, in --benchmark-disable mode."""
    disabled = True
    name = "fake"

    def __init__(self):
        self.extra_info, self.group, self.calls = {}, None, 0

    def __call__(self, fn):
        self.calls += 1
        return fn()


def _x(shape, dtype=torch.float32):
    return torch.randn(shape.n, shape.c, shape.h, shape.w, dtype=dtype)


# ---- 1: Inductor cannot silently time eager ---------------------------------------------------------------------

@torch._dynamo.config.patch(recompile_limit=1)
def test_compiled_cases_run_their_graph_past_the_recompile_limit():
    for shape in TINY[:3]:  # past the limit
        module = common.ConvBNAct(shape)
        compiled, counter = common.compile_case(module, _eager_backend)
        x = _x(shape)
        res = torch.randn(shape.count().out_shape) if shape.residual else None
        with torch.no_grad():
            out = compiled(x, res)
        assert (counter.graphs, counter.calls) == (1, 1), shape.first_seen
        torch.testing.assert_close(out, module(x, res))


@torch._dynamo.config.patch(recompile_limit=1)
def test_without_the_reset_dynamo_runs_eager_and_the_counter_shows_it():
    """The control: what the guard catches is real (shared forward, limit hit, eager fallback, no error)."""
    torch._dynamo.reset()
    calls = []
    for shape in TINY[:3]:
        counter = common.CountingBackend(_eager_backend)
        compiled = torch.compile(common.ConvBNAct(shape), backend=counter)
        with torch.no_grad():
            compiled(_x(shape), torch.randn(shape.count().out_shape) if shape.residual else None)
        calls.append(counter.calls)
    torch._dynamo.reset()
    assert calls[0] == 1 and calls[-1] == 0, calls


def test_run_refuses_a_compiled_case_whose_graph_never_ran():
    shape = TINY[0]
    module = common.ConvBNAct(shape)
    x = _x(shape)
    runner = common.Runner([lambda: module(x)], common.CountingBackend(_eager_backend))  # eager: counter stays 0
    with pytest.raises(AssertionError, match="no compiled graph ran"):
        common.run(FakeBenchmark(), group="g", provider="inductor", runner=runner, flops=1, nbytes=1)


# ---- 6: the output check inside a case ----------------------------------------------------------------------------

def _layer_case(provider, shape=TINY[1], dtype=torch.float32):
    runner = common.layer_runner(provider, shape, dtype)
    return runner, lambda: common.layer_reference(shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("provider", ["eager-cl", pytest.param("cpu", marks=pytest.mark.build)])
def test_output_check_passes_a_right_kernel(provider, dtype):
    if common.why_unavailable(provider, dtype):
        pytest.skip(common.why_unavailable(provider, dtype))
    runner, reference = _layer_case(provider, dtype=dtype)
    bench = FakeBenchmark()
    common.run(bench, group=f"g-{provider}", provider=provider, runner=runner, flops=1, nbytes=1, dtype=dtype,
               reference=reference)
    check = bench.extra_info["output_check"]
    assert check["max_err_0"] <= 4 * check["torch_max_err_0"] + common.CHECK_FLOOR[dtype] * 10
    assert bench.extra_info["dtype"] == common.dtype_name(dtype) and bench.calls == 1


@pytest.mark.build
def test_output_check_fails_a_wrong_kernel():
    shape = TINY[1]
    runner, reference = _layer_case("cpu", shape)
    right = runner.calls[0]
    wrong = common.Runner([lambda: right() * 1.01])  # off by 1%: far beyond fp32's error
    with pytest.raises(AssertionError, match="max error"):
        common.run(FakeBenchmark(), group="g-wrong", provider="cpu", runner=wrong, flops=1, nbytes=1,
                   reference=reference)


@pytest.mark.build
def test_output_check_sees_an_unwritten_element():
    shape = TINY[1]
    runner, reference = _layer_case("cpu", shape)
    right = runner.calls[0]

    def skips_one():  # a kernel that forgets one element of a fresh output buffer
        y = right()
        out = torch.empty_like(y, memory_format=torch.contiguous_format)
        out.view(-1)[1:] = y.reshape(-1)[1:]
        return out

    with pytest.raises(AssertionError, match="NaN elements"):
        common.check_case(common.Runner([skips_one]), reference, torch.float32)
    with common.poisoned_outputs():
        out = torch.empty(3)
    assert torch.isnan(out).all()


def test_output_check_of_labels():
    ref = torch.arange(2000) % 7
    common.check_output(ref.clone(), ref, ref, torch.float16)
    wrong = ref.clone()
    wrong[:100] += 1
    with pytest.raises(AssertionError, match="labels differ"):
        common.check_output(wrong, ref, ref, torch.float16)
    unwritten = ref.clone()
    unwritten[5] = torch.iinfo(torch.int64).max  # one label left as poisoned: below any mismatch budget
    with pytest.raises(AssertionError, match="poison value"):
        common.check_output(unwritten, ref, ref, torch.float16)


# ---- 2: dtype and precision ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["eager-nchw", "eager-cl", pytest.param("cpu", marks=pytest.mark.build)])
def test_dtype_reaches_the_provider(provider):
    runner = common.layer_runner(provider, TINY[2], torch.bfloat16, sets=2)
    assert len(runner.calls) == 2
    with torch.no_grad():
        outs = [call() for call in runner.calls]
    assert all(o.dtype == torch.bfloat16 for o in outs) and not torch.equal(outs[0], outs[1])  # two input sets


def test_set_precision_turns_tf32_off_through_both_apis():
    """In a fresh process: torch's TF32 switches are global, and mixing its two APIs makes the getters raise."""
    code = ("import torch; from benchmarks import common; from drn_kernels.triton import common as c\n"
            "print(common.set_precision())\n"
            "b = torch.backends\n"
            "print(b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),"
            " c.precision_as_cudnn(torch.float32))\n"
            "if hasattr(b.cuda.matmul, 'fp32_precision'):\n"
            "    print(b.cuda.matmul.fp32_precision, b.cudnn.fp32_precision, b.cudnn.conv.fp32_precision)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert "'tf32': False" in lines[0]
    assert lines[1] == "False False highest ieee"
    if len(lines) > 2 and lines[2]:
        assert lines[2] == "ieee ieee ieee"


def test_peaks_per_dtype_and_measured_ceilings_first(tmp_path, monkeypatch):
    h200 = "NVIDIA H200"
    assert flops.peaks_from(h200, torch.float16) == flops.Peaks(h200, 989e12, 4.8e12, "datasheet")
    assert flops.peaks_from(h200, torch.float32).flops == 67e12  # TF32 off: the plain FP32 peak
    assert flops.peaks_from("a GPU nobody listed", torch.float16) is None
    assert flops.peaks_from(h200, torch.float32, tf32=True).flops == 495e12
    ceilings = {"copy_gbps": 4300.0, "matmul_tflops": {"fp16": 700.0}}
    p16 = flops.peaks_from(h200, torch.float16, ceilings)
    assert (p16.flops, p16.bytes_per_s, p16.source) == (700e12, 4300e9, "device-check")
    p32 = flops.peaks_from(h200, torch.float32, ceilings)  # no fp32 matmul measured: datasheet flops
    assert (p32.flops, p32.bytes_per_s, p32.source) == (67e12, 4300e9, "flops:datasheet+bytes:device-check")
    f = tmp_path / "check.json"
    f.write_text(json.dumps({"device": h200, "ceilings": ceilings}))
    assert common.measured_ceilings("NVIDIA_H200", file=str(f)) == (ceilings, str(f))
    assert common.measured_ceilings("NVIDIA_H100_80GB_HBM3", file=str(f)) == (None, None)
    monkeypatch.setattr(common, "CEILINGS_FILE", str(f))  # what --ceilings sets for a benchmark session
    assert common.measured_ceilings("NVIDIA_H200") == (ceilings, str(f))


def test_run_records_timing_and_roofline_per_dtype(benchmark):
    """A real (enabled) pytest-benchmark fixture when timing is on; with --benchmark-disable the check only."""
    runner, reference = _layer_case("eager-cl", TINY[0], torch.bfloat16)
    common.run(benchmark, group="g-timed", provider="eager-cl", runner=runner, flops=10**6, nbytes=10**5,
               dtype=torch.bfloat16, reference=reference)
    info = benchmark.extra_info
    assert info["dtype"] == "bfloat16" and info["tf32"] is False and "output_check" in info
    if not getattr(benchmark, "disabled", False):
        assert info["peaks_dtype"] == "bf16" and info["rounds"] >= 3 and info["min_s"] <= info["median_s"]


# ---- 5: autotune keys hold the problem size -----------------------------------------------------------------------

def _tuner_keys(monkeypatch, tuner, launch, sizes):
    """The autotune cache keys triton's real Autotuner.run computes for launches at `sizes`, with benchmarking
    and the kernel launch itself stubbed out (the interpreter does not autotune)."""
    from drn_kernels import _backends

    monkeypatch.setattr(_backends, "triton_interpreting", lambda: False)
    monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(tuner, "_bench", lambda *a, config, **k: [float(tuner.configs.index(config) + 1)])
    monkeypatch.setattr(tuner.fn, "run", lambda *a, **k: None)
    with common.record_triton_configs() as configs:
        for size in sizes:
            launch(size)
    return list(tuner.cache), configs


def test_conv_autotune_key_buckets_m(monkeypatch):
    conv_mod = pytest.importorskip("drn_kernels.triton.conv_bn_act")
    from drn_kernels.triton.common import size_bucket

    tuner = conv_mod.TUNED[(False, True)]  # nested reduction (C >= 32), fp32
    assert "M_BUCKET" in tuner.keys and size_bucket(42) == 64 and size_bucket(64) == 64
    w, b = torch.randn(8, 40, 3, 3), torch.randn(8)

    def launch(hw):  # M = 1 * h * w output pixels (3x3, padding 1)
        h, wd = hw
        torch.ops.drn.conv_bn_act_triton(torch.randn(1, 40, h, wd), w, b, [1, 1], [1, 1], [1, 1], None, True)

    keys, configs = _tuner_keys(monkeypatch, tuner, launch, [(6, 7), (6, 8), (12, 7), (224, 224)])
    m_at = tuner.keys.index("M_BUCKET")
    assert [k[m_at] for k in keys] == [64, 128, 65536]  # M = 42 and 48 share a bucket, 84 and 50176 do not
    assert {c["key"]["M_BUCKET"] for c in configs} == {64, 128, 65536}
    assert all(c["kernel"] == "conv_bn_act[nested,fp32]" and "BLOCK_M" in c["config"] for c in configs)


def test_class_head_autotune_key_buckets_pixels(monkeypatch):
    head_mod = pytest.importorskip("drn_kernels.triton.class_head")
    tuner = head_mod.CLASS_HEAD_TUNED[True]
    w, b = torch.randn(19, 16, 1, 1), torch.randn(19)

    def launch(n_hw):
        n, h, wd = n_hw
        torch.ops.drn.class_head_triton(torch.randn(n, 16, h, wd), w, b, 1, torch.int64)

    keys, _ = _tuner_keys(monkeypatch, tuner, launch, [(1, 28, 28), (1, 28, 29), (8, 28, 28), (1, 128, 256)])
    at = tuner.keys.index("PIX_BUCKET")
    assert [k[at] for k in keys] == [1024, 8192, 32768]
    assert "PIX_BUCKET" in head_mod.UPSAMPLE_ARGMAX_TUNED.keys


# ---- 3: speedups against cudnn-fused too ---------------------------------------------------------------------------

def test_report_has_a_column_against_cudnn_fused():
    from benchmarks import report

    def rec(provider, median):
        return {"group": "layer:x:float16", "provider": provider, "median": median,
                "info": {"baseline": "cudnn", "fused_baseline": "cudnn-fused"}}

    records = [rec("cudnn", 4.0), rec("cudnn-fused", 2.0), rec("triton", 1.0)]
    assert report.speedups(records)[("layer:x:float16", "triton")] == 4.0
    assert report.speedups(records, "fused_baseline")[("layer:x:float16", "triton")] == 2.0
    text = report.table(records)
    assert "vs cudnn-fused" in text and "2.00x" in text


def test_cpu_goals_take_the_fastest_fp32_peer():
    """The CPU goal ratios: fused cpu against the *fastest* fp32 peer of the same case (not eager alone), and
    fused bf16 against that same fp32 peer; cases without the fused provider or any peer are left out."""
    from benchmarks import report

    def rec(group, provider, median):
        return {"group": group, "provider": provider, "median": median, "info": {}}

    g = "model:drn_d_22:classify:1x3x224x224"
    records = [rec(f"{g}:float32", "eager-cl", 8.0), rec(f"{g}:float32", "openvino", 5.0),
               rec(f"{g}:float32", "inductor", 6.0), rec(f"{g}:float32", "cpu", 2.5),
               rec(f"{g}:bfloat16", "cpu", 2.0), rec(f"{g}:bfloat16", "eager-cl", 1.0),  # bf16 peers don't count
               rec("model:x:classify:1:float32", "eager-cl", 1.0)]
    (row,) = report.cpu_goals(records)
    assert row["fastest_peer"] == "openvino" and row["fp32_ratio"] == 2.0 and row["bf16_ratio"] == 2.5
    assert row["bf16_vs_fp32"] == 0.8  # fused bf16 time over fused fp32 time (the goal without native bf16)
    assert ("| drn_d_22:classify:1x3x224x224 | openvino 5000.0 ms | 2500.0 ms | 2.00x | 2000.0 ms | 2.50x | 0.80x | "
            "one after another |") in report.goals_markdown([row])


def test_cpu_goals_prefer_the_interleaved_timing():
    """A case timed both ways: the interleaved goal group (test_bench_cpu_goals.py) is the one reported."""
    from benchmarks import report

    def rec(group, provider, median):
        return {"group": group, "provider": provider, "median": median, "info": {}}

    case = "drn_d_22:classify:1x3x224x224"
    records = [rec(f"model:{case}:float32", "onnxruntime", 9.0), rec(f"model:{case}:float32", "cpu", 3.0),
               rec(f"goal:{case}:float32", "onnxruntime", 6.0), rec(f"goal:{case}:float32", "cpu", 4.0),
               rec(f"goal:{case}:bfloat16", "cpu", 2.0),
               rec("model:drn_c_26:classify:1x3x224x224:float32", "inductor", 5.0),
               rec("model:drn_c_26:classify:1x3x224x224:float32", "cpu", 2.0)]
    rows = report.cpu_goals(records)
    assert [(r["case"], r["timing"], r["fp32_ratio"]) for r in rows] == [
        ("drn_c_26:classify:1x3x224x224", "one after another", 2.5), (case, "interleaved", 1.5)]
    assert rows[1]["bf16_ratio"] == 3.0


def test_interleaved_times_rotate_the_order():
    """Every provider runs once per round, and each round starts one provider later than the one before."""
    order = []
    calls = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times = common.interleaved_times(calls, 4)
    assert order == list("abc" "bca" "cab" "abc")
    assert {n: len(t) for n, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for ts in times.values() for t in ts)
    order.clear()
    for r in range(3):  # one round per call, as the goal benchmark calls it: the same rotation
        common.interleaved_times(calls, 1, first_round=r)
    assert order == list("abc" "bca" "cab")


def test_onnx_export_leaves_the_model_in_eval_mode():
    """The exported providers (onnxruntime, openvino) export a model wrapped in its predict: the TorchScript
    exporter restores a module's *own* training flag after tracing, recursively, which once left the harness's
    shared eval-mode model (the reference of every later case) in training mode — BatchNorm on batch statistics,
    64% of the segmentation labels 'wrong' for the exported providers. The export must not touch the model."""
    pytest.importorskip("onnx")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    common._onnx_export(torch.nn.Sequential(model), (x,))  # a wrapper in training mode, as _Predict(model)
    assert not any(m.training for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_results_file_keeps_what_a_session_did_not_remeasure(tmp_path):
    """Running one benchmark file updates the machine's results JSON: its records replace those of the same group
    and name; the others stay (a GEMM-only run must not erase the model goals)."""
    from benchmarks import conftest as bench_conftest

    path = tmp_path / "cpu.json"
    old = [{"group": "goal:a", "name": "t[a]", "stats": {"median": 1.0}},
           {"group": "gemm:x", "name": "t[x]", "stats": {"median": 2.0}}]
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": old}))
    new = [{"group": "gemm:x", "name": "t[x]", "stats": {"median": 3.0}}]
    assert bench_conftest.merged(path, new) == [old[0], new[0]]
    path.write_text("not json")
    assert bench_conftest.merged(path, new) == new
    assert bench_conftest.merged(tmp_path / "missing.json", new) == new
