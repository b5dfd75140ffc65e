# class_head and localize: argmax / max-probability of softmax over K classes of a 1x1 classifier, without ever
# holding a pixels x K buffer at the output resolution.
#
# Math: logits[p, k] = sum_c x[p, c] * w[k, c] + b[k]; label = argmax_k (torch rules: first index on ties, the
#   first NaN wins), prob = softmax(logits)[label] = 1 / sum_k exp(logits[k] - max). Both come from an online
#   softmax streamed over class tiles: a running max m, running sum s of exp(l - m) (rescaled when m grows), the
#   running argmax and a sticky "saw a NaN" flag with its first index; prob = 1 / s, NaN once a NaN was seen or
#   when the max is +-inf (torch.softmax's NaN rule).
# Kernels:
#   class_head_kernel    one program per (tile of BLOCK_P pixels, image). For each class tile it runs the
#                        BLOCK_P x BLOCK_K x C GEMM on tensor cores (fp32 accumulation), adds the bias, then
#                        (ARGMAX) updates the online softmax, (WRITE_LOGITS) stores the tile's fp32 logits, or
#                        (PARTIAL_SUMS) stores the tile's per-class sum over its pixels.
#   upsample_argmax_kernel  upsample=8, second stage. The low-res fp32 logits (N, h, w, K) -- 1/64 of the
#                        output size, the only logits ever written -- come from class_head_kernel(WRITE_LOGITS).
#                        One program per tile of output pixels; each pixel blends its 2x2 low-res cells with the
#                        reference ConvTranspose2d(16, stride 8, padding 4) bilinear weights in registers, class
#                        tile by class tile, straight into the online softmax.
#   box_kernel           localize, one program per image: min/max cell coordinates of the cells labelled with
#                        the image's top-1 class and scoring above the threshold.
# localize = class_head_kernel(ARGMAX + PARTIAL_SUMS) on the feature map, then the per-tile partial sums are
#   added in a fixed order (a torch sum over a (N, tiles, K) buffer: deterministic, unlike float atomics), the
#   image logits are their mean, top-1 is torch.argmax of those, and box_kernel draws the boxes.
# fp32 inputs use exact-fp32 dot (input_precision="ieee", common.precision_exact_fp32): the head is a tiny share
#   of the FLOPs and TF32 would flip labels whose top-2 margin is below ~1e-3.
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import _backends
from .._schemas import FAKES, empty_class_head_output, empty_localize_output
from . import config_table, launcher, register_op
from .common import dot_in_fp32, needs_int64, precision_exact_fp32, size_bucket

