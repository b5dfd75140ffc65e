"""Per-layer profile of a DRN: FLOPs, bytes, time, achieved rate and % of the device's roofline, per conv.

    python -m drn.profile drn_c_42 [--task classify|segment|localize] [--num-classes K] [--fused]
        [--batch N] [--size H W] [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--backend B]
        [--iters I] [--trace out.json] [--flops-only] [--json]

Times come from torch.profiler: every conv (a FusedConv of a fused model, an nn.Conv2d of an unfused one) runs
inside a record_function range named after the layer (and an NVTX range on CUDA, for nsys/ncu); on CUDA a
layer's time is the device time of the kernels it launched, on CPU the range's wall time. Two rows collect the
rest: "other" (in the backbone but outside any conv: BatchNorm, ReLU and adds of an unfused model, DRN-A's
max-pool) and "head" (classifier / segmentation head). Segmentation is profiled through predict(), the deployment
path (one class_head call on a fused model). --flops-only counts on the meta device: any size, any machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from .flops import LayerCount, count_layers, device_peaks, roofline_fraction, synchronize

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RANGE_PREFIX = "drn/"


@dataclass
class LayerProfile:
    count: LayerCount | None   # None for "other"
    name: str
    seconds: float | None      # per forward; None when not run (--flops-only)
    backend: str


def build_model(name: str, task: str = "classify", num_classes: int | None = None, fused: bool = False,
                backend: str = "auto", device="cpu", dtype=torch.float32) -> nn.Module:
    import drn

    if task == "segment" and num_classes is None:
        num_classes = 19
    return drn.build(name, task=task, num_classes=num_classes, fused=fused, backend=backend, device=device,
                     dtype=dtype)


def build_meta_model(name: str, task: str = "classify", num_classes: int | None = None, fused: bool = False):
    """The model on the meta device (no memory, no init cost), for counting only."""
    with torch.device("meta"):
        return build_model(name, task, num_classes, fused, backend="reference", device="meta")


def _conv_modules(model: nn.Module):
    """(name, module) of every conv profiled as its own row."""
    from ..fused import FusedConv, FusedModel

    if isinstance(model, FusedModel):
        return [(m.name, m) for m in model.modules() if isinstance(m, FusedConv)]
    head = {id(getattr(model, k)) for k in ("fc", "seg", "up") if hasattr(model, k)}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in head]


def _backbone_bounds(model: nn.Module):
    """(first module, last module) of the feature extractor: the "features" range opens and closes on them."""
    from ..fused import FusedModel
    from ..zoo.heads import DRNSeg

    if isinstance(model, FusedModel):
        return model.backbone, model.backbone
    if isinstance(model, DRNSeg):
        return model.base, model.base
    levels = model.stem_and_levels()
    return levels[0], levels[-1]


def _runner(model: nn.Module, task: str):
    if task == "segment":
        return model.predict
    return model


class _Ranges:
    """record_function (and NVTX on CUDA) ranges opened in forward pre-hooks and closed in forward hooks."""

    def __init__(self, nvtx: bool):
        self.nvtx = nvtx
        self.stack = []
        self.handles = []

    def open(self, name):
        rf = torch.autograd.profiler.record_function(RANGE_PREFIX + name)
        rf.__enter__()
        self.stack.append(rf)
        if self.nvtx:
            torch.cuda.nvtx.range_push(name)

    def close(self):
        if self.nvtx:
            torch.cuda.nvtx.range_pop()
        self.stack.pop().__exit__(None, None, None)

    def wrap(self, module, name):
        self.handles.append(module.register_forward_pre_hook(lambda m, a: self.open(name)))
        self.handles.append(module.register_forward_hook(lambda m, a, o: self.close()))

    def span(self, first, last, name):
        self.handles.append(first.register_forward_pre_hook(lambda m, a: self.open(name)))
        self.handles.append(last.register_forward_hook(lambda m, a, o: self.close()))

    def remove(self):
        for h in self.handles:
            h.remove()


def profile_model(model: nn.Module, x: torch.Tensor, task: str = "classify", iters: int = 3, warmup: int = 1,
                  trace: str | None = None) -> tuple[list[LayerProfile], float]:
    """Per-layer times (seconds per forward) of `model` on `x`; returns (rows, total seconds per forward)."""
    from ..fused import FusedModel

    device = x.device
    on_cuda = device.type == "cuda"
    counts = {c.name: c for c in count_layers(model, tuple(x.shape), x.dtype)}
    head_counts = [c for n, c in counts.items() if n in ("fc", "seg", "up")]
    convs = _conv_modules(model)
    backend = model.resolved_backend(device) if isinstance(model, FusedModel) else "torch"
    run = _runner(model, task)

    ranges = _Ranges(nvtx=on_cuda)
    for name, m in convs:
        ranges.wrap(m, name)
    first, last = _backbone_bounds(model)
    ranges.span(first, last, "features")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    else:  # kineto's "USDT ... profiler_start" and "gpuGetDeviceCount failed" lines: noise on a CPU run
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # read when the profiler starts; 4 shows its errors
    try:
        with torch.no_grad():
            for _ in range(warmup):
                run(x)
            synchronize(device)
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(iters):
                    with torch.autograd.profiler.record_function(RANGE_PREFIX + "total"):
                        run(x)
                    synchronize(device)
    finally:
        ranges.remove()
    if trace:
        prof.export_chrome_trace(trace)

    totals: dict[str, float] = {}
    for evt in prof.events():
        if not evt.name.startswith(RANGE_PREFIX):
            continue
        us = evt.cpu_time_total
        if on_cuda:
            dev = getattr(evt, "device_time_total", 0) or getattr(evt, "cuda_time_total", 0)
            if dev > 0 and evt.name != RANGE_PREFIX + "total":
                us = dev
        key = evt.name[len(RANGE_PREFIX):]
        totals[key] = totals.get(key, 0.0) + us * 1e-6 / iters

    total = totals.get("total", 0.0)
    features = totals.get("features", 0.0)
    conv_time = 0.0
    rows = []
    for name, m in convs:
        if name not in counts:  # a conv that never ran (cannot happen in drn models, kept for safety)
            continue
        conv_time += totals.get(name, 0.0)
        rows.append(LayerProfile(counts[name], name, totals.get(name, 0.0), _conv_backend(backend, m, x.dtype)))
    rows.append(LayerProfile(None, "other", max(features - conv_time, 0.0), "torch"))
    rows.append(LayerProfile(_merge(head_counts), "head", max(total - features, 0.0),
                             backend if isinstance(model, FusedModel) and task != "classify" else "torch"))
    return rows, total


def _conv_backend(backend: str, conv: nn.Module, dtype: torch.dtype) -> str:
    """"cpu:winograd4" / "cpu:winograd2" / "cpu:onednn" for the cpu backend's fused convs (the algorithm each
    chose by measurement, drn_kernels.prepared, for the shapes it ran), "cpu:winograd" / "cpu:onednn" /
    "cpu:aten" for other convs (the algorithm the op picks), else the backend's name."""
    if backend != "cpu" or not hasattr(conv, "weight"):
        return backend
    chosen = sorted({a for a in getattr(getattr(conv, "_conv", None), "algorithms", {}).values() if a})
    if chosen:
        return "cpu:" + "+".join(chosen)
    from drn_kernels.ops import cpu_conv_algorithm

    x = torch.empty((1, conv.weight.shape[1], 1, 1), dtype=dtype)
    algorithm = cpu_conv_algorithm(x, conv.weight.detach().cpu(), conv.stride)
    return f"cpu:{algorithm}" if algorithm else backend


