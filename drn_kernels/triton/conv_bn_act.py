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
#   (tensor cores: HMMA on sm_80, wgmma/HGMMA on sm_90 for fp16/bf16, TF32 or exact-fp32 for fp32). Programs
#   are numbered in groups of GROUP_M row tiles (all column tiles of a group before the next group), so the input
#   rows of a group are read from DRAM once and from L2 for the other column tiles. Two reduction orders:
#   - NESTED, the vector path (C >= 32, and any C that is a multiple of 8, e.g. the 16-channel layers): steps over
#     (tap (r, s), BLOCK_C slice of channels) in one loop (so the pipeliner sees all of them); a tap moves each
#     row by one offset and the channel slice is contiguous: with C_VEC = 8 the kernel can prove each row's slice
#     16-byte aligned and copies it in 16-byte vectors (cp.async), whatever C's power-of-2 factor.
#   - FLAT (C < 32 and not a multiple of 8: the 7x7 stems with C=3): the reduction index t in [0, R*S*C) is split
#     into (r, s, c) per element, so a 3-channel stem does not waste 13/16 of every dot on masked channels.
#   Epilogue in registers: + bias (folded BN shift), + residual, ReLU (NaN-preserving), cast, store; the widest
#   tile (128x256) runs it on two column halves to stay within registers.
# Offsets are int32 unless a tensor can exceed 2**31-1 elements (or the tests force it; common.needs_int64): then
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
from .common import dot_in_fp32, force_int64, needs_int64, precision_as_cudnn, size_bucket

def _config(m: int, n: int, c: int, warps: int, stages: int, split: int = 1) -> triton.Config:
    """A BLOCK_M x BLOCK_N tile stepping BLOCK_C channels, launched in groups of GROUP_M = 8 row tiles."""
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_C": c, "GROUP_M": 8, "EPILOGUE_SPLIT": split},
                         num_warps=warps, num_stages=stages)


# GPU autotune space of the vector (NESTED) path at 16 bits: tensor-core friendly tiles with 4-8 warps.
# - Hopper-sized: 128x128 and 128x256 with 64-channel steps (128-byte rows, four wgmma k-steps per barrier) on two
#   warpgroups, 3-4 stages; the 128x256 tile's epilogue runs in two column halves (its whole residual tile
#   spills). On sm_80 the same tiles compile to mma.sync without spills; the shared-memory prune keeps the
#   4-stage ones off devices with less than ~200 KB per block.
# - 32-channel steps (64-byte rows) for smaller tiles and small M.
# - 16-channel steps for thin layers (C <= 16: a 32-wide step would be half masked).
CONFIGS = [
    _config(128, 128, 64, 8, 4),
    _config(128, 128, 64, 8, 3),
    _config(128, 256, 64, 8, 3, split=2),
    _config(128, 64, 32, 4, 3),
    _config(64, 64, 32, 4, 4),
    _config(128, 128, 32, 8, 3),
    _config(64, 128, 32, 4, 3),
    _config(128, 32, 32, 4, 4),
    _config(64, 32, 64, 4, 3),
    _config(128, 64, 16, 4, 4),
    _config(128, 32, 16, 4, 4),
]
# The FLAT gather computes an address per element (no vector loads), so its tiles are shallower: a 16-32 wide
# reduction step and two stages keep the per-thread pointer tensors from spilling.
FLAT_CONFIGS = [
    _config(64, 64, 16, 4, 2),
    _config(128, 32, 16, 4, 2),
    _config(64, 32, 32, 4, 2),
]
# fp32 (TF32, and above all the exact "ieee" dot, which is FMA-based) needs twice the registers per element:
# narrower tiles keep it from spilling. 64x64 on 8 warps: on 4, triton 3.6 spills 8 bytes (sm_90, int64 offsets).
FP32_CONFIGS = [
    _config(64, 64, 16, 8, 2),
    _config(32, 64, 32, 4, 2),
]
FP32_FLAT_CONFIGS = [
    _config(64, 32, 16, 4, 2),
    _config(32, 64, 16, 4, 2),
]
# Under TRITON_INTERPRET=1 (CPU tests) there is nothing to tune: one small tile keeps numpy fast.
INTERPRET_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_C": 16, "GROUP_M": 8, "EPILOGUE_SPLIT": 1}
SHARED_LIMIT = 160 * 1024  # bytes; sm_80's 163 KB opt-in, less a margin: the limit where the device is not known
SHARED_MARGIN = 4 * 1024  # kept free below a device's opt-in limit (barriers, the epilogue's layout conversions)
FLAT_BELOW_C = 32  # C below this and not a multiple of 8 (the 3-channel stems): the FLAT reduction
VECTOR = 8  # channels per 16-byte fp16 vector: C_VEC when the layout allows it


def reduction_order(c: int) -> bool:
    """FLAT (True) for the thin layers whose C is not a multiple of 8 (the 3-channel stems: a channel step would
    be mostly masked); every other C takes the vector (NESTED) path, C = 16 included."""
    return c < FLAT_BELOW_C and c % VECTOR != 0


