"""The reference's multi-scale segmentation protocol (fyu/drn segment.py, `test --ms`), reproduced exactly.

What the reference computes for an image of W×H pixels:
1. Inputs: the image itself, then the image resized by PIL's bicubic filter to (int(W·s), int(H·s)) for
   s = 0.5, 0.75, 1.25, 1.5, 1.75 — in this order (REFERENCE_SCALES).
2. Each input through the model: log_softmax over the classes of the ×8 up-sampled logits, the model's whole
   output of 8·⌈h/8⌉ × 8·⌈w/8⌉ pixels (no crop to the input's size).
3. Every map whose size is not H×W is resized to W×H one class at a time by PIL: the float32 class map as a mode
   'F' image, resize(BILINEAR). PIL's bilinear is a separable convolution with a triangle filter that widens by
   the size ratio when shrinking (antialiasing: the 1.25–1.75 scales) and is plain bilinear interpolation when
   enlarging; each output's weights are normalised over the taps that fall inside the map; the horizontal pass
   runs first and is rounded to float32, then the vertical one (accumulation in double).
4. The six H×W maps are summed in float32 in the order of step 1 — log-probabilities, not probabilities — and
   the label is the argmax over classes (the first class on ties).

Quirks, kept because they are the protocol: a side that is not a multiple of 8 gives a model output larger than
the input, and the whole output is squeezed into H×W (not cropped as the single-scale protocol does); this
includes the image's own scale (1), which is then resized too.

Two implementations of steps 2–4:
- unfused models (drn.build without fused=True): each scale's full log-probability map, F.log_softmax of the
  model's own up-sampler output as the reference's DRNSeg computes it; then resized and added to the running sum
  a few classes at a time. Every pixel equals the reference's (tests/test_multiscale.py).
- fused models: the low-resolution logits only; the log-sum-exp over classes of the up-sampled map is built a
  few classes at a time (online), then each class chunk is up-sampled again, normalised, resized and added. No
  map of all classes exists at any scale: memory is the running sum (K×H×W float32) plus one chunk. The
  up-sampling (two separable 2-tap passes) and the log-softmax round differently from the reference's
  transposed convolution and F.log_softmax, so labels agree except at near-ties.
Step 3 on the CPU is PIL itself (the reference's own call, so the values are those of the installed Pillow). On
other devices it is resize_like_pil_torch: Pillow's Resample.c arithmetic bit for bit (its taps and weights,
float64 sums in its order, horizontal pass first). A Pillow wheel's compiled code may round some of those sums
differently (by one float32 ulp; which wheels do: docs/evaluation.md), and a Pillow build may run the two passes in
the other order (a few ulps): labels differ at near-ties only.
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..zoo.heads import DRNSeg
from ..zoo.registry import IMAGENET_MEAN, IMAGENET_STD
from .data import to_tensor

REFERENCE_SCALES = (1.0, 0.5, 0.75, 1.25, 1.5, 1.75)

CHUNK_BYTES = 32 << 20  # classes per chunk: this many bytes of float64 per class at the scaled size (_chunk)


# ------------------------------------------------------------------------------------------------- resize

@functools.lru_cache(maxsize=64)
def pil_bilinear_taps(in_size: int, out_size: int):
    """PIL's bilinear resampling coefficients along one axis (Resample.c precompute_coeffs, in0=0, in1=in_size).

    Returns (first (out,) int64 first input index, weights (out, taps) float64, zero past each row's count,
    count (out,) int64 taps in use; cached per sizes: do not modify). Output pixel i's centre is (i + 0.5)·scale
    in input coordinates; the triangle filter's support is max(scale, 1); the taps are the inputs whose centres
    fall within it, clipped to the map, and their weights are normalised to sum to 1.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    inverse = 1.0 / filterscale  # PIL multiplies by the reciprocal (a division rounds differently)
    taps = int(math.ceil(support)) * 2 + 1
    first = torch.empty(out_size, dtype=torch.int64)
    count = torch.empty(out_size, dtype=torch.int64)
    weights = torch.zeros(out_size, taps, dtype=torch.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)       # C's (int) truncates toward zero, as here
        hi = min(int(center + support + 0.5), in_size)
        w = [max(0.0, 1.0 - abs((j - center + 0.5) * inverse)) for j in range(lo, hi)]
        total = sum(w)  # summed left to right, as PIL
        if total != 0.0:
            w = [v / total for v in w]
        first[i], count[i] = lo, hi - lo
        weights[i, :hi - lo] = torch.tensor(w, dtype=torch.float64)
    return first, weights, count


