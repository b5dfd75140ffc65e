"""CPU kernels (backend="cpu") against PyTorch eager: `python benchmarks/bench_cpu_kernels.py [--quick] [--json]`.

- conv_bn_act on DRN layer shapes (batch 1, channels_last, DRN-D at 224x224 input): eager Conv2d -> BatchNorm2d
  -> (+ residual) -> ReLU in channels_last vs drn_kernels.conv_bn_act(backend="cpu") with BN folded.
- class_head(upsample=8) for a Cityscapes-size head, 1x512x128x256 -> 19 classes at 1024x2048: eager conv1x1 ->
  ConvTranspose2d (the reference's bilinear x8) -> log_softmax -> argmax/max vs drn_kernels.class_head.
  Peak memory of each is measured in a fresh process: peak RSS (VmHWM, reset just before) during one call minus
  RSS just before it; the call's outputs count (labels int64 + probs float32 = 25 MB at 1024x2048).
Times are the median of interleaved repeats (the providers alternate, so machine load hits both alike).
A script, not a pytest file: benchmarks/ pytest-benchmark suites may import its case lists.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

import drn_kernels
from drn_kernels import reference
from drn_kernels.prepared import median_times

# (name, C, K, R, stride, dilation, H, W, residual): the conv layers of DRN-D at a 224x224 input.
CONV_CASES = [
    ("stem7x7", 3, 16, 7, 1, 1, 224, 224, False),
    ("l2-3x3-s2", 16, 32, 3, 2, 1, 224, 224, False),
    ("l3-3x3-s2", 32, 64, 3, 2, 1, 112, 112, False),
    ("l3-3x3-res", 64, 64, 3, 1, 1, 56, 56, True),
    ("l4-3x3-res", 128, 128, 3, 1, 1, 28, 28, True),
    ("l5-3x3-d2-res", 256, 256, 3, 1, 2, 28, 28, True),
    ("l6-3x3-d4", 512, 512, 3, 1, 4, 28, 28, False),
    ("bottleneck-1x1", 256, 1024, 1, 1, 1, 28, 28, True),
]
HEAD_SHAPE = (1, 512, 128, 256, 19)  # N, C, h, w, K


def bench_conv(dtype: torch.dtype, repeats: int) -> list[dict]:
    rows = []
    cl = torch.channels_last
    for name, c, k, r, stride, dil, h, w, has_res in CONV_CASES:
        pad = dil * (r - 1) // 2
        conv = torch.nn.Conv2d(c, k, r, stride, pad, dil, bias=False)
        bn = torch.nn.BatchNorm2d(k)
        with torch.no_grad():
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
        conv, bn = conv.eval().to(dtype=dtype, memory_format=cl), bn.eval().to(dtype)
        x = torch.randn(1, c, h, w, dtype=dtype).contiguous(memory_format=cl)
        weight, bias = drn_kernels.fold_bn(conv.weight.detach(), bn)
        weight = weight.contiguous(memory_format=cl)
        p = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
        q = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
        res = torch.randn(1, k, p, q, dtype=dtype).contiguous(memory_format=cl) if has_res else None

        def eager():
            y = bn(conv(x))
            return torch.relu(y + res) if res is not None else torch.relu(y)

        def ours():
            return drn_kernels.conv_bn_act(x, weight, bias, stride=stride, padding=pad, dilation=dil, residual=res,
                                           backend="cpu")

        with torch.inference_mode():
            t = median_times({"eager": eager, "cpu": ours}, repeats)
        flops = 2 * k * c * r * r * p * q
        rows.append({"case": name, "dtype": str(dtype).split(".")[-1], "eager_ms": t["eager"] * 1e3,
                     "cpu_ms": t["cpu"] * 1e3, "speedup": t["eager"] / t["cpu"],
                     "cpu_gflops": flops / t["cpu"] / 1e9})
    return rows


def _head_inputs():
    n, c, h, w, k = HEAD_SHAPE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, 1, 1, generator=g) * c ** -0.5
    bias = torch.randn(k, generator=g) * 0.1
    return x, weight, bias


def _head_providers(x, weight, bias):
    k = weight.shape[0]
    seg = torch.nn.Conv2d(x.shape[1], k, 1).eval()
    up = torch.nn.ConvTranspose2d(k, k, 16, stride=8, padding=4, groups=k, bias=False).eval()
    with torch.no_grad():
        seg.weight.copy_(weight)
        seg.bias.copy_(bias)
        up.weight.copy_(reference.bilinear_up_weight(k))

    def eager():
        log_probs = torch.log_softmax(up(seg(x)), dim=1)
        best, labels = log_probs.max(dim=1)
        return labels, best.exp()

    def ours():
        return drn_kernels.class_head(x, weight, bias, upsample=8, backend="cpu")

    return {"eager": eager, "cpu": ours}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS (Linux >= 4.0), so import-time peaks don't
    count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def head_peak_child(provider: str) -> None:
    """Runs in a fresh process: warm up on a tiny input (library init), then one full-size call."""
    x, weight, bias = _head_inputs()
    with torch.inference_mode():
        small = _head_providers(x[:, :, :8, :8].contiguous(), weight, bias)[provider]
        small()
        fn = _head_providers(x, weight, bias)[provider]
        _reset_peak_rss()
        base = _rss_bytes()
        out = fn()
        peak = _peak_rss_bytes()
    out_bytes = sum(t.numel() * t.element_size() for t in out)
    print(json.dumps({"provider": provider, "peak_bytes": max(0, peak - base), "output_bytes": out_bytes}))


def bench_head(repeats: int) -> dict:
    x, weight, bias = _head_inputs()
    with torch.inference_mode():
        providers = _head_providers(x, weight, bias)
        labels_e, probs_e = providers["eager"]()
        labels_c, probs_c = providers["cpu"]()
        agree = (labels_e == labels_c).float().mean().item()
        t = median_times(providers, repeats)
    peaks, outputs = {}, {}
    for name in providers:
        out = subprocess.run([sys.executable, __file__, "--peak-child", name], capture_output=True, text=True,
                             check=True)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[name], outputs[name] = record["peak_bytes"], record["output_bytes"]
    # Working memory = peak minus the returned labels and probs, which any implementation must allocate.
    work = {name: max(peaks[name] - outputs[name], 1) for name in peaks}
    return {"case": "class_head 1x512x128x256 -> 19 @1024x2048", "eager_ms": t["eager"] * 1e3,
            "cpu_ms": t["cpu"] * 1e3, "speedup": t["eager"] / t["cpu"], "eager_peak_mb": peaks["eager"] / 2**20,
            "cpu_peak_mb": peaks["cpu"] / 2**20, "peak_ratio": peaks["eager"] / max(peaks["cpu"], 1),
            "output_mb": outputs["cpu"] / 2**20, "eager_work_mb": work["eager"] / 2**20,
            "cpu_work_mb": work["cpu"] / 2**20, "work_ratio": work["eager"] / work["cpu"],
            "label_agreement": agree, "max_prob_diff": (probs_e - probs_c).abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, float32 conv only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_child:
        head_peak_child(args.peak_child)
        return
    repeats = 5 if args.quick else 15
    conv_rows = []
    for dtype in (torch.float32,) if args.quick else (torch.float32, torch.bfloat16):
        conv_rows += bench_conv(dtype, repeats)
    head = bench_head(3 if args.quick else 7)
    result = {"threads": torch.get_num_threads(), "conv_bn_act": conv_rows, "class_head": head}
    if args.json:
        print(json.dumps(result))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'conv_bn_act case':<18} {'dtype':<9} {'eager ms':>9} {'cpu ms':>8} {'speedup':>8} {'GFLOP/s':>8}")
    for r in conv_rows:
        print(f"{r['case']:<18} {r['dtype']:<9} {r['eager_ms']:9.2f} {r['cpu_ms']:8.2f} {r['speedup']:8.2f} "
              f"{r['cpu_gflops']:8.1f}")
    print(f"\n{head['case']}: eager {head['eager_ms']:.0f} ms, cpu {head['cpu_ms']:.0f} ms "
          f"({head['speedup']:.1f}x); peak memory eager {head['eager_peak_mb']:.0f} MB, cpu {head['cpu_peak_mb']:.1f} MB "
          f"({head['peak_ratio']:.0f}x less; outputs {head['output_mb']:.0f} MB of it, working memory beyond the outputs "
          f"eager {head['eager_work_mb']:.0f} MB vs cpu {head['cpu_work_mb']:.1f} MB = {head['work_ratio']:.0f}x less); "
          f"labels agree {head['label_agreement']:.6f}, "
          f"max |prob diff| {head['max_prob_diff']:.2e}")


if __name__ == "__main__":
    main()
