"""Shared benchmark machinery: providers, the layer shapes derived from the models, timing and extra_info.

Providers (one pytest-benchmark test each, same group per shape/model):
  GPU: cudnn (eager conv->BN->ReLU, channels_last, cudnn.benchmark), cudnn-fused (folded weights through
       torch.cudnn_convolution_relu / _add_relu), inductor (torch.compile max-autotune, freezing), triton, cuda
  CPU: eager-nchw, eager-cl (the baseline), cpu (drn_kernels' C++ kernels), onnxruntime (when installed)
Every timed call synchronizes the device. extra_info: FLOPs, bytes, TFLOP/s, GB/s, fraction of the roofline,
and the speedup over the baseline when the baseline ran earlier in the session (report.py recomputes speedups
from the saved JSON either way).
"""
from __future__ import annotations

import copy
import functools
import io
import os
import re
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import drn
import drn_kernels
from drn.flops import conv_count, count_layers, device_peaks, roofline_fraction
from drn.profile import build_meta_model

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GPU_PROVIDERS = ("cudnn", "cudnn-fused", "inductor", "triton", "cuda")
CPU_PROVIDERS = ("eager-cl", "eager-nchw", "cpu", "onnxruntime")
PROVIDERS = GPU_PROVIDERS if DEVICE.type == "cuda" else CPU_PROVIDERS
BASELINE = "cudnn" if DEVICE.type == "cuda" else "eager-cl"  # listed first: it runs first in each group

LAYER_MODELS = ("drn_c_26", "drn_c_42", "drn_d_22", "drn_d_38")
LAYER_BATCHES = (1, 8)
LAYER_SIZES = ((224, 224), (1024, 2048))

MEDIANS: dict[tuple[str, str], float] = {}   # (group, provider) -> median seconds, this session
RESULTS: list[dict] = []                    # one record per timed benchmark, written by conftest


def device_name() -> str:
    if DEVICE.type == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                name = next(ln.split(":", 1)[1] for ln in f if ln.startswith("model name")).strip()
        except (OSError, StopIteration):
            pass
        name += f" {torch.get_num_threads()}t"
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def why_unavailable(provider: str) -> str | None:
    if provider in ("triton", "cuda", "cpu"):
        if provider == "triton" and DEVICE.type != "cuda":
            return "triton on CPU runs in the interpreter: not a benchmark"
        return drn_kernels.available_backends(DEVICE)[provider]
    if provider == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed"
    if provider in GPU_PROVIDERS and DEVICE.type != "cuda":
        return f"{provider} needs a CUDA GPU"
    return None


# ---- layer shapes, derived by walking the models ----------------------------------------------------------------

@dataclass(frozen=True)
class LayerShape:
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: int
    padding: int
    dilation: int
    residual: bool
    relu: bool
    first_seen: str  # model:layer where this shape first occurs

    @property
    def id(self) -> str:
        return (f"n{self.n}_c{self.c}_{self.h}x{self.w}_k{self.k}_{self.r}x{self.s}_s{self.stride}_d{self.dilation}"
                + ("_res" if self.residual else "") + ("" if self.relu else "_norelu"))

    def count(self, itemsize=4):
        p = (self.h + 2 * self.padding - self.dilation * (self.r - 1) - 1) // self.stride + 1
        q = (self.w + 2 * self.padding - self.dilation * (self.s - 1) - 1) // self.stride + 1
        return conv_count(self.id, (self.n, self.c, self.h, self.w), (self.n, self.k, p, q),
                          (self.k, self.c, self.r, self.s), residual=self.residual, relu=self.relu,
                          itemsize=itemsize)


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


def _cudnn_fused_conv(x, w, b, stride, padding, dilation, residual, relu):
    """Folded conv through cuDNN's fused conv(+add)+bias+ReLU entry points."""
    if relu and residual is not None:
        return torch.cudnn_convolution_add_relu(x, w, residual, 1.0, b, stride, padding, dilation, 1)
    if relu:
        return torch.cudnn_convolution_relu(x, w, b, stride, padding, dilation, 1)
    y = F.conv2d(x, w, b, stride, padding, dilation)
    return y + residual if residual is not None else y


def _ort_session(module: nn.Module, inputs: tuple):
    import onnxruntime as ort

    buf = io.BytesIO()
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buf, dynamo=False, input_names=names, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feeds = {n: t.contiguous().numpy() for n, t in zip(names, inputs)}
    return lambda: session.run(None, feeds)


def _compile(fn):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(fn, mode="max-autotune")