def _resample_axis(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """One PIL pass along `dim` (-1 horizontal, -2 vertical): float64 sums over the taps in order, then float32."""
    first, weights, count = pil_bilinear_taps(x.shape[dim], out_size)
    first, weights, count = first.to(x.device), weights.to(x.device), count.to(x.device)
    shape = [1] * x.dim()
    shape[dim] = out_size
    acc = torch.zeros([*x.shape[:dim % x.dim()], out_size, *x.shape[dim % x.dim() + 1:]], dtype=torch.float64,
                      device=x.device)
    last = x.shape[dim] - 1
    for t in range(weights.shape[1]):
        used = (count > t).view(shape)
        if not bool(used.any()):
            break
        src = x.index_select(dim, (first + t).clamp(max=last)).double()
        # taps past a row's count are not read (PIL stops at the count): where, not a zero weight, so an
        # infinite log-probability beyond the taps never turns into 0·inf = NaN
        acc = torch.where(used, acc + src * weights[:, t].view(shape), acc)
    return acc.float()


def resize_like_pil(maps: torch.Tensor, size) -> torch.Tensor:
    """(C, h, w) float32 maps resized to size (H, W) as PIL resizes each map as a mode 'F' image with
    Image.BILINEAR (the reference's resize_4d_tensor). CPU maps: PIL itself, one class per thread (PIL releases
    the GIL while it resamples); other devices: resize_like_pil_torch, the same arithmetic in torch."""
    if maps.dim() != 3 or maps.dtype != torch.float32:
        raise ValueError(f"maps must be (C, h, w) float32, got {tuple(maps.shape)} {maps.dtype}")
    height, width = (int(v) for v in size)
    if tuple(maps.shape[-2:]) == (height, width):
        return maps
    if maps.device.type != "cpu":
        return resize_like_pil_torch(maps, size)
    src = maps.contiguous().numpy()
    out = np.empty((src.shape[0], height, width), dtype=np.float32)

    def one(c):
        out[c] = np.asarray(Image.fromarray(src[c], mode="F").resize((width, height), Image.BILINEAR))

    workers = min(src.shape[0], max(1, torch.get_num_threads()))
    if workers == 1:
        for c in range(src.shape[0]):
            one(c)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(src.shape[0])))
    return torch.from_numpy(out)


def resize_like_pil_torch(maps: torch.Tensor, size) -> torch.Tensor:
    """resize_like_pil in torch ops (any device): PIL's taps and weights (pil_bilinear_taps), horizontal pass
    first rounded to float32, then vertical, each a float64 sum over the taps in PIL's order; an axis already at
    its size is not resampled. Resample.c's arithmetic bit for bit; an installed Pillow's within an ulp or a few
    (see the module docstring)."""
    height, width = (int(v) for v in size)
    if maps.shape[-1] != width:
        maps = _resample_axis(maps, width, -1)
    if maps.shape[-2] != height:
        maps = _resample_axis(maps, height, -2)
    return maps


# ----------------------------------------------------------------------------------------- class maps

