"""FLOP and byte counts per conv layer, without running anything (meta tensors), and device peaks for rooflines.

FLOPs = 2 × multiply-adds of every convolution (transposed conv and the classifier included); BatchNorm, ReLU,
residual adds and pooling are not counted, as in published model-zoo figures (OpenVINO lists drn_d_38
segmentation at 1×3×1024×2048 as 1768.33 GFLOPs). Bytes = the minimum traffic of the fused op: read the input,
the weight, the bias and the residual once, write the output once, in the model's dtype.

    count_layers(model, input_shape) -> list[LayerCount]    # backbone convs (hooks on a meta copy) + head rows
    device_peaks(device, dtype, ceilings) -> Peaks          # ceilings measured on the device, else the datasheet
                                                            # table for known GPUs, else measured now
"""
from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from drn_kernels.perf_model import DEVICES, datasheet_peaks

from ..zoo.heads import OUTPUT_STRIDE, DRNSeg, LocalizeMixin

__all__ = ["LayerCount", "count_layers", "conv_count", "Peaks", "device_peaks", "peaks_from", "dtype_key",
           "cudnn_tf32", "GPU_PEAKS", "roofline_fraction"]


@dataclass
class LayerCount:
    name: str
    kind: str                 # "conv", "conv_transpose", "linear"
    in_shape: tuple           # (N, C, H, W) or (N, C)
    out_shape: tuple
    kernel: tuple             # (R, S)
    stride: tuple
    dilation: tuple
    flops: int
    bytes: int
    params: int               # weight + bias elements (BatchNorm folded: one bias per output channel)
    residual: bool = False
    relu: bool = False
    padding: tuple = (0, 0)
    extra: dict = field(default_factory=dict)


def conv_count(name, in_shape, out_shape, weight_shape, stride=(1, 1), dilation=(1, 1), *, groups=1,
               transposed=False, residual=False, relu=False, bias=True, itemsize=4, padding=(0, 0)) -> LayerCount:
    """Counts of one conv from shapes alone. weight_shape is (K, C/groups, R, S), or (C, K/groups, R, S) when
    transposed (PyTorch's layouts)."""
    n = in_shape[0]
    r, s = weight_shape[2], weight_shape[3]
    if transposed:  # every input element is scattered through the R×S kernel to K/groups outputs
        k = weight_shape[1] * groups
        macs = n * in_shape[1] * in_shape[2] * in_shape[3] * weight_shape[1] * r * s
    else:           # every output element gathers C/groups × R × S inputs
        k = weight_shape[0]
        macs = n * out_shape[1] * out_shape[2] * out_shape[3] * weight_shape[1] * r * s
    w_elems = weight_shape[0] * weight_shape[1] * r * s
    b_elems = k if bias else 0
    act = _numel(in_shape) + _numel(out_shape) * (2 if residual else 1)
    return LayerCount(name, "conv_transpose" if transposed else "conv", tuple(in_shape), tuple(out_shape),
                      (r, s), tuple(stride), tuple(dilation), 2 * macs, itemsize * (act + w_elems + b_elems),
                      w_elems + b_elems, residual, relu, tuple(padding))


def linear_count(name, n, c, k, itemsize=4, *, cells=1) -> LayerCount:
    """A (K, C) classifier applied to N × cells vectors of C features."""
    macs = n * cells * c * k
    return LayerCount(name, "linear", (n, c), (n, k), (1, 1), (1, 1), (1, 1), 2 * macs,
                      itemsize * (n * cells * c + n * cells * k + k * c + k), k * c + k)