def layer_runner(provider: str, shape: LayerShape, dtype=torch.float32):
    """A zero-argument callable running one layer on fresh inputs with `provider` (not synchronized)."""
    torch.manual_seed(0)
    module = ConvBNAct(shape).to(DEVICE)
    x = torch.randn(shape.n, shape.c, shape.h, shape.w, device=DEVICE)
    count = shape.count()
    res = torch.randn(count.out_shape, device=DEVICE) if shape.residual else None
    if provider == "onnxruntime":
        return _ort_session(module, (x,) if res is None else (x, res))
    module = module.to(dtype)
    x = x.to(dtype)
    res = res.to(dtype) if res is not None else None
    if provider == "eager-nchw":
        return lambda: module(x, res)
    cl = torch.channels_last
    x = x.contiguous(memory_format=cl)
    res = res.contiguous(memory_format=cl) if res is not None else None
    if provider in ("eager-cl", "cudnn", "inductor"):
        module = module.to(memory_format=cl)
        if provider == "inductor":
            compiled = _compile(module)
            return lambda: compiled(x, res)
        return lambda: module(x, res)
    w, b = drn_kernels.fold_bn(module.conv.weight, module.bn)
    w = w.contiguous(memory_format=cl)
    st, pad, dil = [shape.stride] * 2, [shape.padding] * 2, [shape.dilation] * 2
    if provider == "cudnn-fused":
        return lambda: _cudnn_fused_conv(x, w, b, st, pad, dil, res, shape.relu)
    return lambda: drn_kernels.conv_bn_act(x, w, b, stride=st, padding=pad, dilation=dil, residual=res,
                                           relu=shape.relu, backend=provider)


# ---- model runners ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _unfused(name: str, task: str):
    torch.manual_seed(0)
    return drn.build(name, task=task, num_classes=19 if task == "segment" else None)


def model_runner(provider: str, name: str, task: str, shape, dtype=torch.float32):
    """A zero-argument callable running the model (classify: forward, segment: predict) with `provider`."""
    from drn.fused import FusedConv

    model = _unfused(name, task)
    x = torch.randn(shape, device=DEVICE)
    if provider == "onnxruntime":
        if task != "classify":
            raise NotImplementedError("onnxruntime is benchmarked on classification only")
        return _ort_session(model, (x,))
    x = x.to(dtype)
    cl = torch.channels_last
    if provider in ("eager-nchw", "eager-cl", "cudnn", "inductor"):
        m = copy.deepcopy(model).to(device=DEVICE, dtype=dtype)
        if provider != "eager-nchw":
            m = m.to(memory_format=cl)
            x = x.contiguous(memory_format=cl)
        fn = m.predict if task == "segment" else m
        if provider == "inductor":
            fn = _compile(fn)
        return lambda: fn(x)
    backend = "reference" if provider == "cudnn-fused" else provider
    fused = drn.fuse(model, backend=backend).to(device=DEVICE, dtype=dtype)
    if provider == "cudnn-fused":
        def forward(self, inp, residual=None):
            return _cudnn_fused_conv(inp, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     residual, self.relu)
        for m in fused.modules():
            if isinstance(m, FusedConv):
                m.forward = forward.__get__(m)
    fn = fused.predict if task == "segment" else fused
    return lambda: fn(x)


def model_counts(name: str, task: str, shape):
    rows = count_layers(build_meta_model(name, task, 19 if task == "segment" else None), tuple(shape))
    return sum(r.flops for r in rows), sum(r.bytes for r in rows)


# ---- memory ----------------------------------------------------------------------------------------------------

def memory_bytes(fn) -> tuple[int, int]:
    """(peak, retained): the most bytes allocated above the starting point while fn() runs, and what is still
    allocated when it returns (caches a first call fills: packed / transformed weights, compiled kernels' buffers).
    CUDA: the allocator's statistics; CPU: torch.profiler's allocation events (tensors from PyTorch's CPU
    allocator, which is where every op's output and workspace come from)."""
    if DEVICE.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            out = fn()
        sync()
        del out
        return torch.cuda.max_memory_allocated() - base, torch.cuda.memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.no_grad():
            fn()  # the result is dropped inside the profiled region, so it does not count as retained
    # allocations are the ops' self memory (at the op's start), frees are "[memory]" events with negative sizes
    events = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                    for e in prof.events())
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak, level


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


# ---- timing + extra_info ---------------------------------------------------------------------------------------

def run(benchmark, *, group: str, provider: str, fn, flops: int, nbytes: int, dtype=torch.float32,
        extra: dict | None = None):
    """Time fn (synchronized) with pytest-benchmark and fill extra_info; a single plain call when disabled."""
    def timed():
        with torch.no_grad():
            fn()
        sync()

    benchmark.group = group
    info = benchmark.extra_info
    info.update(provider=provider, device=device_name(), dtype=str(dtype).replace("torch.", ""), flops=flops,
                bytes=nbytes, baseline=BASELINE, **(extra or {}))
    if getattr(benchmark, "disabled", False):
        benchmark(timed)  # --benchmark-disable: one plain call
        return
    timed()  # warm-up: autotuning, compilation, caches
    start = time.perf_counter()
    timed()
    once = time.perf_counter() - start
    rounds = max(3, min(30, int(2.0 / max(once, 1e-6))))
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    peaks = device_peaks(DEVICE, dtype)
    MEDIANS[(group, provider)] = median
    info.update(median_s=median, tflops_per_s=flops / median / 1e12, gb_per_s=nbytes / median / 1e9,
                roofline=roofline_fraction(flops, nbytes, median, peaks),
                peak_tflops_per_s=peaks.flops / 1e12, peak_gb_per_s=peaks.bytes_per_s / 1e9,
                peaks_source=peaks.source)
    base = MEDIANS.get((group, BASELINE))
    if base is not None:
        info["speedup_vs_baseline"] = base / median
    RESULTS.append({"group": group, "name": benchmark.name, "provider": provider,
                    "stats": {k: getattr(benchmark.stats.stats, k) for k in ("min", "max", "mean", "median",
                                                                             "stddev", "rounds")},
                    "extra_info": dict(info)})
