"""The paper performance model (drn_kernels.perf_model) over every layer shape the benchmarks time.

    python -m benchmarks.perf_model [--device H100|H200|both] [--dtype fp16|bf16] [--markdown]

For each distinct conv_bn_act call of the benchmarked models (benchmarks.common.layer_shapes: drn_c_26, drn_c_42,
drn_d_22, drn_d_38 at batch 1 and 8, 224x224 and 1024x2048), every tile the autotuner would time for it: issued
and useful FLOPs, bytes from L2 and DRAM, the roofline bound on each device and the roof that binds; the tile with
the least bound is the model's predicted winner. Also the DRAM bytes the old row-major launch order would move,
to show what grouping the programs saves. No GPU needed (deriving the shapes walks the models: ~30 s of CPU).
"""
from __future__ import annotations

import argparse

from drn_kernels import perf_model

from .common import layer_shapes


def layers() -> list[tuple[str, perf_model.Layer]]:
    """(benchmark id, model layer) of every benchmarked shape."""
    return [(s.id, perf_model.Layer(s.n, s.c, s.h, s.w, s.k, s.r, s.s, s.stride, s.padding, s.dilation,
                                    s.residual)) for s in layer_shapes()]


def predictions(device: perf_model.Device, elt: int = 2) -> list[dict]:
    """One record per benchmarked layer: the predicted winner's bound and the runner-up's, and the DRAM bytes of
    the winner under the old row-major order."""
    out = []
    for name, layer in layers():
        tiles = perf_model.candidate_tiles(layer, elt, device)
        bounds = sorted((perf_model.bound(layer, t, device, elt) for t in tiles), key=lambda b: b.seconds)
        win = bounds[0]
        out.append({
            "layer": name, "device": device.name, "gflop": layer.flops / 1e9, "tile": win.tile.label,
            "bound_us": win.seconds * 1e6, "tflops": win.tflops, "limit": win.limit,
            "l2_mb": win.l2_bytes / 1e6, "dram_mb": win.dram_bytes / 1e6,
            "dram_row_major_mb": perf_model.dram_bytes(layer, win.tile, elt, device, grouped=False) / 1e6,
            "issued_over_useful": win.issued_flops / win.flops,
            "runner_up": bounds[1].tile.label if len(bounds) > 1 else "",
            "runner_up_us": bounds[1].seconds * 1e6 if len(bounds) > 1 else float("nan"),
        })
    return out


COLUMNS = ("layer", "tile", "bound_us", "tflops", "limit", "l2_mb", "dram_mb", "dram_row_major_mb",
           "issued_over_useful", "runner_up", "runner_up_us")


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def table(rows: list[dict], markdown: bool) -> str:
    cells = [[_fmt(r[c]) for c in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    return "\n".join(lines + ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf_model", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(perf_model.DEVICES) + ["both"], default="both")
    parser.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    names = sorted(perf_model.DEVICES) if args.device == "both" else [args.device]
    for name in names:
        device = perf_model.DEVICES[name]
        print(f"## {device.name} ({args.dtype}; {device.source})\n")
        print(table(predictions(device), args.markdown))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