# The first config of each list fixes BLOCK_P of localize's partial-sum pass (64 in both).
HEAD_CONFIGS = [
    triton.Config({"BLOCK_P": 64, "BLOCK_K": 64, "BLOCK_C": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 64, "BLOCK_K": 32, "BLOCK_C": 64}, num_warps=4, num_stages=3),
]
# exact-fp32 dot is FMA-based and register hungry: narrower tiles (32x64 on 8 warps: on 4, triton 3.6 spills 12 bytes)
HEAD_FP32_CONFIGS = [
    triton.Config({"BLOCK_P": 64, "BLOCK_K": 32, "BLOCK_C": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 32, "BLOCK_K": 64, "BLOCK_C": 16}, num_warps=8, num_stages=2),
]
UPSAMPLE_CONFIGS = [
    triton.Config({"BLOCK_P": 128, "BLOCK_K": 32}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_P": 64, "BLOCK_K": 64}, num_warps=4, num_stages=1),
]
BOX_CONFIG = {"BLOCK": 256}
INTERPRET_HEAD_CONFIG = {"BLOCK_P": 32, "BLOCK_K": 32, "BLOCK_C": 16}
INTERPRET_UPSAMPLE_CONFIG = {"BLOCK_P": 64, "BLOCK_K": 32}


@triton.jit
def _online_argmax_update(logit, cols, col_ok, m, s, arg, nan_seen, nan_arg, K):
    """Fold one (BLOCK_P, BLOCK_K) logits tile into the per-row online softmax state."""
    l = tl.where(col_ok[None, :], logit, float("-inf"))
    is_nan = l != l
    tile_nan = tl.max(is_nan.to(tl.int32), axis=1) > 0
    tile_nan_arg = tl.min(tl.where(is_nan, cols[None, :], K), axis=1)
    clean = tl.where(is_nan, float("-inf"), l)
    tile_max = tl.max(clean, axis=1)
    tile_arg = tl.min(tl.where(clean == tile_max[:, None], cols[None, :], K), axis=1)
    new_m = tl.maximum(m, tile_max)
    # exp(m - new_m) is NaN for -inf - -inf (nothing finite seen yet); the scale is then irrelevant: use 1
    scale = tl.where(m == new_m, 1.0, tl.exp(m - new_m))
    # a -inf logit adds exp(-inf) = 0, also under a -inf running max (where clean - new_m would be NaN)
    terms = tl.where(clean == float("-inf"), 0.0, tl.exp(clean - new_m[:, None]))
    s = s * scale + tl.sum(terms, axis=1)
    arg = tl.where(tile_max > m, tile_arg, arg)  # strictly greater: on a tie the earlier class tile keeps it
    nan_arg = tl.where(tile_nan & (nan_seen == 0), tile_nan_arg, nan_arg)
    nan_seen = nan_seen | tile_nan.to(tl.int32)
    return new_m, s, arg, nan_seen, nan_arg


@triton.jit
def _online_argmax_result(m, s, arg, nan_seen, nan_arg):
    """(label, prob) of the online softmax state: torch.argmax's label; prob NaN when a NaN was seen or the max
    is +-inf (l - max is then NaN in torch.softmax, also for a pixel whose logits are all -inf), else 1 / s."""
    label = tl.where(nan_seen > 0, nan_arg, arg)
    prob = tl.where((nan_seen > 0) | ((m - m) != 0.0), float("nan"), 1.0 / s)
    return label, prob


@triton.jit(do_not_specialize=["PIX_BUCKET"])
def class_head_kernel(
    x_ptr,  # features (N, C, H, W), element strides sxn, sxc, sxh, sxw (any memory format)
    w_ptr,  # classifier weight (K, C), strides swk, swc
    b_ptr,  # bias (K,), element stride sbk (any view)
    labels_ptr,  # (N, H*W) contiguous, label dtype; written when ARGMAX
    probs_ptr,  # (N, H*W) float32; written when ARGMAX
    logits_ptr,  # (N, H*W, K) float32; written when WRITE_LOGITS
    partial_ptr,  # (N, tiles, K) float32, per pixel-tile sums of the logits; written when PARTIAL_SUMS
    HW, W, C, K,
    sxn, sxc, sxh, sxw, swk, swc, sbk,
    PIX_BUCKET,  # size_bucket(N*H*W): read only by the autotuner's key
    ARGMAX: tl.constexpr, WRITE_LOGITS: tl.constexpr, PARTIAL_SUMS: tl.constexpr, USE_INT64: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    n = tl.program_id(1)
    pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = pix < HW
    if USE_INT64:
        pix = pix.to(tl.int64)
        n = n.to(tl.int64)
    x_row = n * sxn + (pix // W) * sxh + (pix % W) * sxw
    out_row = n * HW + pix
    offs_c = tl.arange(0, BLOCK_C)

    m = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_P,), tl.float32)
    arg = tl.zeros((BLOCK_P,), tl.int32)
    nan_seen = tl.zeros((BLOCK_P,), tl.int32)
    nan_arg = tl.zeros((BLOCK_P,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        acc = tl.zeros((BLOCK_P, BLOCK_K), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + offs_c
            c_ok = c < C
            a = tl.load(x_ptr + x_row[:, None] + c[None, :] * sxc, mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_ptr + cols[None, :] * swk + c[:, None] * swc, mask=c_ok[:, None] & col_ok[None, :],
                        other=0.0)
            if DOT_IN_FP32:  # interpreter only: numpy has no bf16 matmul (common.dot_in_fp32)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        logit = acc + tl.load(b_ptr + cols * sbk, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if WRITE_LOGITS:
            tl.store(logits_ptr + out_row[:, None] * K + cols[None, :], logit,
                     mask=pix_ok[:, None] & col_ok[None, :])
        if PARTIAL_SUMS:
            tile_sum = tl.sum(tl.where(pix_ok[:, None], logit, 0.0), axis=0)
            tiles = tl.num_programs(0)
            tl.store(partial_ptr + (n * tiles + pid_p) * K + cols, tile_sum, mask=col_ok)
        if ARGMAX:
            m, s, arg, nan_seen, nan_arg = _online_argmax_update(logit, cols, col_ok, m, s, arg, nan_seen,
                                                                 nan_arg, K)
    if ARGMAX:
        label, prob = _online_argmax_result(m, s, arg, nan_seen, nan_arg)
        tl.store(labels_ptr + out_row, label.to(labels_ptr.dtype.element_ty), mask=pix_ok)
        tl.store(probs_ptr + out_row, prob, mask=pix_ok)


@triton.jit(do_not_specialize=["PIX_BUCKET"])
def upsample_argmax_kernel(
    logits_ptr,  # low-res logits (N, h, w, K) float32 contiguous
    labels_ptr,  # (N, 8h * 8w) contiguous, label dtype
    probs_ptr,  # (N, 8h * 8w) float32
    h, w, K,
    PIX_BUCKET,  # size_bucket(N*8h*8w): read only by the autotuner's key
    USE_INT64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    n = tl.program_id(1)
    OW = 8 * w
    OHW = 64 * h * w
    o = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_ok = o < OHW
    if USE_INT64:
        o = o.to(tl.int64)
        n = n.to(tl.int64)
    oy = o // OW
    ox = o % OW
    # output o along an axis: cell j = (o+4)//8 with weight k/8 + 1/16 and cell j-1 with 15/16 - k/8, k = (o+4)%8
    jy = (oy + 4) // 8
    jx = (ox + 4) // 8
    fy = ((oy + 4) % 8).to(tl.float32) * 0.125
    fx = ((ox + 4) % 8).to(tl.float32) * 0.125
    y_hi_ok = jy < h
    y_lo_ok = jy >= 1
    x_hi_ok = jx < w
    x_lo_ok = jx >= 1
    wy_hi = tl.where(y_hi_ok, fy + 0.0625, 0.0)
    wy_lo = tl.where(y_lo_ok, 0.9375 - fy, 0.0)
    wx_hi = tl.where(x_hi_ok, fx + 0.0625, 0.0)
    wx_lo = tl.where(x_lo_ok, 0.9375 - fx, 0.0)
    cell = (n * h + jy) * w + jx  # (jy, jx); neighbours at -1 row (w cells) and -1 column
    ok_hh = o_ok & y_hi_ok & x_hi_ok
    ok_hl = o_ok & y_hi_ok & x_lo_ok
    ok_lh = o_ok & y_lo_ok & x_hi_ok
    ok_ll = o_ok & y_lo_ok & x_lo_ok

    m = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_P,), tl.float32)
    arg = tl.zeros((BLOCK_P,), tl.int32)
    nan_seen = tl.zeros((BLOCK_P,), tl.int32)
    nan_arg = tl.zeros((BLOCK_P,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        base = logits_ptr + cols[None, :]
        l_hh = tl.load(base + cell[:, None] * K, mask=ok_hh[:, None] & col_ok[None, :], other=0.0)
        l_hl = tl.load(base + (cell - 1)[:, None] * K, mask=ok_hl[:, None] & col_ok[None, :], other=0.0)
        l_lh = tl.load(base + (cell - w)[:, None] * K, mask=ok_lh[:, None] & col_ok[None, :], other=0.0)
        l_ll = tl.load(base + (cell - w - 1)[:, None] * K, mask=ok_ll[:, None] & col_ok[None, :], other=0.0)
        logit = (wy_hi[:, None] * (wx_hi[:, None] * l_hh + wx_lo[:, None] * l_hl)
                 + wy_lo[:, None] * (wx_hi[:, None] * l_lh + wx_lo[:, None] * l_ll))
        m, s, arg, nan_seen, nan_arg = _online_argmax_update(logit, cols, col_ok, m, s, arg, nan_seen, nan_arg, K)
    label, prob = _online_argmax_result(m, s, arg, nan_seen, nan_arg)
    out = n * OHW + o
    tl.store(labels_ptr + out, label.to(labels_ptr.dtype.element_ty), mask=o_ok)
    tl.store(probs_ptr + out, prob, mask=o_ok)


@triton.jit
def box_kernel(
    labels_ptr,  # (N, h*w) int64 per-cell labels
    scores_ptr,  # (N, h*w) float32 per-cell probabilities
    top1_ptr,  # (N,) int64 image top-1 class
    boxes_ptr,  # (N, 4) float32 (x1, y1, x2, y2) in input pixels, -1 when no cell qualifies
    HW, W, threshold, stride,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    top1 = tl.load(top1_ptr + n)
    big = 2**30
    x_min = tl.full((BLOCK,), big, tl.int32)
    y_min = tl.full((BLOCK,), big, tl.int32)
    x_max = tl.full((BLOCK,), -1, tl.int32)
    y_max = tl.full((BLOCK,), -1, tl.int32)
    for start in range(0, HW, BLOCK):
        cell = start + tl.arange(0, BLOCK)
        ok = cell < HW
        label = tl.load(labels_ptr + n * HW + cell, mask=ok, other=-1)
        score = tl.load(scores_ptr + n * HW + cell, mask=ok, other=0.0)
        hit = ok & (label == top1) & (score > threshold)
        cy = cell // W
        cx = cell % W
        x_min = tl.minimum(x_min, tl.where(hit, cx, big))
        y_min = tl.minimum(y_min, tl.where(hit, cy, big))
        x_max = tl.maximum(x_max, tl.where(hit, cx, -1))
        y_max = tl.maximum(y_max, tl.where(hit, cy, -1))
    x1 = tl.min(x_min, axis=0)
    y1 = tl.min(y_min, axis=0)
    x2 = tl.max(x_max, axis=0)
    y2 = tl.max(y_max, axis=0)
    found = x2 >= 0
    # cell * stride in int64 (stride may be up to 2**31-1), rounded once to float32
    x1 = x1.to(tl.int64) * stride
    y1 = y1.to(tl.int64) * stride
    x2 = (x2 + 1).to(tl.int64) * stride
    y2 = (y2 + 1).to(tl.int64) * stride
    tl.store(boxes_ptr + n * 4 + 0, tl.where(found, x1.to(tl.float32), -1.0))
    tl.store(boxes_ptr + n * 4 + 1, tl.where(found, y1.to(tl.float32), -1.0))
    tl.store(boxes_ptr + n * 4 + 2, tl.where(found, x2.to(tl.float32), -1.0))
    tl.store(boxes_ptr + n * 4 + 3, tl.where(found, y2.to(tl.float32), -1.0))


_HEAD_KEY = ["C", "K", "PIX_BUCKET", "ARGMAX", "WRITE_LOGITS"]
CLASS_HEAD_TUNED = {fp32: triton.autotune(configs=HEAD_FP32_CONFIGS if fp32 else HEAD_CONFIGS,
                                           key=_HEAD_KEY)(class_head_kernel) for fp32 in (False, True)}
UPSAMPLE_ARGMAX_TUNED = triton.autotune(configs=UPSAMPLE_CONFIGS, key=["K", "PIX_BUCKET"])(upsample_argmax_kernel)


# ---- launchers ----------------------------------------------------------------------------------------------

def _launch_head(x, weight2d, bias, labels, probs, logits, partial, *, argmax, write_logits, partial_sums):
    n, c, h, w = x.shape
    k = weight2d.shape[0]
    dummy = probs if probs is not None else logits
    args = (x, weight2d, bias, labels if labels is not None else dummy, probs if probs is not None else dummy,
            logits if logits is not None else dummy, partial if partial is not None else dummy,
            h * w, w, c, k, *x.stride(), *weight2d.stride(), bias.stride(0), size_bucket(n * h * w))
    flags = dict(ARGMAX=argmax, WRITE_LOGITS=write_logits, PARTIAL_SUMS=partial_sums,
                 USE_INT64=needs_int64(x, weight2d, bias, labels, probs, logits),
                 DOT_PRECISION=precision_exact_fp32(x.dtype), DOT_IN_FP32=dot_in_fp32(x.dtype))
    if _backends.triton_interpreting():
        cfg = INTERPRET_HEAD_CONFIG
        launcher(class_head_kernel)[(triton.cdiv(h * w, cfg["BLOCK_P"]), n)](*args, **flags, **cfg)
    else:
        def grid(meta):
            return (triton.cdiv(h * w, meta["BLOCK_P"]), n)

        tuned = CLASS_HEAD_TUNED[x.dtype == torch.float32]
        if not config_table.launch("class_head", tuned, launcher, args, flags, grid):
            launcher(tuned)[grid](*args, **flags)


def _head_tiles(hw: int) -> int:
    """Pixel tiles per image of the partial-sum pass (its BLOCK_P is fixed so the buffer size is known)."""
    block = INTERPRET_HEAD_CONFIG if _backends.triton_interpreting() else HEAD_CONFIGS[0].kwargs
    assert HEAD_CONFIGS[0].kwargs["BLOCK_P"] == HEAD_FP32_CONFIGS[0].kwargs["BLOCK_P"]
    return triton.cdiv(hw, block["BLOCK_P"])


@register_op("drn::class_head_triton", FAKES["class_head"])
def class_head_triton(x: Tensor, weight: Tensor, bias: Tensor, upsample: int,
                      label_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    labels, probs = empty_class_head_output(x, upsample, label_dtype)
    n, c, h, w = x.shape
    k = weight.shape[0]
    if labels.numel() == 0:
        return labels, probs
    weight2d = weight.reshape(k, c)
    if upsample == 1:
        _launch_head(x, weight2d, bias, labels, probs, None, None, argmax=True, write_logits=False,
                     partial_sums=False)
        return labels, probs
    low = torch.empty((n, h, w, k), dtype=torch.float32, device=x.device)  # 1/64 of the output: allowed
    _launch_head(x, weight2d, bias, None, None, low, None, argmax=False, write_logits=True, partial_sums=False)
    args = (low, labels, probs, h, w, k, size_bucket(labels.numel()))
    use_int64 = needs_int64(low, labels)
    if _backends.triton_interpreting():
        cfg = INTERPRET_UPSAMPLE_CONFIG
        grid = (triton.cdiv(64 * h * w, cfg["BLOCK_P"]), n)
        launcher(upsample_argmax_kernel)[grid](*args, USE_INT64=use_int64, **cfg)
    else:
        def grid(meta):
            return (triton.cdiv(64 * h * w, meta["BLOCK_P"]), n)

        flags = dict(USE_INT64=use_int64)
        if not config_table.launch("upsample_argmax", UPSAMPLE_ARGMAX_TUNED, launcher, args, flags, grid):
            launcher(UPSAMPLE_ARGMAX_TUNED)[grid](*args, **flags)
    return labels, probs


@register_op("drn::localize_triton", FAKES["localize"])
def localize_triton(x: Tensor, weight: Tensor, bias: Tensor, threshold: float,
                    stride: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    logits, labels, scores, boxes = empty_localize_output(x, weight)
    n, c, h, w = x.shape
    k = weight.shape[0]
    if h * w == 0:
        return logits.zero_(), labels, scores, boxes.fill_(-1.0)
    weight2d = weight.reshape(k, c)
    partial = torch.empty((n, _head_tiles(h * w), k), dtype=torch.float32, device=x.device)
    # the partial-sum pass needs a known tile count, so it runs the untuned kernel at one fixed config
    args = (x, weight2d, bias, labels, scores, scores, partial, h * w, w, c, k, *x.stride(), *weight2d.stride(),
            bias.stride(0), size_bucket(n * h * w))
    flags = dict(ARGMAX=True, WRITE_LOGITS=False, PARTIAL_SUMS=True,
                 USE_INT64=needs_int64(x, weight2d, bias, labels, partial),
                 DOT_PRECISION=precision_exact_fp32(x.dtype), DOT_IN_FP32=dot_in_fp32(x.dtype))
    first = (HEAD_FP32_CONFIGS if x.dtype == torch.float32 else HEAD_CONFIGS)[0]
    cfg = INTERPRET_HEAD_CONFIG if _backends.triton_interpreting() else first.kwargs
    launch = {} if _backends.triton_interpreting() else dict(num_warps=first.num_warps, num_stages=first.num_stages)
    launcher(class_head_kernel)[(partial.shape[1], n)](*args, **flags, **cfg, **launch)
    mean = partial.sum(dim=1) / (h * w)  # fixed-order reduction: bit-identical run to run
    logits.copy_(mean)
    top1 = torch.argmax(mean, dim=1)
    launcher(box_kernel)[(n,)](labels, scores, top1, boxes, h * w, w, threshold, stride,
                                                 **BOX_CONFIG)
    return logits, labels, scores, boxes
