"""Row-band execution of a fused backbone: the memory-frugal FusedSegmenter.predict.

A segmentation forward at 1024x2048 holds full-resolution 16-channel maps (128 MB each in float32) in its stem
and 64 MB maps at 1/8 resolution in its last levels; run layer by layer, two or three of them are alive at once.
Here no more than two whole maps are (drn_d_22 at 1024x2048: 132 MB peak against eager's 384 MB):

- A *unit* (drn.fused.FusedConv, FusedBasicBlock, FusedBottleneck) knows its output shape (`out_shape(c, h, w)`),
  which input rows a band of output rows reads (`rows_needed(o0, o1, h)`, clamped to the map), and how to compute
  exactly those output rows from a tensor holding input rows [lo, lo + rows) (`run_rows`). A conv computes a band
  with vertical padding 0 on its exact input rows, zero rows added only where the band reaches past the map's
  edge, so a band's rows equal the whole map's (up to the float rounding of Winograd tiles, which start at the
  band).
- `run_banded(units, x, rows)`: a chain of units band by band into one preallocated output; the halo rows a band
  shares with its neighbours are recomputed by the layers before (the stem at 1024x2048 in bands of 32 output
  rows computes 6-16 % more rows per layer than the map has).
- `conv_over_rows(conv, t, rows)`: a stride-1 conv that keeps the shape written over its own input, one band
  behind: no recompute, two bands alive.
- `banded_class_head`: drn_kernels.class_head(upsample=8) band by band (the x8 bilinear up-sampler reads one
  low-resolution row either side), after an optional chain of units.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import drn_kernels

CL = torch.channels_last


def chain_shapes(units, x: torch.Tensor) -> list[tuple[int, int, int]]:
    """[(C, H, W) of x, of unit 0's output, of unit 1's output, ...]."""
    out = [tuple(x.shape[1:])]
    for u in units:
        out.append(u.out_shape(*out[-1]))
    return out


def chain_heights(units, x: torch.Tensor) -> list[int]:
    return [shape[1] for shape in chain_shapes(units, x)]


def chain_rows(units, heights: list[int], o0: int, o1: int) -> list[tuple[int, int]]:
    """For output rows [o0, o1) of the chain, the rows of every map along it: [(lo, hi) of the input, ..., (o0, o1)]."""
    ranges = [(o0, o1)]
    for u, h in zip(reversed(units), reversed(heights[:-1])):
        ranges.append(u.rows_needed(*ranges[-1], h))
    return ranges[::-1]


def run_chain(units, heights, ranges, src: torch.Tensor, residual=None) -> torch.Tensor:
    """Rows ranges[-1] of the chain's output from src = rows ranges[0] of its input; `residual` (rows
    ranges[-1]) is added by the last unit."""
    t = src
    for i, u in enumerate(units):
        last = i == len(units) - 1
        t = u.run_rows(t, ranges[i][0], heights[i], *ranges[i + 1], **({"residual": residual} if last and
                                                                         residual is not None else {}))
    return t


def rows_per_band(units, x: torch.Tensor, budget_bytes: int) -> int:
    """Output rows per band such that the band of each map along the chain is about budget_bytes at most."""
    shapes = chain_shapes(units, x)
    out_h = shapes[-1][1]
    per_row = max(x.shape[0] * c * w * x.element_size() * h / out_h for c, h, w in shapes)
    return max(1, int(budget_bytes // max(per_row, 1)))


def run_banded(units, x: torch.Tensor, rows: int) -> torch.Tensor:
    """The chain's output (channels_last), computed `rows` output rows at a time."""
    heights = chain_heights(units, x)
    out = None
    for o0 in range(0, heights[-1], rows):
        ranges = chain_rows(units, heights, o0, min(heights[-1], o0 + rows))
        lo, hi = ranges[0]
        band = run_chain(units, heights, ranges, x[:, :, lo:hi])
        if out is None:
            out = torch.empty((band.shape[0], band.shape[1], heights[-1], band.shape[3]), dtype=band.dtype,
                              device=band.device, memory_format=CL)
        out[:, :, ranges[-1][0]:ranges[-1][1]].copy_(band)
    return out


def pad_rows(t: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """t with `top` / `bottom` zero rows added (the zero padding of a band that reaches past the map's edge)."""
    if top == 0 and bottom == 0:
        return t
    return F.pad(t, (0, 0, top, bottom)).contiguous(memory_format=CL)


def banded_class_head(units, x: torch.Tensor, weight, bias, rows: int, backend: str):
    """(labels, probs) of drn_kernels.class_head(chain(x), weight, bias, upsample=8), computed `rows` rows of the
    chain's output at a time; the chain may be empty."""
    heights = chain_heights(units, x)
    h = heights[-1]
    labels = probs = None
    for a in range(0, h, rows):
        b = min(h, a + rows)
        lo, hi = max(0, a - 1), min(h, b + 1)  # the x8 up-sampler of rows [8a, 8b) reads low rows a-1 .. b
        ranges = chain_rows(units, heights, lo, hi)
        feats = run_chain(units, heights, ranges, x[:, :, ranges[0][0]:ranges[0][1]])
        lab, prob = drn_kernels.class_head(feats, weight, bias, upsample=8, backend=backend)
        if labels is None:
            shape = (x.shape[0], 8 * h, lab.shape[2])
            labels, probs = lab.new_empty(shape), prob.new_empty(shape)
        labels[:, 8 * a:8 * b] = lab[:, 8 * (a - lo):8 * (b - lo)]
        probs[:, 8 * a:8 * b] = prob[:, 8 * (a - lo):8 * (b - lo)]
    return labels, probs


def conv_over_rows(conv, t: torch.Tensor, rows: int, shortcut=None) -> torch.Tensor:
    """conv(t) (+ shortcut(o0, o1), the residual rows of a band) written over t's own storage, band by band.

    For a stride-1 conv with as many output channels as input channels and "same" padding: a band of output rows
    [o0, o1) reads t's rows up to o1 + padding, so once the next band has been computed nothing reads the
    previous band's rows again, and the previous band's result is written there. Two bands of output are alive
    at a time instead of a second whole map; nothing is recomputed. t must not be read by anyone else.
    """
    h = t.shape[2]
    halo = (h - 1) - conv.rows_needed(h - 1, h, h)[0]  # rows above an output row that it reads
    if conv.out_shape(*t.shape[1:]) != tuple(t.shape[1:]) or rows < halo:
        raise ValueError(f"conv_over_rows: {conv.name} does not map {tuple(t.shape[1:])} onto itself with bands "
                         f"of {rows} rows")
    pending = None
    for o0 in range(0, h, rows):
        o1 = min(h, o0 + rows)
        band = conv.run_rows(t, 0, h, o0, o1, residual=None if shortcut is None else shortcut(o0, o1))
        if pending is not None:
            t[:, :, pending[0]:o0].copy_(pending[1])
        pending = (o0, band)
    t[:, :, pending[0]:].copy_(pending[1])
    return t
