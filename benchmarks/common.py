"""Shared benchmark machinery: providers, dtypes, the layer shapes derived from the models, timing, the output
check and extra_info.

Providers (one pytest-benchmark test each, same group per shape/model/dtype):
  GPU: cudnn (eager conv->BN->ReLU, channels_last), cudnn-fused (folded weights through
       torch.cudnn_convolution_relu / _add_relu), inductor (torch.compile max-autotune without CUDA graphs,
       freezing), triton, cuda
  CPU: eager-nchw, eager-cl (the baseline), cpu (drn_kernels' C++ kernels), onnxruntime and openvino (fp32, when
       installed; openvino: INFERENCE_NUM_THREADS = torch's threads, LATENCY hint, f32 inference precision),
       inductor (torch.compile with freezing, default mode: what a CPU user would pick)
Dtypes: fp16, bf16 and fp32 on the GPU (16-bit first: the tensor-core paths), fp32 and bf16 on the CPU.
Precision is set the same on every side before each case (set_precision): TF32 off through both of torch's
switches, so fp32 is exact fp32 for cuDNN, Inductor, Triton (which follows cudnn.allow_tf32) and the CUDA kernel
alike, and the roofline uses the plain-FP32 peak; cudnn.benchmark on for the cuDNN providers.
Each case (run): a warm-up call (compilation, autotuning, cuDNN's algorithm search: outside time and peak memory),
then one call whose fresh outputs start as NaN (torch's deterministic-mode fill of uninitialized memory; not for
Inductor, which allocates its own buffers) checked against the float64 reference, then the timing:
  GPU: CUDA events (triton.testing.do_bench, L2 flushed before every call), rotating through input sets that
       together hold twice the L2, medians and spread in extra_info; no CUDA graphs for anyone.
  CPU: pytest-benchmark's timer, synchronous calls.
Inductor cases compile with a fresh dynamo cache (torch._dynamo.reset()) through a backend that counts the calls
of the graphs it compiled, and fail unless every timed call ran compiled code (dynamo silently runs eager once a
function hits its recompile limit).
extra_info: FLOPs, bytes, TFLOP/s, GB/s, fraction of the roofline (measured ceilings from the device check when
benchmarks/results/ has them, else datasheet), speedups over the baseline and over cudnn-fused when they ran earlier
in the session (report.py recomputes speedups from the saved JSON either way), the Triton configs the autotuner
chose, the output check's errors.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import itertools
import json
import os
import pathlib
import re
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

import drn
import drn_kernels
from drn_kernels import settings
from benchmarks import harness
from benchmarks.harness import (RESULTS_DIR, LayerShape, cudnn_fused_conv,  # noqa: F401
                                poisoned_outputs)
from drn.tools.flops import count_layers, device_peaks, dtype_key, roofline_fraction, synchronize
from drn.tools.profile import build_meta_model

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GPU_PROVIDERS = ("cudnn", "cudnn-fused", "inductor", "triton", "cuda")
CPU_PROVIDERS = ("eager-cl", "eager-nchw", "cpu", "onnxruntime", "openvino", "inductor")
EXPORTED = ("onnxruntime", "openvino")  # run an exported fp32 graph, outside torch's allocator
PROVIDERS = GPU_PROVIDERS if DEVICE.type == "cuda" else CPU_PROVIDERS
BASELINE = "cudnn" if DEVICE.type == "cuda" else "eager-cl"  # listed first: it runs first in each group
FUSED_BASELINE = "cudnn-fused" if DEVICE.type == "cuda" else None  # cuDNN with BN folded: the fair GPU baseline
DTYPES = ((torch.float16, torch.bfloat16, torch.float32) if DEVICE.type == "cuda"
          else (torch.float32, torch.bfloat16))

LAYER_MODELS = ("drn_c_26", "drn_c_42", "drn_d_22", "drn_d_38")
LAYER_BATCHES = (1, 8)
LAYER_SIZES = ((224, 224), (1024, 2048))

MEDIANS: dict[tuple[str, str], float] = {}   # (group, provider) -> median seconds, this session
RESULTS: list[dict] = []                    # one record per timed benchmark, written by conftest


def device_name() -> str:
    if DEVICE.type == "cuda":
        name = torch.cuda.get_device_name()
    else:
        # the model name, and the family/model numbers: a VM's name can be generic ("AMD EPYC" on Zen 4 and
        # Zen 5 alike, whose FMA peaks differ 2x)
        name, fields = "cpu", {}
        try:
            with open("/proc/cpuinfo") as f:
                for ln in f:
                    key, _, value = ln.partition(":")
                    fields.setdefault(key.strip(), value.strip())
                    if not ln.strip():
                        break
        except OSError:
            pass
        if "model name" in fields:
            name = fields["model name"]
            if "cpu family" in fields and "model" in fields:
                name += f" f{fields['cpu family']}m{fields['model']}"
        name += f" {torch.get_num_threads()}t"
        isa = settings.choice("DRN_CPU_ISA")
        onednn, aten = os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ.get("ATEN_CPU_CAPABILITY")
        if isa != "best" or onednn or aten:
            # an emulated CPU class (ISA capped by these variables): its own file, never the native one's
            name += f" as {isa}_{onednn or '-'}_{aten or '-'}"
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def set_precision() -> dict:
    """The same math on every side, set before every case: TF32 off through the legacy switches (cuDNN and
    drn_kernels' Triton read torch.backends.cudnn.allow_tf32) and through torch >= 2.9's fp32_precision (which
    Inductor's templates read) -- both, in that order, so neither getter sees a mix and raises; cudnn.benchmark on
    for the GPU (the warm-up call runs its algorithm search). Returns the settings for extra_info."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
    torch.backends.cudnn.benchmark = DEVICE.type == "cuda"
    return {"tf32": False, "cudnn_benchmark": torch.backends.cudnn.benchmark}


# The JSON file of measured ceilings that the benchmark session was given (--ceilings, benchmarks/conftest.py);
# None: the newest matching file in benchmarks/results/.
CEILINGS_FILE: Optional[str] = None


def measured_ceilings(name: Optional[str] = None, file: Optional[str] = None) -> tuple[Optional[dict], Optional[str]]:
    """(ceilings, file) measured on this device by the device check: the newest JSON in benchmarks/results/ (or
    `file`, by default CEILINGS_FILE) holding {"ceilings": {"copy_gbps": ..., "matmul_tflops": {...}}} whose device
    (a top-level "device" or machine_info.device, compared as device_name() spells it; without one, a file name
    starting with it) is this one; else (None, None)."""
    name = name or device_name()
    file = file or CEILINGS_FILE
    if file:
        files = [pathlib.Path(file)]
    else:
        files = sorted(RESULTS_DIR.glob("*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("ceilings"), dict):
            continue
        dev = data.get("device") or (data.get("machine_info") or {}).get("device")
        if (re.sub(r"[^A-Za-z0-9]+", "_", str(dev)).strip("_") == name if dev else f.stem.startswith(name)):
            return data["ceilings"], str(f)
    return None, None


def case_peaks(dtype: torch.dtype):
    """The roofline peaks for dtype on this device: measured ceilings over datasheet figures (Peaks.source)."""
    ceilings, _ = measured_ceilings() if DEVICE.type == "cuda" else (None, None)
    return device_peaks(DEVICE, dtype, ceilings)


def why_unavailable(provider: str, dtype: torch.dtype = torch.float32) -> str | None:
    if provider in EXPORTED and dtype != torch.float32:
        return f"{provider} runs the fp32 export only"
    if provider in ("triton", "cuda", "cpu"):
        if provider == "triton" and DEVICE.type != "cuda":
            return "triton on CPU runs in the interpreter: not a benchmark"
        return drn_kernels.available_backends(DEVICE)[provider]
    if provider == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed"
    if provider == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (the test extra has it)"
    if provider in GPU_PROVIDERS and provider not in CPU_PROVIDERS and DEVICE.type != "cuda":
        return f"{provider} needs a CUDA GPU"
    return None


# ---- layer shapes, derived by walking the models ----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _meta_fused(name: str):
    return build_meta_model(name, fused=True)


@functools.lru_cache(maxsize=None)
def layer_shapes(models=LAYER_MODELS, batches=LAYER_BATCHES, sizes=LAYER_SIZES) -> tuple[LayerShape, ...]:
    """Every distinct conv_bn_act call of the fused models, in order of first appearance."""
    seen = {}
    for n in batches:
        for h, w in sizes:
            for name in models:
                for row in count_layers(_meta_fused(name), (n, 3, h, w), torch.float32):
                    if row.kind != "conv" or row.name in ("seg", "up"):
                        continue
                    shape = LayerShape(n, row.in_shape[1], row.in_shape[2], row.in_shape[3], row.out_shape[1],
                                       row.kernel[0], row.kernel[1], row.stride[0], row.padding[0],
                                       row.dilation[0], row.residual, row.relu, f"{name}:{row.name}")
                    key = shape.id
                    seen.setdefault(key, shape)
    return tuple(seen.values())


def kind_id(shape: LayerShape) -> str:
    """The layer kind: kernel, stride, dilation, residual, ReLU, and "thin" for the C < 32 stems (Triton's FLAT
    reduction)."""
    return (f"{shape.r}x{shape.s}_s{shape.stride}_d{shape.dilation}" + ("_res" if shape.residual else "")
            + ("" if shape.relu else "_norelu") + ("_thin" if shape.c < 32 else ""))


# Every kind layer_shapes() yields (the GPU tests are parametrized by these; test_benchmarked_kinds_gpu checks
# the list is complete, on a GPU, since deriving the shapes takes ~30 s of CPU).
LAYER_KINDS = ("7x7_s1_d1_thin", "3x3_s1_d1_thin", "3x3_s1_d1_res_thin", "3x3_s2_d1_thin", "1x1_s2_d1_norelu_thin",
               "3x3_s1_d1_res", "3x3_s2_d1", "1x1_s2_d1_norelu", "3x3_s1_d1", "3x3_s1_d2", "1x1_s1_d1_norelu",
               "3x3_s1_d2_res", "3x3_s1_d4", "3x3_s1_d4_res")


def layer_kinds(shapes=None) -> dict:
    """kind_id -> the largest benchmarked shape of that kind: what the GPU tests run, so every kind the benchmarks
    time is checked at the size it is timed at."""
    best: dict = {}
    for s in shapes if shapes is not None else layer_shapes():
        size = s.n * s.h * s.w * s.c * s.k
        if kind_id(s) not in best or size > best[kind_id(s)][0]:
            best[kind_id(s)] = (size, s)
    return {k: s for k, (_, s) in best.items()}


QUICK_LAYERS = {"drn_d_22:layer0.0", "drn_d_22:layer3.0.conv1", "drn_d_22:layer3.0.downsample.0",
                "drn_d_22:layer6.0.conv2", "drn_d_22:layer7.0"}


@functools.lru_cache(maxsize=None)
def _quick_ids() -> frozenset:
    rows = count_layers(_meta_fused("drn_d_22"), (1, 3, 224, 224), torch.float32)
    wanted = {n.split(":", 1)[1] for n in QUICK_LAYERS}
    return frozenset(s.id for s in layer_shapes(("drn_d_22",), (1,), ((224, 224),))
                     if any(r.name in wanted and s.first_seen == f"drn_d_22:{r.name}" for r in rows))


def is_quick_layer(shape: LayerShape) -> bool:
    return shape.id in _quick_ids()


# ---- layer runners ---------------------------------------------------------------------------------------------

class ConvBNAct(nn.Module):
    """The eager baseline of one layer: conv -> BatchNorm (eval) -> (+ residual) -> ReLU."""

    def __init__(self, shape: LayerShape):
        super().__init__()
        self.conv = nn.Conv2d(shape.c, shape.k, (shape.r, shape.s), shape.stride, shape.padding, shape.dilation,
                              bias=False)
        self.bn = nn.BatchNorm2d(shape.k)
        self.relu = shape.relu
        g = torch.Generator().manual_seed(0)
        self.bn.running_mean.copy_(torch.randn(shape.k, generator=g) * 0.1)
        self.bn.running_var.copy_(torch.rand(shape.k, generator=g) + 0.5)
        self.eval()

    def forward(self, x, residual=None):
        y = self.bn(self.conv(x))
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


def _onnx_export(module: nn.Module, inputs: tuple) -> tuple[bytes, list[str]]:
    """(the ONNX model (opset 17, TorchScript exporter), its input names): what onnxruntime and openvino run.

    A copy in eval mode is exported: the TorchScript exporter puts a module back into its *own* training mode after
    tracing (train(mode) recursively), so exporting a wrapper made in training mode (nn.Module's default) around
    an eval-mode model would leave that model — the harness's cached float64/eager reference — in training mode,
    BatchNorm on batch statistics, and the exported providers' labels would look wrong against it."""
    module = copy.deepcopy(module).eval()
    buf = io.BytesIO()
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buf, dynamo=False, input_names=names, opset_version=17)
    return buf.getvalue(), names


def _ort_session(module: nn.Module, inputs: tuple):
    import onnxruntime as ort

    onnx, names = _onnx_export(module, inputs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    feeds = {n: t.contiguous().numpy() for n, t in zip(names, inputs)}
    return lambda: session.run(None, feeds)


def _openvino_request(module: nn.Module, inputs: tuple):
    """OpenVINO's CPU plugin on `module`'s ONNX export (its torch front end cannot convert the models): f32
    inference precision, the LATENCY hint, INFERENCE_NUM_THREADS = torch's threads (what the other providers get)."""
    import openvino as ov

    onnx, _ = _onnx_export(module, inputs)
    converted = ov.Core().read_model(onnx, b"")
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}
    request = ov.Core().compile_model(converted, "CPU", config).create_infer_request()
    feeds = [t.contiguous().numpy() for t in inputs]
    return lambda: list(request.infer(feeds).values())


class CountingBackend:
    """A torch.compile backend wrapping another one: counts the graphs it compiled and the calls they got, so a
    case can prove its timed calls ran compiled code rather than dynamo's eager fallback."""

    def __init__(self, backend):
        self.backend = backend
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        compiled = self.backend(gm, example_inputs)
        self.graphs += 1

        def counted(*args):
            self.calls += 1
            return compiled(*args)

        return counted


def inductor_max_autotune(gm, example_inputs):
    """Inductor as torch.compile(mode="max-autotune-no-cudagraphs") runs it, with freezing (weights as constants).
    No CUDA graphs: no other provider gets them either."""
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    patches = {**list_mode_options("max-autotune-no-cudagraphs"), "freezing": True}
    return compile_fx(gm, example_inputs, config_patches=patches)


def inductor_freezing(gm, example_inputs):
    """Inductor as torch.compile's default mode runs it, with freezing: the CPU provider (max-autotune on the CPU
    compiles for minutes to autotune GEMM templates that rarely beat oneDNN's)."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches={"freezing": True})


def compile_case(fn, backend=None) -> tuple[Callable, CountingBackend]:
    """torch.compile(fn) with a fresh dynamo cache: every ConvBNAct shares one forward, so without the reset
    the 9th layer shape would hit recompile_limit and run eager, silently."""
    torch._dynamo.reset()
    counter = CountingBackend(backend or (inductor_max_autotune if DEVICE.type == "cuda" else inductor_freezing))
    return torch.compile(fn, backend=counter), counter


@dataclass
class Runner:
    """One case of one provider: a zero-argument callable per input set (calls[0] is the one checked), and the
    counting backend when it was compiled."""
    calls: list
    compiled: Optional[CountingBackend] = None


def _layer_inputs(shape: LayerShape, sets: int):
    """The layer's fp32 module and `sets` (x, residual) pairs on DEVICE, the same on every call (seeded)."""
    torch.manual_seed(0)
    module = ConvBNAct(shape).to(DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    out_shape = shape.count().out_shape
    return module, [(torch.randn((shape.n, shape.c, shape.h, shape.w), generator=g, device=DEVICE),
                     torch.randn(out_shape, generator=g, device=DEVICE) if shape.residual else None)
                    for _ in range(sets)]


def layer_set_bytes(shape: LayerShape, dtype: torch.dtype) -> int:
    """Bytes one input set of the layer and its output occupy."""
    return shape.count(torch.empty((), dtype=dtype).element_size()).bytes


def layer_runner(provider: str, shape: LayerShape, dtype=torch.float32, sets: int = 1) -> Runner:
    """The layer with `provider` in `dtype`, on `sets` input sets (not synchronized)."""
    module, inputs = _layer_inputs(shape, sets)
    if provider in EXPORTED:
        x, res = inputs[0]
        export = _ort_session if provider == "onnxruntime" else _openvino_request
        return Runner([export(module, (x,) if res is None else (x, res))])
    module = module.to(dtype)
    cl = torch.channels_last
    if provider == "eager-nchw":
        inputs = [(x.to(dtype), None if r is None else r.to(dtype)) for x, r in inputs]
        return Runner([functools.partial(module, x, r) for x, r in inputs])
    inputs = [(x.to(dtype).contiguous(memory_format=cl),
               None if r is None else r.to(dtype).contiguous(memory_format=cl)) for x, r in inputs]
    if provider in ("eager-cl", "cudnn", "inductor"):
        module = module.to(memory_format=cl)
        if provider == "inductor":
            compiled, counter = compile_case(module)
            return Runner([functools.partial(compiled, x, r) for x, r in inputs], counter)
        return Runner([functools.partial(module, x, r) for x, r in inputs])
    w, b = drn_kernels.fold_bn(module.conv.weight, module.bn)
    w = w.contiguous(memory_format=cl)
    st, pad, dil = [shape.stride] * 2, [shape.padding] * 2, [shape.dilation] * 2
    if provider == "cudnn-fused":
        return Runner([functools.partial(_cudnn_fused_conv, x, w, b, st, pad, dil, r, shape.relu) for x, r in inputs])
    return Runner([functools.partial(drn_kernels.conv_bn_act, x, w, b, stride=st, padding=pad, dilation=dil,
                                     residual=r, relu=shape.relu, backend=provider) for x, r in inputs])


def layer_reference(shape: LayerShape, dtype: torch.dtype):
    """(float64 output, torch's own output in dtype (eager channels_last)) of the layer on input set 0."""
    module, [(x, res)] = _layer_inputs(shape, 1)
    cl = torch.channels_last
    same = copy.deepcopy(module).to(dtype=dtype, memory_format=cl)
    with torch.no_grad():
        out_same = same(x.to(dtype).contiguous(memory_format=cl),
                        None if res is None else res.to(dtype).contiguous(memory_format=cl))
        out64 = module.double()(x.double(), None if res is None else res.double())
    return out64, out_same


# ---- model runners ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _unfused(name: str, task: str):
    torch.manual_seed(0)
    return drn.build(name, task=task, num_classes=19 if task == "segment" else None)


def _model_inputs(shape, sets: int) -> list:
    g = torch.Generator(device=DEVICE).manual_seed(1)
    return [torch.randn(tuple(shape), generator=g, device=DEVICE) for _ in range(sets)]


def model_set_bytes(shape, dtype: torch.dtype) -> int:
    """Bytes of one input set of a model (its activations come and go inside the call)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


class _Predict(nn.Module):
    """A segmentation model's predict (labels, probs at the input size) as its forward, for the ONNX export: what
    the other providers time for task "segment"."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.predict(x)


def model_runner(provider: str, name: str, task: str, shape, dtype=torch.float32, sets: int = 1,
                 model: Optional[nn.Module] = None) -> Runner:
    """The model (classify: forward, segment: predict) with `provider` in `dtype`, on `sets` input sets; `model`:
    this unfused model instead of drn.build(name) with seed 0 (left as it is: providers work on copies)."""
    from drn.fused import FusedConv

    model = _unfused(name, task) if model is None else model
    xs = _model_inputs(shape, sets)
    if provider in EXPORTED:
        export = _ort_session if provider == "onnxruntime" else _openvino_request
        return Runner([export(_Predict(model) if task == "segment" else model, (xs[0],))])
    xs = [x.to(dtype) for x in xs]
    cl = torch.channels_last
    if provider in ("eager-nchw", "eager-cl", "cudnn", "inductor"):
        m = copy.deepcopy(model).to(device=DEVICE, dtype=dtype)
        if provider != "eager-nchw":
            m = m.to(memory_format=cl)
            xs = [x.contiguous(memory_format=cl) for x in xs]
        fn = m.predict if task == "segment" else m
        counter = None
        if provider == "inductor":
            fn, counter = compile_case(fn)
        return Runner([functools.partial(fn, x) for x in xs], counter)
    backend = "reference" if provider == "cudnn-fused" else provider
    fused = drn.fuse(model, backend=backend).to(device=DEVICE, dtype=dtype)
    if provider == "cudnn-fused":
        def forward(self, inp, residual=None):
            return cudnn_fused_conv(inp, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     residual, self.relu)
        for m in fused.modules():
            if isinstance(m, FusedConv):
                m.forward = forward.__get__(m)
    fn = fused.predict if task == "segment" else fused
    return Runner([functools.partial(fn, x) for x in xs])


def model_reference(name: str, task: str, shape, dtype: torch.dtype, model: Optional[nn.Module] = None):
    """(float64 output, torch's own output in dtype (eager channels_last)) of the unfused model (drn.build(name), or
    `model`) on input set 0."""
    model = _unfused(name, task) if model is None else model
    x = _model_inputs(shape, 1)[0]
    cl = torch.channels_last
    same = copy.deepcopy(model).to(device=DEVICE, dtype=dtype).to(memory_format=cl)
    exact = copy.deepcopy(model).to(device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        xs = x.to(dtype).contiguous(memory_format=cl)
        out_same = same.predict(xs) if task == "segment" else same(xs)
        out64 = exact.predict(x.double()) if task == "segment" else exact(x.double())
    return out64, out_same


def model_counts(name: str, task: str, shape, dtype: torch.dtype = torch.float32):
    rows = count_layers(build_meta_model(name, task, 19 if task == "segment" else None), tuple(shape), dtype)
    return sum(r.flops for r in rows), sum(r.bytes for r in rows)


# ---- memory ----------------------------------------------------------------------------------------------------

def input_sets(bytes_per_set: int) -> int:
    """How many input sets the GPU timing rotates through (harness.input_sets on DEVICE); 1 on the CPU."""
    return harness.input_sets(bytes_per_set, DEVICE)


def memory_bytes(fn) -> tuple[int, int]:
    """(peak, retained) bytes of one fn() call on DEVICE (harness.memory_bytes)."""
    return harness.memory_bytes(fn, DEVICE)


def peak_memory_bytes(fn) -> int:
    """Peak bytes allocated above the starting point while fn() runs (see memory_bytes)."""
    return memory_bytes(fn)[0]


def memory_info(fn) -> dict:
    """extra_info for a model run: the steady-state peak of a call (peak_mb) and what its first call leaves
    allocated for later calls (cache_mb: the transformed weights the CPU kernels keep, for instance). Call on a
    runner that has not run yet."""
    _, retained = memory_bytes(fn)
    peak, _ = memory_bytes(fn)
    return {"peak_mb": peak / 2**20, "cache_mb": retained / 2**20}


# ---- the output check -----------------------------------------------------------------------------------------

# Error allowed on top of 4x torch's own same-dtype error, as a fraction of the largest reference value: a kernel
# whose error is within a few units in the last place of the dtype of torch's passes; a wrong one is off by O(1).
CHECK_FLOOR = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LABEL_FLOOR = 1e-3  # fraction of labels allowed to differ on top of 4x torch's own mismatches (near-ties)


def _as_tensors(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):  # predict's (labels, probs); onnxruntime's list of arrays
        return [t if isinstance(t, torch.Tensor) else torch.from_numpy(t) for t in out]
    raise TypeError(f"cannot check an output of type {type(out).__name__}")


def check_output(out, ref64, same, dtype: torch.dtype) -> dict:
    """Compare out (a tensor or a tuple of them) with the float64 reference: float outputs within 4x torch's own
    same-dtype max error (`same` vs ref64) plus CHECK_FLOOR[dtype] x the largest reference value, no NaN where the
    reference has none; integer outputs (labels) differ in at most 4x torch's own fraction + LABEL_FLOOR.
    Raises AssertionError; returns the errors for extra_info."""
    outs, refs, sames = _as_tensors(out), _as_tensors(ref64), _as_tensors(same)
    assert len(outs) == len(refs), f"output check: {len(outs)} outputs, the reference has {len(refs)}"
    info = {}
    for i, (o, r, t) in enumerate(zip(outs, refs, sames)):
        o, r, t = o.to(r.device), r, t.to(r.device)
        assert tuple(o.shape) == tuple(r.shape), f"output {i}: shape {tuple(o.shape)}, reference {tuple(r.shape)}"
        if r.is_floating_point():
            o, t = o.double(), t.double()
            unwritten = int((torch.isnan(o) & ~torch.isnan(r)).sum())
            assert unwritten == 0, f"output {i}: {unwritten} NaN elements where the reference has none (unwritten?)"
            ok = torch.isfinite(r)
            scale = float(r[ok].abs().max()) if ok.any() else 0.0
            err = float((o - r)[ok].abs().max()) if ok.any() else 0.0
            torch_err = float((t - r)[ok].abs().max()) if ok.any() else 0.0
            allowed = 4 * torch_err + CHECK_FLOOR.get(dtype, 1e-4) * scale
            assert err <= allowed, (f"output {i}: max error {err:.3g} > allowed {allowed:.3g} (torch's own "
                                    f"{dtype_name(dtype)} error {torch_err:.3g}, reference scale {scale:.3g})")
            info[f"max_err_{i}"], info[f"torch_max_err_{i}"] = err, torch_err
        else:
            poison = torch.iinfo(o.dtype).max
            unwritten = int(((o == poison) & (r != poison)).sum())
            assert unwritten == 0, f"output {i}: {unwritten} labels still hold the poison value (unwritten?)"
            wrong = float((o.long() != r.long()).double().mean())
            torch_wrong = float((t.long() != r.long()).double().mean())
            allowed = 4 * torch_wrong + LABEL_FLOOR
            assert wrong <= allowed, (f"output {i}: {100 * wrong:.3g}% of labels differ from the reference > "
                                      f"allowed {100 * allowed:.3g}% (torch's own {100 * torch_wrong:.3g}%)")
            info[f"mismatch_{i}"], info[f"torch_mismatch_{i}"] = wrong, torch_wrong
    return info


_REFERENCE: dict = {}  # the last group's (key, (float64 output, torch's same-dtype output)): shared by providers


def group_reference(key, make: Callable):
    """make() once per group (its providers run one after another), the previous group's freed."""
    if _REFERENCE.get("key") != key:
        _REFERENCE.clear()
        _REFERENCE.update(key=key, value=make())
    return _REFERENCE["value"]


def check_case(runner: Runner, reference: Callable, dtype: torch.dtype, poison: bool = True) -> dict:
    """One call of input set 0, outputs poisoned (poison=False: as they come), against reference() ->
    (float64 output, torch's same-dtype output). Outside any timing."""
    with torch.no_grad(), (poisoned_outputs() if poison else contextlib.nullcontext()):
        out = runner.calls[0]()
        synchronize(DEVICE)
    ref64, same = reference()
    return check_output(out, ref64, same, dtype)


# ---- Triton autotune choices -------------------------------------------------------------------------------------

def _triton_tuners() -> list:
    """(name, triton Autotuner) of drn_kernels' tuned Triton kernels."""
    from drn_kernels.triton import class_head as head_mod
    from drn_kernels.triton import conv_bn_act as conv_mod

    tuners = [(f"conv_bn_act[{'flat' if flat else 'nested'},{'fp32' if fp32 else '16bit'}]", t)
              for (flat, fp32), t in conv_mod.TUNED.items()]
    tuners += [(f"class_head[{'fp32' if fp32 else '16bit'}]", t) for fp32, t in head_mod.CLASS_HEAD_TUNED.items()]
    return tuners + [("upsample_argmax", head_mod.UPSAMPLE_ARGMAX_TUNED)]


@contextlib.contextmanager
def record_triton_configs():
    """Yields a list that fills with {"kernel", "key": {autotune key argument: value}, "config"} for every
    distinct tuned launch of drn_kernels' Triton kernels inside the block: the config the autotuner chose, or
    (with "source") the one drn_kernels.triton.config_table launched from its table or its capped search."""
    from drn_kernels.triton import config_table

    found: list = []
    tuners = _triton_tuners()
    before = set(config_table.CHOSEN)

    def recording(name, tuner):
        original = type(tuner).run

        def run(*args, **kwargs):
            out = original(tuner, *args, **kwargs)
            named = {**dict(zip(tuner.arg_names, args)), **kwargs}
            entry = {"kernel": name, "key": {k: named[k] for k in tuner.keys if k in named},
                     "config": str(tuner.best_config)}
            if entry not in found:
                found.append(entry)
            return out

        return run

    patched = []
    try:
        for name, tuner in tuners:
            tuner.run = recording(name, tuner)
            patched.append(tuner)
        yield found
    finally:
        for tuner in patched:
            del tuner.run
        found += [dict(v, config=str(v["config"])) for k, v in config_table.CHOSEN.items() if k not in before]


# ---- timing + extra_info ---------------------------------------------------------------------------------------

def _record_times(benchmark, seconds: list):
    """Store times measured outside pytest-benchmark (CUDA events) as its stats, so its JSON, its table and
    report.py see them like any other."""
    if not hasattr(benchmark, "_make_stats"):
        raise RuntimeError("this pytest-benchmark has no BenchmarkFixture._make_stats (known in 4.x-5.x): "
                           "cannot store CUDA-event times")
    benchmark._mode = "CUDA events (triton.testing.do_bench)"
    stats = benchmark._make_stats(1)
    for t in seconds:
        stats.update(t)


def cuda_event_times(calls: list, once_s: float) -> list:
    """Seconds per call from CUDA events (triton.testing.do_bench: L2 flushed before every call), rotating through
    `calls` (one per input set); at least ~20 calls and ~0.1 s of them."""
    from triton.testing import do_bench

    rotation = itertools.cycle(calls)

    def step():
        next(rotation)()

    rep_ms = min(5000.0, max(100.0, 20 * once_s * 1e3))
    with torch.no_grad():
        return [ms / 1e3 for ms in do_bench(step, warmup=25, rep=rep_ms, return_mode="all")]


def _quantile(sorted_values: list, q: float) -> float:
    i = q * (len(sorted_values) - 1)
    lo = int(i)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (i - lo)


def interleaved_times(calls: dict, rounds: int, first_round: int = 0) -> dict:
    """Seconds per call of each of `calls` ({name: zero-argument callable}) over `rounds` rounds: each round calls
    every one once, the order rotated by one place per round (round r starts at name r mod len), so a machine whose
    speed drifts during the run (a shared VM's neighbours, two vCPUs on one core) slows every provider alike and
    no one always runs first. first_round: the number of the first round (one round per call, counted outside)."""
    names = list(calls)
    times = {n: [] for n in names}
    with torch.no_grad():
        for r in range(first_round, first_round + rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                calls[n]()
                synchronize(DEVICE)
                times[n].append(time.perf_counter() - start)
    return times


def require_cpu_timing(benchmark, checked_by: str) -> None:
    """Skip unless this is a CPU-only machine with the cpu backend and the run times (--benchmark-only): the CPU
    goal benchmarks time whole passes and leave their output checks to `checked_by`."""
    import pytest

    if DEVICE.type != "cpu":
        pytest.skip("a CPU goal: runs on a CPU-only machine")
    reason = why_unavailable("cpu")
    if reason:
        pytest.skip(reason)
    if getattr(benchmark, "disabled", False):
        pytest.skip(f"timing only (--benchmark-only): {checked_by} checks the outputs")


def add_result(group: str, name: str, provider: str, seconds: list, info: dict) -> None:
    """One results record (what conftest writes and report.py reads) from times measured outside
    pytest-benchmark's timer."""
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    MEDIANS[(group, provider)] = median
    RESULTS.append({"group": group, "name": name, "provider": provider,
                    "stats": {"min": ordered[0], "max": ordered[-1], "mean": statistics.fmean(ordered),
                              "median": median, "stddev": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
                              "rounds": len(ordered)},
                    "extra_info": dict(info, provider=provider, median_s=median, min_s=ordered[0],
                                       max_s=ordered[-1], rounds=len(ordered))})


def run(benchmark, *, group: str, provider: str, runner: Runner, flops: int, nbytes: int,
        dtype=torch.float32, reference: Optional[Callable] = None, memory: bool = False, extra: dict | None = None):
    """One benchmark case: warm-up (compilation, autotuning, cuDNN's search; recorded Triton configs), the
    poisoned output check against reference() (when given), then the timing (CUDA events on the GPU,
    pytest-benchmark's timer on the CPU) and extra_info. --benchmark-disable: warm-up and check only."""
    if not runner.calls:
        raise ValueError("runner has no calls")
    benchmark.group = group
    info = benchmark.extra_info
    info.update(provider=provider, device=device_name(), dtype=dtype_name(dtype), flops=flops, bytes=nbytes,
                baseline=BASELINE, input_sets=len(runner.calls), **set_precision(), **(extra or {}))
    if FUSED_BASELINE:
        info["fused_baseline"] = FUSED_BASELINE
    first = runner.calls[0]

    def timed():
        with torch.no_grad():
            first()
        synchronize(DEVICE)

    disabled = getattr(benchmark, "disabled", False)
    memory = memory and not disabled
    record = record_triton_configs() if provider == "triton" else contextlib.nullcontext(None)
    with record as configs:
        if memory:  # the first call's leftovers: caches (packed / transformed weights), compiled kernels' buffers
            cache = memory_bytes(first)[1]
        else:
            timed()
    if configs:
        info["triton_configs"] = configs
    if runner.compiled is not None and runner.compiled.calls == 0:
        raise AssertionError(f"{provider}: no compiled graph ran in the warm-up (dynamo fell back to eager)")
    if reference is not None:  # Inductor's buffers are its own: poisoning would only re-guard and recompile it
        info["output_check"] = check_case(runner, reference, dtype, poison=provider != "inductor")
    if disabled:
        benchmark(lambda: None)  # --benchmark-disable: the warm-up and the check were the test
        return
    if memory:
        info.update(peak_mb=memory_bytes(first)[0] / 2**20, cache_mb=cache / 2**20)
    compiled_before = runner.compiled.calls if runner.compiled is not None else 0
    if DEVICE.type == "cuda":
        start = time.perf_counter()
        timed()
        times = cuda_event_times(runner.calls, time.perf_counter() - start)
        _record_times(benchmark, times)
        info["timer"] = "CUDA events, L2 flushed per call (triton.testing.do_bench)"
    else:
        start = time.perf_counter()
        timed()
        once = time.perf_counter() - start
        rounds = max(3, min(30, int(2.0 / max(once, 1e-6))))
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
        times = [] if benchmark.stats is None else list(benchmark.stats.stats.data)
        info["timer"] = "perf_counter around synchronous calls (pytest-benchmark)"
    if runner.compiled is not None:
        ran = runner.compiled.calls - compiled_before
        if ran < len(times):
            raise AssertionError(f"{provider}: {len(times)} timed calls but only {ran} ran the compiled graph")
        info["compiled_graphs"] = runner.compiled.graphs
    ordered = sorted(times)
    median = statistics.median(ordered)
    peaks = case_peaks(dtype)
    info.update(median_s=median, min_s=ordered[0], max_s=ordered[-1], q1_s=_quantile(ordered, 0.25),
                q3_s=_quantile(ordered, 0.75), rounds=len(ordered),
                tflops_per_s=flops / median / 1e12, gb_per_s=nbytes / median / 1e9,
                roofline=roofline_fraction(flops, nbytes, median, peaks),
                peak_tflops_per_s=peaks.flops / 1e12, peak_gb_per_s=peaks.bytes_per_s / 1e9,
                peaks_source=peaks.source, peaks_dtype=dtype_key(dtype, info["tf32"]))
    for name, base in (("speedup_vs_baseline", BASELINE), ("speedup_vs_cudnn_fused", FUSED_BASELINE)):
        if base is not None and (group, base) in MEDIANS:
            info[name] = MEDIANS[(group, base)] / median
    add_result(group, benchmark.name, provider, ordered, info)