def _merge(counts: list[LayerCount]) -> LayerCount | None:
    if not counts:
        return None
    first = counts[0]
    return LayerCount("+".join(c.name for c in counts), "+".join(c.kind for c in counts), first.in_shape,
                      counts[-1].out_shape, first.kernel, first.stride, first.dilation,
                      sum(c.flops for c in counts), sum(c.bytes for c in counts), sum(c.params for c in counts))


def _shape(s) -> str:
    return "x".join(str(d) for d in s[1:])


def _layer_record(row: LayerProfile, peaks) -> dict:
    c = row.count
    rec = {"name": row.name, "backend": row.backend,
           "kind": c.kind if c else "other",
           "in_shape": list(c.in_shape) if c else None, "out_shape": list(c.out_shape) if c else None,
           "kernel": list(c.kernel) if c else None, "stride": list(c.stride) if c else None,
           "dilation": list(c.dilation) if c else None,
           "flops": c.flops if c else 0, "bytes": c.bytes if c else 0, "params": c.params if c else 0,
           "gflops": (c.flops if c else 0) / 1e9}
    if row.seconds is not None:
        t = row.seconds
        rec["time_ms"] = t * 1e3
        rec["tflops_per_s"] = rec["flops"] / t / 1e12 if t > 0 else 0.0
        rec["gb_per_s"] = rec["bytes"] / t / 1e9 if t > 0 else 0.0
        rec["roofline"] = roofline_fraction(rec["flops"], rec["bytes"], t, peaks) if peaks else None
    return rec


