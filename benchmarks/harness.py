"""What every benchmark of this project measures with, in one place: layer shapes, the cuDNN-fused provider,
input rotation, poisoned outputs, the error against float64, medians and peak memory.

benchmarks/common.py (the pytest-benchmark suites) and benchmarks/device_check.py (the one check on a lent GPU)
both build on it; neither keeps a copy. Its layer shape is drn_kernels.perf_model's Layer, so importing it imports
drn_kernels (and triton): the device check's dry run sets TRITON_INTERPRET before it imports this module.
"""
from __future__ import annotations

import contextlib
import math
import pathlib
import statistics
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from drn_kernels.perf_model import Layer

RESULTS_DIR = pathlib.Path(__file__).parent / "results"
MAX_INPUT_SETS = 64


# ---- layer shapes ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerShape(Layer):
    """A benchmarked conv_bn_act layer: drn_kernels.perf_model.Layer, plus its ReLU and where it first occurs."""
    relu: bool = True
    first_seen: str = ""  # model:layer where this shape first occurs

    @property
    def id(self) -> str:
        return (f"n{self.n}_c{self.c}_{self.h}x{self.w}_k{self.k}_{self.r}x{self.s}_s{self.stride}_d{self.dilation}"
                + ("_res" if self.residual else "") + ("" if self.relu else "_norelu"))

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.p, self.q

    def count(self, itemsize=4):
        """drn.tools.flops' LayerCount: FLOPs, and bytes with every input read once and the output written once."""
        from drn.tools.flops import conv_count

        p, q = self.out_hw
        return conv_count(self.id, (self.n, self.c, self.h, self.w), (self.n, self.k, p, q),
                          (self.k, self.c, self.r, self.s), residual=self.residual, relu=self.relu,
                          itemsize=itemsize)


def conv3x3(first_seen: str, n: int, c: int, h: int, w: int, k: int, stride: int, dilation: int,
            residual: bool) -> LayerShape:
    """A DRN 3x3 conv(+BN)(+residual)+ReLU: padding = dilation."""
    return LayerShape(n, c, h, w, k, 3, 3, stride, dilation, dilation, residual, True, first_seen)


# ---- providers ----------------------------------------------------------------------------------------------------

def cudnn_fused_conv(x, w, b, stride, padding, dilation, residual, relu):
    """Folded conv through cuDNN's fused conv(+add)+bias+ReLU entry points: the fair GPU baseline."""
    if relu and residual is not None:
        return torch.cudnn_convolution_add_relu(x, w, residual, 1.0, b, stride, padding, dilation, 1)
    if relu:
        return torch.cudnn_convolution_relu(x, w, b, stride, padding, dilation, 1)
    y = F.conv2d(x, w, b, stride, padding, dilation)
    return y + residual if residual is not None else y


# ---- input rotation ---------------------------------------------------------------------------------------------

def l2_bytes(device: torch.device) -> int:
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 60 * 2**20


def input_sets(bytes_per_set: int, device: torch.device) -> int:
    """How many input sets a GPU timing rotates through: together at least twice the L2, so no call finds its
    inputs in L2 (do_bench also flushes L2 before every call); 1 on the CPU."""
    if device.type != "cuda":
        return 1
    return max(1, min(MAX_INPUT_SETS, -(-2 * l2_bytes(device) // max(1, bytes_per_set))))


class Rotation:
    """fn(i) over i = 0, 1, ..., n-1, 0, ...: each timed call reads another input set."""

    def __init__(self, fn, n: int):
        self.fn, self.n, self.i = fn, n, 0

    def __call__(self):
        self.i = (self.i + 1) % self.n
        return self.fn(self.i)


# ---- output checks -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def poisoned_outputs():
    """Fresh allocations start as NaN (floats) / the largest value (integers): torch's deterministic mode fills
    uninitialized memory, and every output of cuDNN, the C++/CUDA kernels and the Triton launchers comes from
    at::empty / torch.empty. So an output element a kernel never writes shows."""
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when out has a NaN/inf where ref is finite (an unwritten, poisoned
    element included)."""
    out64, ref64 = out.double(), ref.double().to(out.device)
    if not torch.isfinite(out64[torch.isfinite(ref64)]).all():
        return math.inf
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300)).item()


# ---- timing and memory ---------------------------------------------------------------------------------------------

def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, *, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median seconds of one fn() call (fn already warmed up). GPU: triton.testing.do_bench (CUDA events, L2
    flushed before every call). CPU: calls for about rep_ms, at least one."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3
    times = []
    spent = 0.0
    while not times or (spent < rep_ms / 1e3 and len(times) < 100):  # interpreted providers: one call
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return statistics.median(times)


def timed_first_call(fn, device: torch.device):
    """(result, seconds) of a first call: compilation, autotuning, cuDNN's algorithm search and caches included."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def memory_bytes(fn, device: torch.device, *, keep=None) -> tuple[int, int]:
    """(peak, retained): the most bytes allocated above the starting point while fn() runs, and what is still
    allocated when it returns, fn's result dropped (caches a first call fills: packed / transformed weights).
    keep(result) -> bytes of the result to report apart: with it, retained is those bytes (the outputs a caller
    holds) and peak still includes them. CUDA: the allocator's statistics; CPU: torch.profiler's allocation events
    (tensors from PyTorch's CPU allocator, which is where every op's output and workspace come from)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            out = fn()
        synchronize(device)
        held = keep(out) if keep is not None else None
        del out
        peak = torch.cuda.max_memory_allocated(device) - base
        return peak, held if held is not None else torch.cuda.memory_allocated(device) - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.no_grad():
            out = fn()
            held = keep(out) if keep is not None else None
            del out  # dropped inside the profiled region, so it does not count as retained
    # allocations are the ops' self memory (at the op's start), frees are "[memory]" events with negative sizes
    events = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                    for e in prof.events())
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak, held if held is not None else level


def tensors_bytes(out) -> int:
    """Bytes of the tensors in out (a tensor or a tuple of them)."""
    ts = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in ts)
