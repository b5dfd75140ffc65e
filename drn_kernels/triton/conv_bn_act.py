# conv_bn_act: y = relu?(conv2d(x, w, stride, padding, dilation) + bias + residual?), one Triton kernel.
#
# Math: implicit GEMM. Rows M = N*P*Q output pixels, columns = K output channels, reduction over R*S*C taps with
#   C fastest. The A operand (M x RSC) is the im2col matrix, gathered on the fly from x: a tap (r, s) only moves
#   the input coordinates to (p*stride_h - pad_h + r*dil_h, q*stride_w - pad_w + s*dil_w); out-of-image taps are
#   masked to zero (the padding). Nothing im2col-shaped ever reaches memory.
# Layout: x, bias and residual in any strides (channels_last makes the C axis unit-stride, which triton
#   specialises on, so the gather vectorises); the weight as (K, R, S, C) contiguous, i.e. B[k, (r*S+s)*C + c]
#   (a channels_last weight already is that layout: free view; any other is copied per call, never cached); y
#   written as (N, P, Q, K) contiguous, which is the (N, K, P, Q) channels_last tensor the op returns.
# Tiling: a program owns a BLOCK_M x BLOCK_N output tile and accumulates it in fp32 registers with tl.dot
#   (tensor cores: HMMA/HGMMA for fp16/bf16, TF32 or exact-fp32 for fp32). Two reduction orders:
#   - NESTED (C >= 32): steps over (tap (r, s), BLOCK_C slice of channels) in one loop (so the pipeliner sees
#     all of them); a tap moves each row by one offset and the channel slice is contiguous (vector loads).
#   - FLAT (C < 32, the 7x7 stems with C=3): the reduction index t in [0, R*S*C) is split into (r, s, c) per
#     element, so a 3-channel stem does not waste 13/16 of every dot on masked channels.
#   Epilogue in registers: + bias (folded BN shift), + residual, ReLU (NaN-preserving), cast, store.
# Offsets are int32 unless a tensor can exceed 2**31-1 elements (or DRN_FORCE_INT64=1; common.needs_int64): then
#   USE_INT64 widens every row offset before it is multiplied by a stride. fp32 dots: TF32 exactly when cuDNN would
#   use it (common.precision_as_cudnn).
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import _backends
from .._schemas import FAKES, empty_conv_output
from . import config_table, launcher, register_op
from .common import dot_in_fp32, needs_int64, precision_as_cudnn, size_bucket