def _table(records: list[dict], timed: bool) -> str:
    head = f"{'layer':<26} {'in -> out':<30} {'k':>3} {'s':>2} {'dil':>3} {'GFLOP':>8} {'MB':>8}"
    if timed:
        head += f" {'ms':>9} {'GFLOP/s':>9} {'GB/s':>7} {'%roof':>6} backend"
    lines = [head, "-" * len(head)]
    for r in records:
        if r["in_shape"] is not None:
            shape = f"{_shape(r['in_shape'])} -> {_shape(r['out_shape'])}"
            geo = f"{r['kernel'][0]:>3} {r['stride'][0]:>2} {r['dilation'][0]:>3}"
        else:
            shape, geo = "", f"{'':>3} {'':>2} {'':>3}"
        line = f"{r['name'][:26]:<26} {shape[:30]:<30} {geo} {r['gflops']:>8.2f} {r['bytes'] / 1e6:>8.1f}"
        if timed:
            roof = f"{100 * r['roofline']:>5.1f}%" if r.get("roofline") is not None and r["flops"] else f"{'':>6}"
            line += (f" {r['time_ms']:>9.3f} {r['tflops_per_s'] * 1e3:>9.1f} {r['gb_per_s']:>7.1f} {roof} "
                     f"{r['backend']}")
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv=None):
    import drn

    p = argparse.ArgumentParser(prog="python -m drn.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=drn.list_models())
    p.add_argument("--task", choices=("classify", "segment", "localize"), default="classify")
    p.add_argument("--num-classes", type=int, default=None, help="default 1000; 19 for --task segment")
    p.add_argument("--fused", action="store_true", help="profile drn.build(..., fused=True)")
    p.add_argument("--backend", default="auto", help="backend of the fused model (default auto)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size (default 224 224; 1024 2048 for --task segment)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--iters", type=int, default=3, help="profiled forwards (after one warm-up)")
    p.add_argument("--trace", metavar="OUT.json", help="write a Chrome trace (chrome://tracing, Perfetto)")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs/bytes without running (meta device)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.size is None:
        args.size = (1024, 2048) if args.task == "segment" else (224, 224)
    if args.batch < 1 or min(args.size) < 1 or args.iters < 1:
        p.error("--batch, --size and --iters must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    shape = (args.batch, 3, args.size[0], args.size[1])
    num_classes = args.num_classes if args.num_classes is not None else (19 if args.task == "segment" else None)
    result = {"model": args.model, "task": args.task, "num_classes": num_classes or 1000, "fused": args.fused,
              "input_shape": list(shape), "dtype": args.dtype}
    if args.flops_only:
        model = build_meta_model(args.model, args.task, num_classes, args.fused)
        counts = count_layers(model, shape, dtype)
        rows = [LayerProfile(c, c.name, None, "-") for c in counts]
        peaks, total = None, None
        result.update(device=None, backend=None)
    else:
        torch.backends.cudnn.benchmark = True
        model = build_model(args.model, args.task, num_classes, args.fused, args.backend, args.device, dtype)
        x = torch.randn(shape, device=args.device, dtype=dtype)
        peaks = device_peaks(args.device, dtype)
        rows, total = profile_model(model, x, args.task, iters=args.iters, trace=args.trace)
        result.update(device=peaks.device, backend=rows[0].backend if rows else None,
                      peaks={"tflops_per_s": peaks.flops / 1e12, "gb_per_s": peaks.bytes_per_s / 1e9,
                             "source": peaks.source})
    records = [_layer_record(r, peaks) for r in rows]
    total_flops = sum(r["flops"] for r in records)
    result.update(total_gflops=total_flops / 1e9, total_gbytes=sum(r["bytes"] for r in records) / 1e9,
                  params=sum(r["params"] for r in records), layers=records)
    if total is not None:
        result.update(time_ms=total * 1e3, tflops_per_s=total_flops / total / 1e12 if total > 0 else 0.0)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} {args.task}{' fused' if args.fused else ''} {args.dtype} input {list(shape)}"
          + (f" on {result['device']}" if result.get("device") else " (counted on the meta device)"))
    print(_table(records, timed=total is not None))
    line = f"total: {result['total_gflops']:.2f} GFLOP, {result['total_gbytes']:.3f} GB minimum traffic, " \
           f"{result['params'] / 1e6:.2f} M parameters"
    if total is not None:
        line += f"; {total * 1e3:.2f} ms per forward, {total_flops / total / 1e9:.1f} GFLOP/s"
        line += f" (peak {peaks.flops / 1e9:.0f} GFLOP/s, {peaks.bytes_per_s / 1e9:.0f} GB/s, {peaks.source})"
    print(line)
    if any(r["backend"].startswith("cpu:winograd") for r in records) and total is not None:
        print("FLOPs are those of direct convolution; cpu:winograd layers (Winograd F(4x4,3x3) / F(2x2,3x3)) "
              "multiply 4x / 2.25x less, so their rate and % of roofline can exceed the machine's peak.")
    searched = [s for m in model.modules() if (s := getattr(getattr(m, "_conv", None), "search_seconds", 0.0))]
    if searched:
        print(f"cpu algorithm choice: {len(searched)} convs measured their candidates at their first call, "
              f"{sum(searched) * 1e3:.0f} ms in all (DRN_CPU_CONV=winograd|direct pins the choice)")
    if args.trace:
        print(f"Chrome trace written to {args.trace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