def _chunk(rows: int, cols: int, device: torch.device) -> int:
    """Classes per chunk: CHUNK_BYTES of float64 work at the scaled size; on the CPU at least one class per
    thread, so PIL resizes them in parallel."""
    step = max(1, CHUNK_BYTES // max(1, rows * cols * 8))
    return max(step, torch.get_num_threads()) if device.type == "cpu" else step


def _upsample8_separable(low: torch.Tensor) -> torch.Tensor:
    """(c, h, w) -> (c, 8h, 8w): the reference's bilinear ConvTranspose2d(16, stride 8, padding 4) written as two
    1-D passes of two taps each (its kernel is an outer product; beyond the edges it sees zeros). Rounds
    differently from the transposed convolution (float32 sums in another order), several times faster on a CPU."""
    def axis(x, dim):
        n = x.shape[dim]
        o = torch.arange(8 * n, device=x.device)
        r = (o + 4) % 8
        hi = (o + 4) // 8                      # the input whose tap r (weight 1 - |r/8 - 15/16|) reaches o
        lo = hi - 1                            # and the one before it, tap r + 8
        w_hi = 1 - (r.double() / 8 - 15 / 16).abs()
        w_lo = 1 - ((r + 8).double() / 8 - 15 / 16).abs()
        w_hi = torch.where(hi < n, w_hi, 0.0).to(x.dtype)
        w_lo = torch.where(lo >= 0, w_lo, 0.0).to(x.dtype)
        shape = [1] * x.dim()
        shape[dim] = 8 * n
        return (x.index_select(dim, lo.clamp(min=0)) * w_lo.view(shape)
                + x.index_select(dim, hi.clamp(max=n - 1)) * w_hi.view(shape))
    return axis(axis(low, -1), -2)


upsample8 = _upsample8_separable


def _class_chunks_exact(model, x: torch.Tensor):
    """(start, log-probs (c, Hs, Ws) float32) of the unfused model: the reference's F.log_softmax of the whole
    up-sampled map, handed out a few classes at a time."""
    low = model.logits_low(x)
    log_probs = F.log_softmax(model.up(low), dim=1)[0].float()
    step = _chunk(log_probs.shape[-2], log_probs.shape[-1], log_probs.device)
    for c in range(0, log_probs.shape[0], step):
        yield c, log_probs[c:c + step]


def _class_chunks_streamed(model, x: torch.Tensor):
    """(start, log-probs (c, Hs, Ws) float32) from the low-resolution logits only: the log-sum-exp over classes
    of the up-sampled map accumulated online a chunk at a time, then each chunk up-sampled again and normalised.
    Never holds the up-sampled map of all classes."""
    low = model.logits_low(x)[0].float()
    k, rows, cols = low.shape[0], 8 * low.shape[1], 8 * low.shape[2]
    step = _chunk(rows, cols, low.device)
    peak = sumexp = None
    for c in range(0, k, step):
        up = upsample8(low[c:c + step])
        top = up.amax(dim=0)
        if peak is None:
            peak, sumexp = top, torch.exp(up - top).sum(dim=0)
        else:
            new = torch.maximum(peak, top)
            sumexp = sumexp * torch.exp(peak - new) + torch.exp(up - new).sum(dim=0)
            peak = new
        del up
    lse = peak + torch.log(sumexp)
    del peak, sumexp
    for c in range(0, k, step):
        yield c, upsample8(low[c:c + step]) - lse


# ------------------------------------------------------------------------------------------- protocol

def scaled_images(img: Image.Image, scales=REFERENCE_SCALES):
    """(scale, image): the image itself for 1, else PIL bicubic to (int(W·s), int(H·s)) as the reference."""
    w, h = img.size
    for s in scales:
        if s <= 0:
            raise ValueError(f"scales must be positive, got {s}")
        if s == 1.0:
            yield s, img
        else:
            size = (int(w * s), int(h * s))
            if min(size) < 1:
                raise ValueError(f"scale {s} shrinks the {w}x{h} image to nothing")
            yield s, img.resize(size, Image.BICUBIC)


def is_streamed(model) -> bool:
    """The default: streamed class chunks for a fused model, the exact maps for the unfused DRNSeg."""
    return not isinstance(model, DRNSeg)


@torch.no_grad()
def log_prob_sum(model, img: Image.Image, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, scales=REFERENCE_SCALES,
                 streamed=None) -> torch.Tensor:
    """(K, H, W) float32: the running sum over `scales` of every scale's log-probabilities resized to the
    image's size as the reference does (see the module docstring). One map of this size is the only one held.
    streamed: None = is_streamed(model); True / False force the streamed class chunks / the exact maps."""
    device = next(iter(model.parameters())).device
    w, h = img.size
    if streamed is None:
        streamed = is_streamed(model)
    if not streamed and not isinstance(model, DRNSeg):
        raise ValueError("streamed=False needs the unfused segmentation model (its own up-sampler)")
    chunks = _class_chunks_streamed if streamed else _class_chunks_exact
    total = None
    for i, (_, scaled) in enumerate(scaled_images(img, scales)):
        x = to_tensor(scaled, mean, std)[None].to(device)
        for c, part in chunks(model, x):
            if total is None:
                total = torch.empty((num_classes(model), h, w), dtype=torch.float32, device=device)
            part = resize_like_pil(part, (h, w))
            if i == 0:
                total[c:c + part.shape[0]] = part
            else:
                total[c:c + part.shape[0]] += part
            del part
    return total


def num_classes(model) -> int:
    return int(model.num_classes)


def segment(model, img: Image.Image, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, scales=REFERENCE_SCALES,
            streamed=None) -> torch.Tensor:
    """(H, W) int64 labels of the reference's multi-scale protocol: argmax over classes of log_prob_sum (the
    first class on ties, as numpy's argmax)."""
    return log_prob_sum(model, img, mean=mean, std=std, scales=scales, streamed=streamed).argmax(dim=0).cpu()