def channel_vector(x: Tensor) -> int:
    """C_VEC: VECTOR when x's channels are unit-stride and C and every other stride (of a dim longer than 1) are
    multiples of VECTOR, so each row's channels start 16-byte aligned; else 1."""
    n, c, h, w = x.shape
    if c % VECTOR != 0 or x.stride(1) != 1:
        return 1
    ok = all(size == 1 or st % VECTOR == 0 for size, st in ((n, x.stride(0)), (h, x.stride(2)), (w, x.stride(3))))
    return VECTOR if ok else 1


def _shared_limit(t: Tensor) -> int:
    """Dynamic shared memory a block of t's device may use (opt-in limit less SHARED_MARGIN); SHARED_LIMIT where
    torch does not say."""
    if t.is_cuda:
        optin = getattr(torch.cuda.get_device_properties(t.device), "shared_memory_per_block_optin", 0)
        if optin:
            return optin - SHARED_MARGIN
    return SHARED_LIMIT


def int64_allowed(meta: dict, elt: int) -> bool:
    """Whether a tile may run with int64 offsets on elt-byte elements: tiles whose int64 address arithmetic spills
    registers where their int32 form does not are left out: the widest 16-bit tile (128x256, sm_80) and the
    float32 tiles above 32x64 (64x64 on 8 warps with the exact "ieee" dot: sm_80 under triton 3.6)."""
    return meta["BLOCK_M"] * meta["BLOCK_N"] <= (128 * 128 if elt < 4 else 32 * 64)