# GPU autotune space: tensor-core friendly tiles with 4-8 warps; the reduction tile is 32 (64 bytes of fp16
# per row, one 128B line per two rows) so shared memory per stage stays small on sm_80.
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_C": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_C": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_C": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_C": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_C": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_C": 64}, num_warps=4, num_stages=3),
]
# The FLAT gather computes an address per element (no vector loads), so its tiles are shallower: a 16-32 wide
# reduction step and two stages keep the per-thread pointer tensors from spilling.
FLAT_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_C": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_C": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_C": 32}, num_warps=4, num_stages=2),
]
# fp32 (TF32, and above all the exact "ieee" dot, which is FMA-based) needs twice the registers per element:
# narrower tiles keep it from spilling. 64x64 on 8 warps: on 4, triton 3.6 spills 8 bytes (sm_90, int64 offsets).
FP32_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_C": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_C": 32}, num_warps=4, num_stages=2),
]
FP32_FLAT_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_C": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_C": 16}, num_warps=4, num_stages=2),
]
# Under TRITON_INTERPRET=1 (CPU tests) there is nothing to tune: one small tile keeps numpy fast.
INTERPRET_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_C": 16}
SHARED_LIMIT = 160 * 1024  # bytes; sm_80's 163 KB opt-in, less a margin (sm_90 has more)
FLAT_BELOW_C = 32


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles that cannot fit in shared memory, and column tiles far wider than K (pure masked waste)."""
    k = named_args["K"]
    elt = named_args["x_ptr"].element_size()
    kept = []
    for cfg in configs:
        m, n, c = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_C"]
        if (m * c + c * n) * elt * cfg.num_stages > SHARED_LIMIT:
            continue
        if n > 32 and n >= 2 * k:
            continue
        kept.append(cfg)
    return kept or [min(configs, key=lambda cfg: cfg.kwargs["BLOCK_N"])]


@triton.jit(do_not_specialize=["M_BUCKET"])
def conv_bn_act_kernel(
    x_ptr,  # input (N, C, H, W), element strides sxn, sxc, sxh, sxw (any memory format)
    w_ptr,  # packed weight (K, R, S, C) contiguous: row k at k * R*S*C
    b_ptr,  # bias (K,), the folded BatchNorm shift, element stride sb (any view: b[::2], an expanded scalar)
    res_ptr,  # residual (N, K, P, Q), strides srn, srk, srp, srq; unused unless HAS_RES
    y_ptr,  # output (N, P, Q, K) contiguous (= (N, K, P, Q) channels_last)
    M, C, H, W, K, P, Q, R, S,  # M = N*P*Q
    sxn, sxc, sxh, sxw,
    sb,
    srn, srk, srp, srq,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    M_BUCKET,  # size_bucket(M): read only by the autotuner's key
    HAS_RES: tl.constexpr, RELU: tl.constexpr, FLAT: tl.constexpr, USE_INT64: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < K
    if USE_INT64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    pq = P * Q
    n_img = rows // pq
    p = (rows % pq) // Q
    q = rows % Q
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_row = n_img * sxn
    rsc = R * S * C
    w_col = cols * rsc
    offs_c = tl.arange(0, BLOCK_C)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:
        # t = (r*S + s)*C + c over the whole reduction; each element finds its own tap.
        for t0 in range(0, rsc, BLOCK_C):
            t = t0 + offs_c
            t_ok = t < rsc
            c = t % C
            rs = t // C
            ih = ih0[:, None] + (rs // S)[None, :] * dil_h
            iw = iw0[:, None] + (rs % S)[None, :] * dil_w
            a_ok = row_ok[:, None] & t_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + x_row[:, None] + ih * sxh + iw * sxw + c[None, :] * sxc, mask=a_ok, other=0.0)
            b = tl.load(w_ptr + w_col[None, :] + t[:, None], mask=t_ok[:, None] & col_ok[None, :], other=0.0)
            if DOT_IN_FP32:  # interpreter only (common.dot_in_fp32)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    else:
        # one flat loop over (tap, channel slice) so the software pipeliner sees every reduction step
        c_steps = tl.cdiv(C, BLOCK_C)
        for step in range(0, R * S * c_steps):
            rs = step // c_steps
            c0 = (step - rs * c_steps) * BLOCK_C
            ih = ih0 + (rs // S) * dil_h
            iw = iw0 + (rs % S) * dil_w
            a_row_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a_row = x_row + ih * sxh + iw * sxw
            c = c0 + offs_c
            c_ok = c < C
            a = tl.load(x_ptr + a_row[:, None] + c[None, :] * sxc, mask=a_row_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_ptr + w_col[None, :] + rs * C + c[:, None], mask=c_ok[:, None] & col_ok[None, :],
                        other=0.0)
            if DOT_IN_FP32:  # interpreter only (common.dot_in_fp32)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    # Epilogue, all in fp32 registers: the reference adds bias and residual before the single rounding.
    acc += tl.load(b_ptr + cols * sb, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out_ok = row_ok[:, None] & col_ok[None, :]
    if HAS_RES:
        res_row = n_img * srn + p * srp + q * srq
        res = tl.load(res_ptr + res_row[:, None] + cols[None, :] * srk, mask=out_ok, other=0.0)
        acc += res.to(tl.float32)
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # not tl.maximum: a NaN must stay NaN, as torch.relu keeps it
    tl.store(y_ptr + rows[:, None] * K + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_ok)


# triton adds the tensors' dtypes; M_BUCKET keeps a tile tuned at batch 1 @224 off batch 8 @1024x2048
_TUNE_KEY = ["C", "K", "R", "S", "stride_h", "stride_w", "dil_h", "dil_w", "M_BUCKET"]


def config_list(flat: bool, fp32: bool) -> list:
    """The autotune space for one (reduction order, fp32 or 16-bit) pair; drn_kernels.kernel_report compiles the same."""
    return {(False, False): CONFIGS, (True, False): FLAT_CONFIGS,
            (False, True): FP32_CONFIGS, (True, True): FP32_FLAT_CONFIGS}[(flat, fp32)]


TUNED = {
    (flat, fp32): triton.autotune(configs=config_list(flat, fp32), key=_TUNE_KEY,
                                  prune_configs_by={"early_config_prune": _prune_configs})(conv_bn_act_kernel)
    for flat in (False, True) for fp32 in (False, True)
}


# ---- weight packing ---------------------------------------------------------------------------------------------

def packed_weight(weight: Tensor) -> Tensor:
    """weight (K, C, R, S) as (K, R, S, C) contiguous. A channels_last weight is already that: a free view (the
    fused models keep theirs channels_last). Any other layout is copied on every call: nothing is cached, so a
    write to the weight (even through .data, a numpy view or an inference tensor) is always seen."""
    view = weight.permute(0, 2, 3, 1)
    return view if view.is_contiguous() else view.contiguous()


# ---- launcher -----------------------------------------------------------------------------------------------

@register_op("drn::conv_bn_act_triton", FAKES["conv_bn_act"])
def conv_bn_act_triton(x: Tensor, weight: Tensor, bias: Tensor, stride: list[int], padding: list[int],
                       dilation: list[int], residual: Optional[Tensor], relu: bool) -> Tensor:
    y = empty_conv_output(x, weight, stride, padding, dilation)
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    _, _, p, q = y.shape
    m = n * p * q
    if y.numel() == 0:
        return y
    w_packed = packed_weight(weight)
    has_res = residual is not None
    res = residual if has_res else y  # a valid pointer; never read when HAS_RES is False
    args = (x, w_packed, bias, res, y, m, c, h, w, k, p, q, r, s, *x.stride(), bias.stride(0), *res.stride(),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], size_bucket(m))
    flags = dict(HAS_RES=has_res, RELU=relu, FLAT=c < FLAT_BELOW_C,
                 USE_INT64=needs_int64(x, w_packed, bias, residual, y), DOT_PRECISION=precision_as_cudnn(x.dtype),
                 DOT_IN_FP32=dot_in_fp32(x.dtype))
    if _backends.triton_interpreting():
        cfg = INTERPRET_CONFIG
        grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(k, cfg["BLOCK_N"]))
        launcher(conv_bn_act_kernel)[grid](*args, **flags, **cfg)
    else:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_N"]))

        tuned = TUNED[(flags["FLAT"], x.dtype == torch.float32)]
        if not config_table.launch("conv_bn_act", tuned, launcher, args, flags, grid):
            launcher(tuned)[grid](*args, **flags)
    return y
