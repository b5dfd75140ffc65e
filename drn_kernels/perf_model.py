"""A performance model on paper for the Triton conv_bn_act kernel: `python -m drn_kernels.perf_model`.

No GPU is needed: for a conv layer, a tile config of drn_kernels/triton/conv_bn_act.py and a device, it counts
  flops       useful 2*M*K*R*S*C, and the tensor-core work the tiles issue (tiles padded to BLOCK_M x BLOCK_N and
              each reduction step to BLOCK_C channels: masked lanes still occupy the MMA)
  l2_bytes    bytes the programs load from L2 into shared memory: every program reads its BLOCK_M input rows and
              its BLOCK_N weight rows for every reduction step (nothing is shared between programs except through
              L2), plus the epilogue's output write and residual read
  dram_bytes  bytes from/to DRAM: input, weight, output and residual once each, plus the input re-read that the
              launch order causes when it does not fit in L2 (see dram_bytes())
and turns them into a lower bound on time (a roofline with three roofs and the tail of the last wave):
  max(issued flops / tensor-core peak x wave quantisation, l2_bytes / L2 bandwidth, dram_bytes / DRAM bandwidth).
The config with the least bound is the model's prediction of the autotuner's choice. It is a bound, not a
forecast: pipelines that do not hide latency, bank conflicts and the epilogue's own time are not in it. The
first GPU run checks it (benchmarks record the autotuner's choice and the achieved fraction of the roofline).

The device figures (DEVICES) say where each number comes from; drn.tools.flops' datasheet peaks are read from here.
benchmarks/perf_model.py prints the model for every layer shape the benchmarks time; docs/gpu-performance-model.md
explains it with its results.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Iterable, Optional

from ._checks import conv_output_size


@dataclass(frozen=True)
class Device:
    name: str
    tensor_flops: float   # dense fp16/bf16 tensor-core FLOP/s (fp32 accumulate)
    tf32_flops: float     # dense TF32 tensor-core FLOP/s
    fp32_flops: float     # plain FP32 FMA pipe FLOP/s
    dram_bytes_per_s: float
    l2_bytes_per_s: float
    l2_bytes: int
    sms: int
    shared_per_sm: int    # bytes of shared memory one SM gives its blocks (the opt-in maximum per block is less)
    registers_per_sm: int = 65536
    threads_per_sm: int = 2048
    source: str = ""


# SXM parts, dense (no sparsity). Compute, DRAM and L2 size: NVIDIA's H100 and H200 datasheets (H100 SXM: 989 TFLOP/s
# fp16/bf16, 495 TF32, 67 FP32, 3.35 TB/s HBM3; H200 SXM: the same compute, 4.8 TB/s HBM3e) and the Hopper
# architecture whitepaper (132 SMs, 50 MB L2, 228 KB shared memory per SM). L2 bandwidth is in no datasheet: 5.5 TB/s
# is the order Chips and Cheese measured on an H100 PCIe ("Nvidia's H100: Funny L2, and Tons of Bandwidth", 2023;
# 114 SMs) and is used for both SXM parts as an assumption (the SXM part has more SMs and clocks: likely more);
# the device check should measure it.
DEVICES = {
    "H100": Device("H100 SXM", 989e12, 495e12, 67e12, 3.35e12, 5.5e12, 50 * 2**20, 132, 228 * 1024,
                   source="datasheet; L2 bandwidth assumed (see drn_kernels/perf_model.py)"),
    "H200": Device("H200 SXM", 989e12, 495e12, 67e12, 4.8e12, 5.5e12, 50 * 2**20, 132, 228 * 1024,
                   source="datasheet; L2 bandwidth assumed (see drn_kernels/perf_model.py)"),
}


def datasheet_peaks(device: Device) -> dict:
    """The roofline peaks in drn.tools.flops' form: FLOP/s per dtype key and DRAM bytes per second."""
    return {"fp16": device.tensor_flops, "bf16": device.tensor_flops, "tf32": device.tf32_flops,
            "fp32": device.fp32_flops, "bytes_per_s": device.dram_bytes_per_s}


@dataclass(frozen=True)
class Layer:
    """One conv_bn_act call: x (n, c, h, w), weight (k, c, r, s)."""
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    residual: bool = False

    @property
    def p(self) -> int:
        return conv_output_size(self.h, self.r, self.stride, self.padding, self.dilation)

    @property
    def q(self) -> int:
        return conv_output_size(self.w, self.s, self.stride, self.padding, self.dilation)

    @property
    def m(self) -> int:
        return self.n * self.p * self.q

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.r * self.s * self.c

    def input_bytes_touched(self, elt: int) -> int:
        """Input bytes the conv reads at all: every pixel, except a strided 1x1 conv, which reads one in stride**2
        (whole pixels: a pixel's channels are one contiguous run in channels_last)."""
        if self.r == 1 and self.s == 1:
            return self.m * self.c * elt
        return self.n * self.h * self.w * self.c * elt