def prune_for(configs, c: int, k: int, elt: int, flat: bool, shared_limit: int, use_int64: bool = False) -> list:
    """The configs worth timing for C input and K output channels of elt-byte elements: drop tiles whose operand
    ring does not fit in shared_limit bytes, column tiles far wider than K (pure masked waste), channel steps
    wider than C rounded up to 16 (masked waste), at 16 bits 16-channel steps where C > 16 (twice the barriers
    per FLOP of a 32-channel step), and with int64 offsets the tiles int64_allowed() refuses; never all of them
    (the narrowest that may run stays)."""
    allowed = [cfg for cfg in configs if not use_int64 or int64_allowed(cfg.kwargs, elt)] or configs
    kept = []
    for cfg in allowed:
        bm, bn, bc = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_C"]
        if (bm * bc + bc * bn) * elt * cfg.num_stages > shared_limit:
            continue
        if bn > 32 and bn >= 2 * k:
            continue
        if not flat and (bc > -(-c // 16) * 16 or (elt == 2 and bc == 16 and c > 16)):
            continue
        kept.append(cfg)
    return kept or [min(allowed, key=lambda cfg: (cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_C"]))]


def _prune_configs(configs, named_args, **kwargs):
    """The autotuner's early_config_prune: prune_for this launch's channels, dtype and device."""
    x = named_args["x_ptr"]
    flag = {name: kwargs.get(name, named_args.get(name, False)) for name in ("FLAT", "USE_INT64")}
    return prune_for(configs, named_args["C"], named_args["K"], x.element_size(), flag["FLAT"], _shared_limit(x),
                     flag["USE_INT64"])


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
    C_VEC: tl.constexpr,  # 8 when C, sxn, sxh, sxw are multiples of 8 and sxc == 1 (the launcher checks), else 1
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,  # 1, or 2: the epilogue runs on two column halves of the tile
):
    # Grouped launch order on a 1-D grid: consecutive programs take GROUP_M row tiles, then the next column tile
    # of the same rows, so the programs resident at once share the input rows of GROUP_M tiles across every
    # column tile (read from DRAM once, then from L2) instead of walking all of M per column tile.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    group_size = GROUP_M * tl.cdiv(K, BLOCK_N)
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < K
    if USE_INT64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    # (v // C_VEC) * C_VEC == v for these (the launcher's precondition for C_VEC > 1): written so the compiler can
    # prove every row start a multiple of C_VEC elements, i.e. 16-byte aligned, and load C_VEC channels at a time
    # even when C is not a multiple of 16 (the ints triton's JIT specialises as aligned are multiples of 16).
    C = (C // C_VEC) * C_VEC
    sxn = (sxn // C_VEC) * C_VEC
    sxh = (sxh // C_VEC) * C_VEC
    sxw = (sxw // C_VEC) * C_VEC
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

    if EPILOGUE_SPLIT == 2:
        # the widest tiles finish in two column halves, so only half the residual tile is live at a time (a
        # 128x256 tile's whole residual spills registers on 8 warps)
        lo, hi = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        half = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue(lo, rows, half, row_ok, n_img, p, q, b_ptr, res_ptr, y_ptr, K, sb, srn, srk, srp, srq,
                  HAS_RES, RELU, USE_INT64)
        _epilogue(hi, rows, half + BLOCK_N // 2, row_ok, n_img, p, q, b_ptr, res_ptr, y_ptr, K, sb, srn, srk, srp,
                  srq, HAS_RES, RELU, USE_INT64)
    else:
        _epilogue(acc, rows, cols, row_ok, n_img, p, q, b_ptr, res_ptr, y_ptr, K, sb, srn, srk, srp, srq,
                  HAS_RES, RELU, USE_INT64)


@triton.jit
def _epilogue(acc, rows, cols, row_ok, n_img, p, q, b_ptr, res_ptr, y_ptr, K, sb, srn, srk, srp, srq,
              HAS_RES: tl.constexpr, RELU: tl.constexpr, USE_INT64: tl.constexpr):
    """y[rows, cols] = relu?(acc + bias + residual?), all in fp32 registers: the reference adds bias and residual
    before the single rounding."""
    col_ok = cols < K
    if USE_INT64:
        cols = cols.to(tl.int64)
    acc += tl.load(b_ptr + cols * sb, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out_ok = row_ok[:, None] & col_ok[None, :]
    if HAS_RES:
        res_row = n_img * srn + p * srp + q * srq
        res = tl.load(res_ptr + res_row[:, None] + cols[None, :] * srk, mask=out_ok, other=0.0)
        acc += res.to(tl.float32)
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # not tl.maximum: a NaN must stay NaN, as torch.relu keeps it
    tl.store(y_ptr + rows[:, None] * K + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_ok)


# triton adds the tensors' dtypes; M_BUCKET keeps a tile tuned at batch 1 @224 off batch 8 @1024x2048; every
# constexpr that changes the compiled code (and so the best tile) is in it too.
_TUNE_KEY = ["C", "K", "R", "S", "stride_h", "stride_w", "dil_h", "dil_w", "M_BUCKET",
             "HAS_RES", "RELU", "FLAT", "USE_INT64", "DOT_PRECISION", "C_VEC"]


def grid_for(m: int, k: int):
    """The launch grid of an M x K output for a config's meta-parameters: one program per tile, 1-D (the kernel
    derives the grouped tile order from the program id)."""
    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_N"]),)

    return grid


def config_list(flat: bool, fp32: bool) -> list:
    """The autotune space for one (reduction order, fp32 or 16-bit) pair; drn_kernels.aot compiles the
    same."""
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

# Launch facts that depend only on the call's sizes and strides, computed once per signature (a fused model's
# layers pay the Python for them once per input shape): (M, reduction order, C_VEC, USE_INT64, M_BUCKET).
# common.force_int64() is read per call and is part of the key. Bounded: cleared when full.
_FACTS: dict[tuple, tuple[int, bool, int, bool, int]] = {}
FACTS_LIMIT = 4096


def _launch_facts(x: Tensor, w_packed: Tensor, bias: Tensor, residual: Optional[Tensor], y: Tensor):
    key = (x.shape, x.stride(), w_packed.shape, w_packed.stride(), bias.shape, bias.stride(), y.shape,
           None if residual is None else (residual.shape, residual.stride()), force_int64())
    try:
        facts = _FACTS.get(key)
    except TypeError:  # symbolic sizes (a traced launch with dynamic shapes): nothing to key on
        key = facts = None
    if facts is None:
        n, c = x.shape[:2]
        m = n * y.shape[2] * y.shape[3]
        flat = reduction_order(c)
        facts = (m, flat, 1 if flat else channel_vector(x), needs_int64(x, w_packed, bias, residual, y),
                 size_bucket(m))
        if key is not None:
            if len(_FACTS) >= FACTS_LIMIT:
                _FACTS.clear()
            _FACTS[key] = facts
    return facts


@register_op("drn::conv_bn_act_triton", FAKES["conv_bn_act"])
def conv_bn_act_triton(x: Tensor, weight: Tensor, bias: Tensor, stride: list[int], padding: list[int],
                       dilation: list[int], residual: Optional[Tensor], relu: bool) -> Tensor:
    y = empty_conv_output(x, weight, stride, padding, dilation)
    if y.numel() == 0:
        return y
    _, c, h, w = x.shape
    k, _, r, s = weight.shape
    p, q = y.shape[2:]
    w_packed = packed_weight(weight)
    m, flat, c_vec, use_int64, bucket = _launch_facts(x, w_packed, bias, residual, y)
    res = residual if residual is not None else y  # a valid pointer; never read when HAS_RES is False
    args = (x, w_packed, bias, res, y, m, c, h, w, k, p, q, r, s, *x.stride(), bias.stride(0), *res.stride(),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], bucket)
    flags = dict(HAS_RES=residual is not None, RELU=relu, FLAT=flat, USE_INT64=use_int64,
                 DOT_PRECISION=precision_as_cudnn(x.dtype), DOT_IN_FP32=dot_in_fp32(x.dtype), C_VEC=c_vec)
    if _backends.triton_interpreting():
        launcher(conv_bn_act_kernel)[grid_for(m, k)](*args, **flags, **INTERPRET_CONFIG)
    else:
        tuned, grid = TUNED[(flat, x.dtype == torch.float32)], grid_for(m, k)
        if not config_table.launch("conv_bn_act", tuned, launcher, args, flags, grid):
            launcher(tuned)[grid](*args, **flags)
    return y