def _numel(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose tensors live on the meta device (no data copied, any size runs anywhere)."""
    from ..fused import FusedConv, FusedModel

    memo = {}
    owned = [t for m in model.modules() if isinstance(m, FusedConv) for t in m._conv.tensors()]
    for t in list(model.parameters()) + list(model.buffers()) + owned:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    meta_model = copy.deepcopy(model, memo)

    if isinstance(meta_model, FusedModel):
        meta_model.backend = "reference"  # fake kernels on meta tensors; counts do not depend on the backend
    return meta_model


def _dtype_of(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def count_layers(model: nn.Module, input_shape, dtype: torch.dtype | None = None) -> list[LayerCount]:
    """One LayerCount per conv of the backbone in execution order (names as in the model), then the head's rows.

    Works for unfused (drn.build) and fused (drn.fuse) models of the three tasks; nothing is computed: the model
    is copied onto the meta device and its convs report their shapes through forward hooks.
    """
    from ..fused import FusedClassifier, FusedConv, FusedLocalizer, FusedSegmenter

    dtype = dtype or _dtype_of(model)
    itemsize = torch.empty((), dtype=dtype).element_size()
    meta = _meta_copy(model)
    names = {id(m): n for n, m in meta.named_modules()}
    rows: list[LayerCount] = []

    def hook(module, args, kwargs, out):
        x = args[0]
        if isinstance(module, FusedConv):
            residual = kwargs.get("residual", args[1] if len(args) > 1 else None) is not None
            rows.append(conv_count(module.name, tuple(x.shape), tuple(out.shape), tuple(module.weight_shape),
                                   module.stride, module.dilation, residual=residual, relu=module.relu,
                                   itemsize=itemsize, padding=module.padding))
        else:
            rows.append(conv_count(names[id(module)], tuple(x.shape), tuple(out.shape),
                                   tuple(module.weight.shape), module.stride, module.dilation,
                                   groups=module.groups, bias=module.bias is not None, itemsize=itemsize,
                                   padding=module.padding))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in meta.modules()
               if isinstance(m, (FusedConv, nn.Conv2d))]
    try:
        with torch.no_grad():
            feats = meta.features(torch.empty(tuple(input_shape), dtype=dtype, device="meta"))
    finally:
        for h in handles:
            h.remove()

    n, c, h, w = feats.shape
    if isinstance(meta, (DRNSeg, FusedSegmenter)):
        k = meta.num_classes
        low = (n, k, h, w)
        rows.append(conv_count("seg", tuple(feats.shape), low, (k, c, 1, 1), itemsize=itemsize))
        up = (n, k, h * OUTPUT_STRIDE, w * OUTPUT_STRIDE)  # before the crop to the input size
        rows.append(conv_count("up", low, up, (k, 1, 16, 16), (8, 8), groups=k, transposed=True, bias=False,
                               itemsize=itemsize))
    elif isinstance(meta, (LocalizeMixin, FusedLocalizer)):  # the classifier on every output-stride-8 cell
        k = meta.head_weight.shape[0] if isinstance(meta, FusedLocalizer) else meta.fc.weight.shape[0]
        rows.append(linear_count("fc", n, c, k, itemsize, cells=h * w))
    elif isinstance(meta, FusedClassifier):
        rows.append(linear_count("fc", n, c, meta.head_weight.shape[0], itemsize))
    elif hasattr(meta, "fc"):
        rows.append(linear_count("fc", n, c, meta.fc.weight.shape[0], itemsize))
    return rows


# ---- device peaks ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Peaks:
    device: str
    flops: float          # FLOP/s for the dtype
    bytes_per_s: float    # memory bandwidth (bytes read + written per second)
    source: str           # where the figures come from: "device-check" (ceilings measured on this device by the
                          # device check), "datasheet" (GPU_PEAKS), "measured" (timed now: a matmul),
                          # "measured FMA peak" (CPU float32: cpu_fma_peak); "a+b" when mixed


# Datasheet figures of the SXM parts, dense (no sparsity). "fp32" is the plain FP32 pipe (no tensor cores): the
# benchmarks run fp32 with TF32 off everywhere (the CUDA kernel has no TF32 path); "tf32" is the tensor-core peak.
# A device's copies reach less than its listed bandwidth (docs/performance/gpu.md): measured ceilings win when there
# are some. The figures live with the paper performance model (drn_kernels.perf_model.DEVICES, which says their
# sources).
GPU_PEAKS = {name: datasheet_peaks(device) for name, device in DEVICES.items()}
_DTYPE_KEY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def dtype_key(dtype: torch.dtype, tf32: bool = False) -> str:
    """"fp16", "bf16", "fp32" or "tf32" (fp32 on TF32 tensor cores): the key of a dtype in GPU_PEAKS and in
    measured ceilings."""
    key = _DTYPE_KEY.get(dtype, "fp32")
    return "tf32" if key == "fp32" and tf32 else key


def cudnn_tf32() -> bool:
    """Whether cuDNN runs fp32 convs on TF32 tensor cores now (the legacy switch; torch >= 2.9's fp32_precision
    when a mix of the two APIs makes the legacy getter raise)."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return torch.backends.cudnn.conv.fp32_precision == "tf32"


def peaks_from(name: str, dtype: torch.dtype, ceilings: dict | None = None, tf32: bool = False) -> Peaks | None:
    """The peaks of a device called `name`: each figure from `ceilings` measured on that device when it has one
    ({"copy_gbps": GB/s of a large copy, read + write, "matmul_tflops": {"fp16": ..., "bf16": ..., "fp32": ...,
    "tf32": ...}}), else from the datasheet table; None when neither knows the device. tf32: fp32 runs as TF32."""
    key = dtype_key(dtype, tf32)
    table = next((t for k, t in GPU_PEAKS.items() if k in name), None)
    ceilings = ceilings or {}
    copy_gbps = ceilings.get("copy_gbps")
    tflops = (ceilings.get("matmul_tflops") or {}).get(key)
    flops = (tflops * 1e12, "device-check") if tflops else ((table[key], "datasheet") if table else None)
    bw = (copy_gbps * 1e9, "device-check") if copy_gbps else ((table["bytes_per_s"], "datasheet") if table else None)
    if flops is None or bw is None:
        return None
    source = flops[1] if flops[1] == bw[1] else f"flops:{flops[1]}+bytes:{bw[1]}"
    return Peaks(name, flops[0], bw[0], source)


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a CUDA device; nothing to wait for elsewhere): the one place timing
    code (drn.tools.profile, drn.tools.flops, benchmarks/) synchronises."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU_ISA_CODES = {"avx512": 2, "avx2": 1}  # DRN_CPU_ISA -> drn::cpu_fma_peak's isa; anything else: the best