@dataclass(frozen=True)
class Tile:
    """A conv_bn_act config: BLOCK_M x BLOCK_N outputs per program, BLOCK_C channels per reduction step."""
    block_m: int
    block_n: int
    block_c: int
    warps: int
    stages: int
    group_m: int = 8
    flat: bool = False

    @property
    def label(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_c} w{self.warps} s{self.stages}"

    def shared_bytes(self, elt: int) -> int:
        """Shared memory of the operand ring: `stages` copies of a BLOCK_M x BLOCK_C and a BLOCK_C x BLOCK_N tile
        (what triton allocates on sm_90; on sm_80 it keeps stages - 1)."""
        return self.stages * (self.block_m + self.block_n) * self.block_c * elt

    def registers(self) -> int:
        """Registers per thread, estimated: the fp32 accumulator's share plus 64 for addresses, masks and operand
        fragments (within ~15% of ptxas for the Hopper tiles, drn_kernels.aot), at most 255."""
        return min(255, self.block_m * self.block_n // (32 * self.warps) + 64)


def programs(layer: Layer, tile: Tile) -> tuple[int, int]:
    """(row tiles, column tiles) of the launch grid."""
    return math.ceil(layer.m / tile.block_m), math.ceil(layer.k / tile.block_n)


def reduction_steps(layer: Layer, tile: Tile) -> int:
    """Reduction steps per program: R*S taps x ceil(C / BLOCK_C) channel slices (FLAT: ceil(R*S*C / BLOCK_C))."""
    if tile.flat:
        return math.ceil(layer.r * layer.s * layer.c / tile.block_c)
    return layer.r * layer.s * math.ceil(layer.c / tile.block_c)


def issued_flops(layer: Layer, tile: Tile) -> int:
    """Tensor-core FLOPs the programs issue, masked lanes included."""
    tm, tn = programs(layer, tile)
    return 2 * tm * tile.block_m * tn * tile.block_n * reduction_steps(layer, tile) * tile.block_c


def l2_bytes(layer: Layer, tile: Tile, elt: int) -> int:
    """Bytes loaded from L2 into shared memory plus the epilogue's traffic: each of the tn column tiles reads all
    M input rows' R*S*C reduction elements, each of the tm row tiles reads all K weight rows; the output written
    once, the residual read once (masked rows and channels move nothing)."""
    tm, tn = programs(layer, tile)
    rsc = layer.r * layer.s * layer.c
    operands = (tn * layer.m + tm * layer.k) * rsc * elt
    return operands + layer.m * layer.k * elt * (2 if layer.residual else 1)


def concurrent_programs(tile: Tile, device: Device, elt: int) -> int:
    """Programs resident at once on the whole device: per SM the least of what shared memory, registers and
    threads allow (at least 1)."""
    threads = 32 * tile.warps
    per_sm = min(device.shared_per_sm // max(1, tile.shared_bytes(elt)),
                 device.registers_per_sm // (threads * tile.registers()),
                 device.threads_per_sm // threads)
    return device.sms * max(1, per_sm)


def dram_bytes(layer: Layer, tile: Tile, elt: int, device: Device, grouped: bool = True) -> int:
    """Compulsory DRAM traffic (input touched, weight, output, residual), plus input re-reads:
    - grouped launch order (the kernel's): the programs resident at once cover about concurrent / tn row tiles
      (GROUP_M-row groups, every column tile of a group): their input rows stay in L2 across the column tiles, so
      the input is read once when the resident wave's input and the weight fit in half the L2 (the other half for
      outputs and other traffic), else once per column tile;
    - row-major order (grouped=False, the kernel before grouping): each column tile walks all of M, so an input
      larger than half the L2 is read again for every column tile."""
    tm, tn = programs(layer, tile)
    x_bytes = layer.input_bytes_touched(elt)
    w_bytes = layer.k * layer.r * layer.s * layer.c * elt
    out_bytes = layer.m * layer.k * elt * (2 if layer.residual else 1)
    half_l2 = device.l2_bytes // 2
    if grouped:
        rows_resident = min(tm, max(tile.group_m, concurrent_programs(tile, device, elt) // tn)) * tile.block_m
        band = rows_resident / layer.q * layer.stride  # input image rows of the resident output rows ...
        halo = (band + (layer.r - 1) * layer.dilation) / band  # ... and the rows the taps reach beyond them
        wave_input = x_bytes * min(1.0, rows_resident / layer.m * halo)
        rereads = 1 if wave_input + w_bytes <= half_l2 else tn
    else:
        rereads = 1 if x_bytes <= half_l2 else tn
    return int(x_bytes * rereads + w_bytes + out_bytes)


@dataclass(frozen=True)
class Bound:
    layer: Layer
    tile: Tile
    device: Device
    flops: int
    issued_flops: int
    l2_bytes: int
    dram_bytes: int
    waves: int
    compute_s: float
    l2_s: float
    dram_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.l2_s, self.dram_s)

    @property
    def limit(self) -> str:
        """Which roof binds: "compute", "L2" or "DRAM"."""
        return max((self.compute_s, "compute"), (self.l2_s, "L2"), (self.dram_s, "DRAM"))[1]

    @property
    def tflops(self) -> float:
        """Useful TFLOP/s at the bound."""
        return self.flops / self.seconds / 1e12


def bound(layer: Layer, tile: Tile, device: Device, elt: int = 2, peak: Optional[float] = None) -> Bound:
    """The roofline bound of one layer with one tile on one device (elt: bytes per element; peak: FLOP/s of the
    MMA path, the device's 16-bit tensor-core peak by default). Compute time counts whole waves: a wave of
    the busiest SM's programs: ceil(programs / SMs) of them at one SM's share of the peak (the tail of the last
    wave)."""
    peak = peak or device.tensor_flops
    tm, tn = programs(layer, tile)
    total = tm * tn
    waves = math.ceil(total / concurrent_programs(tile, device, elt))
    issued = issued_flops(layer, tile)
    # the busiest SM computes ceil(total / SMs) programs' share at its 1/SMs of the peak
    compute_s = math.ceil(total / device.sms) * (issued / total) / (peak / device.sms)
    l2 = l2_bytes(layer, tile, elt)
    dram = dram_bytes(layer, tile, elt, device)
    return Bound(layer, tile, device, layer.flops, issued, l2, dram, waves, compute_s, l2 / device.l2_bytes_per_s,
                 dram / device.dram_bytes_per_s)


def tiles_from_configs(configs, flat: bool = False) -> list[Tile]:
    """Tiles of triton.Config objects (drn_kernels.triton.conv_bn_act's lists)."""
    return [Tile(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_C"], c.num_warps, c.num_stages,
                 c.kwargs.get("GROUP_M", 8), flat) for c in configs]


def candidate_tiles(layer: Layer, elt: int, device: Device) -> list[Tile]:
    """The tiles the autotuner would time for this layer: conv_bn_act's config list for the layer's reduction order
    and dtype, pruned as the launcher prunes it (shared memory taken from the device)."""
    from .triton import conv_bn_act as conv_mod

    flat = conv_mod.reduction_order(layer.c)
    configs = conv_mod.config_list(flat, elt == 4)
    limit = min(device.shared_per_sm, 227 * 1024) - conv_mod.SHARED_MARGIN
    kept = conv_mod.prune_for(configs, layer.c, layer.k, elt, flat, limit)
    return tiles_from_configs(kept, flat)


def best(layer: Layer, device: Device, elt: int = 2, tiles: Optional[Iterable[Tile]] = None) -> Bound:
    """The candidate with the least bound: the model's prediction of the autotuner's choice."""
    tiles = list(tiles) if tiles is not None else candidate_tiles(layer, elt, device)
    return min((bound(layer, t, device, elt) for t in tiles), key=lambda b: b.seconds)


def _row(b: Bound) -> str:
    return (f"{b.tile.label:<22} {b.seconds * 1e6:9.1f} us  {b.tflops:7.1f} TF/s  limit {b.limit:<7} "
            f"waves {b.waves:<4} issued/useful {b.issued_flops / b.flops:5.2f}  "
            f"L2 {b.l2_bytes / 1e6:9.1f} MB  DRAM {b.dram_bytes / 1e6:8.1f} MB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drn_kernels.perf_model", description=__doc__.splitlines()[0])
    parser.add_argument("layer", nargs="+", help="N,C,H,W,K,R,S[,stride,padding,dilation[,res]]")
    parser.add_argument("--device", choices=sorted(DEVICES), default="H100")
    parser.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    args = parser.parse_args(argv)
    device = DEVICES[args.device]
    for spec in args.layer:
        parts = spec.split(",")
        layer = Layer(*(int(v) for v in parts[:10]), residual=len(parts) > 10 and parts[10] == "res")
        print(f"{spec}: M={layer.m} {layer.flops / 1e9:.2f} GFLOP on {device.name}")
        bounds = sorted((bound(layer, t, device) for t in candidate_tiles(layer, 2, device)), key=lambda b: b.seconds)
        for b in bounds:
            print("  " + _row(b))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