def cpu_fma_peak(isa: str = "") -> float | None:
    """FLOP/s of float32 FMAs on all torch threads (drn::cpu_fma_peak: independent chains of AVX-512 or AVX2
    FMAs that touch no memory, best of 5 runs of ~20 ms): the CPU's float32 compute ceiling, which no GEMM or
    conv can pass. isa: "avx512", "avx2", else the best the CPU has. None when the C++ extension is missing."""
    import drn_kernels

    if drn_kernels.why_unavailable("cpu", torch.device("cpu")) is not None:
        return None
    return max(torch.ops.drn.cpu_fma_peak(CPU_ISA_CODES.get(isa, -1), 2_000_000) for _ in range(5))


def sgemm_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square matmul (n = 4096 on CUDA, 2048 on CPU), best of 5 runs."""
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        t = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


@functools.lru_cache(maxsize=None)
def _measured(device_str: str, dtype: torch.dtype, threads: int, isa: str = "") -> tuple[float, float, str]:
    """(FLOP/s, bytes/s of a large copy counting read + write, source), best of a few runs. FLOP/s: on the CPU in
    float32 the FMA peak (cpu_fma_peak; sgemm where the extension is missing), else a square matmul's."""
    device = torch.device(device_str)
    fma = cpu_fma_peak(isa) if device.type == "cpu" and dtype == torch.float32 else None
    flops = fma if fma is not None else sgemm_flops(device, dtype)
    src = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # 64 MiB: well beyond the caches
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        t = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return flops, 2 * src.numel() / best, "measured FMA peak" if fma is not None else "measured"


def device_peaks(device="cpu", dtype: torch.dtype = torch.float32, ceilings: dict | None = None) -> Peaks:
    """Peak FLOP/s and bandwidth for `dtype` (fp32: the TF32 peak when cuDNN's TF32 switch is on): `ceilings`
    measured on this device (see peaks_from) first, then the datasheet table for H100/H200, else measured once per
    process (CPU float32: the FMA peak, cpu_fma_peak, at DRN_CPU_ISA; else a matmul; and a memcpy)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = peaks_from(name, dtype, ceilings, tf32=cudnn_tf32())
        if known is not None:
            return known
        return Peaks(name, *_measured(str(device), dtype, torch.get_num_threads()))
    from drn_kernels.prepared import cpu_conv_setting

    isa = cpu_conv_setting()[2]  # DRN_CPU_ISA
    name = f"cpu ({torch.get_num_threads()} threads{', ' + isa if isa else ''})"
    return Peaks(name, *_measured(str(device), dtype, torch.get_num_threads(), isa))


def roofline_fraction(flops: float, nbytes: float, seconds: float, peaks: Peaks) -> float:
    """Achieved FLOP/s over the attainable min(peak FLOP/s, intensity × bandwidth)."""
    if seconds <= 0 or flops <= 0:
        return 0.0
    attainable = min(peaks.flops, flops / max(nbytes, 1) * peaks.bytes_per_s)
    return flops / seconds / attainable
