"""drn_kernels.conv_bn_act(backend="triton") against the float64 reference.

Without a GPU these run the kernel in the Triton interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes are small. fp32 is judged at rel err 1e-5 with TF32 off (cuDNN's switch, which the
kernel follows); fp16/bf16 against 2x PyTorch's own same-dtype conv error vs float64 (the max over the output,
flash-attention style), where "PyTorch's own" is F.conv2d + bias + residual + relu run in that dtype on the same
rounded inputs (CPU supports it; on GPU it is cuDNN).
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

import drn_kernels
from benchmarks import common as bench_common
from drn_kernels import reference

pytestmark = pytest.mark.unit

conv_mod = pytest.importorskip("drn_kernels.triton.conv_bn_act")
common = pytest.importorskip("drn_kernels.triton.common")

# (id, N, C, H, W, K, R, S, stride, padding, dilation): every convolution a DRN uses, at odd sizes.
CASES = [
    ("stem7_s1", 1, 3, 9, 11, 16, 7, 7, 1, 3, 1),
    ("stem7_s2", 3, 3, 13, 9, 7, 7, 7, 2, 3, 1),
    ("3x3_s1", 1, 17, 7, 5, 19, 3, 3, 1, 1, 1),
    ("3x3_s2", 3, 5, 9, 13, 7, 3, 3, 2, 1, 1),
    ("3x3_d2", 1, 40, 6, 7, 33, 3, 3, 1, 2, 2),
    ("3x3_d4", 1, 17, 9, 10, 7, 3, 3, 1, 4, 4),
    ("1x1_s1", 3, 33, 5, 7, 19, 1, 1, 1, 0, 1),
    ("1x1_s2", 1, 5, 9, 13, 17, 1, 1, 2, 0, 1),
    ("3x3_1px", 1, 5, 1, 1, 7, 3, 3, 1, 1, 1),
    ("3x3_mixed", 1, 3, 8, 9, 5, 3, 3, (2, 1), (2, 1), (2, 1)),
]
CASE_IDS = [c[0] for c in CASES]

DTYPES = [
    pytest.param(torch.float32, 0.0, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-3, 0.0, id="fp16"),
    pytest.param(torch.bfloat16, 1e-2, 0.0, id="bf16"),
]


def _pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


def _inputs(case, dtype, channels_last, with_residual, seed=0):
    _, n, c, h, w, k, r, s, stride, padding, dilation = case
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(k, c, r, s, generator=g) / (c * r * s) ** 0.5).to(dtype)
    bias = torch.randn(k, generator=g).to(dtype)
    p = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    residual = torch.randn(n, k, p, q, generator=g).to(dtype) if with_residual else None
    return x, weight, bias, residual, dict(stride=stride, padding=padding, dilation=dilation)


def _reference64(x, weight, bias, residual, geo, relu):
    return reference.conv_bn_act(x.double(), weight.double(), bias.double(), geo["stride"], geo["padding"],
                                 geo["dilation"], None if residual is None else residual.double(), relu)


def _torch_same_dtype(x, weight, bias, residual, geo, relu):
    y = F.conv2d(x, weight, bias, stride=geo["stride"], padding=geo["padding"], dilation=geo["dilation"])
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


@pytest.fixture
def poisoned(monkeypatch):
    """The launcher's output buffer starts as NaN, so any element the kernel skips shows up."""
    real = conv_mod.empty_conv_output

    def nan_output(*args, **kwargs):
        y = real(*args, **kwargs)
        return y.fill_(float("nan")) if y.dtype.is_floating_point else y

    monkeypatch.setattr(conv_mod, "empty_conv_output", nan_output)


@pytest.fixture
def no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _check(y, x, weight, bias, residual, geo, relu, dtype, atol, rtol):
    ref = _reference64(x, weight, bias, residual, geo, relu)
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert not torch.isnan(y).any()
    err = (y.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    if dtype == torch.float32:
        assert err <= rtol * scale + 1e-12, (err, scale)
    else:
        torch_err = (_torch_same_dtype(x, weight, bias, residual, geo, relu).double() - ref).abs().max().item()
        assert err <= 2 * torch_err + atol * scale, (err, torch_err, scale)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_parity(case, dtype, atol, rtol, channels_last, poisoned, no_tf32):
    # residual and relu alternate over the cases so each appears on and off with every geometry kind
    index = CASES.index(case)
    with_residual, relu = index % 2 == 0, (index // 2) % 2 == 0 or channels_last
    x, weight, bias, residual, geo = _inputs(case, dtype, channels_last, with_residual)
    y = drn_kernels.conv_bn_act(x, weight, bias, residual=residual, relu=relu, backend="triton", **geo)
    _check(y, x, weight, bias, residual, geo, relu, dtype, atol, rtol)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_residual_relu_combinations(relu, with_residual, poisoned, no_tf32):
    case = CASES[3]
    x, weight, bias, residual, geo = _inputs(case, torch.float32, True, with_residual, seed=1)
    y = drn_kernels.conv_bn_act(x, weight, bias, residual=residual, relu=relu, backend="triton", **geo)
    _check(y, x, weight, bias, residual, geo, relu, torch.float32, 0.0, 1e-5)


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[7]], ids=["flat", "nested", "1x1"])
def test_forced_int64(case, monkeypatch, poisoned, no_tf32):
    monkeypatch.setattr("drn_kernels.triton.common._force_int64", True)
    x, weight, bias, residual, geo = _inputs(case, torch.float32, False, True, seed=2)
    assert common.needs_int64(x)
    y = drn_kernels.conv_bn_act(x, weight, bias, residual=residual, backend="triton", **geo)
    _check(y, x, weight, bias, residual, geo, True, torch.float32, 0.0, 1e-5)


def test_int64_selection():
    small = torch.empty(2, 3)
    assert not common.needs_int64(small)
    big = torch.empty_strided((2, 2), (2**31, 1), device="meta")  # int32-overflowing strides, no memory
    assert common.max_offset(big) > 2**31 - 1 and common.needs_int64(small, big)


def test_conv_tf32_follows_cudnn_flag_and_heads_stay_exact(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert common.precision_as_cudnn(torch.float32) == "tf32"
    assert common.precision_exact_fp32(torch.float32) == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert common.precision_as_cudnn(torch.float32) == "ieee"
    assert common.precision_exact_fp32(torch.float32) == "ieee"


def test_batch_zero():
    x, weight, bias, residual, geo = _inputs(CASES[2], torch.float32, False, True)
    y = drn_kernels.conv_bn_act(x[:0], weight, bias, residual=residual[:0], backend="triton", **geo)
    assert y.shape == (0,) + residual.shape[1:]


def test_strided_input(poisoned, no_tf32):
    # a non-contiguous, non-channels_last view: the kernel gathers through any strides
    x, weight, bias, residual, geo = _inputs(CASES[2], torch.float32, False, False)
    x = torch.cat([x, x], dim=3)[..., ::2]
    y = drn_kernels.conv_bn_act(x, weight, bias, backend="triton", **geo)
    _check(y, x, weight, bias, None, geo, True, torch.float32, 0.0, 1e-5)


def test_weight_packing_is_never_cached(no_tf32):
    """A channels_last weight is used in place (free view); any other layout is packed afresh on every call, so a
    write the version counter does not see (.data) still reaches the kernel (tests/test_weight_state.py has every
    route)."""
    x, weight, bias, _, geo = _inputs(CASES[2], torch.float32, True, False)
    assert conv_mod.packed_weight(weight) is not conv_mod.packed_weight(weight)
    y1 = drn_kernels.conv_bn_act(x, weight, bias, backend="triton", **geo)
    weight.data.mul_(-1)
    y2 = drn_kernels.conv_bn_act(x, weight, bias, backend="triton", **geo)
    _check(y2, x, weight, bias, None, geo, True, torch.float32, 0.0, 1e-5)
    assert not torch.equal(y1, y2)
    cl = weight.contiguous(memory_format=torch.channels_last)
    assert conv_mod.packed_weight(cl).data_ptr() == cl.data_ptr()  # channels_last weight: a free view


def test_deterministic(no_tf32):
    x, weight, bias, residual, geo = _inputs(CASES[4], torch.float16, True, True)
    y1 = drn_kernels.conv_bn_act(x, weight, bias, residual=residual, backend="triton", **geo)
    y2 = drn_kernels.conv_bn_act(x, weight, bias, residual=residual, backend="triton", **geo)
    assert torch.equal(y1, y2)


def test_opcheck():
    x, weight, bias, residual, geo = _inputs(CASES[3], torch.float32, False, True)
    torch.library.opcheck(torch.ops.drn.conv_bn_act_triton,
                          (x, weight, bias, geo["stride"], geo["padding"], geo["dilation"], residual, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_op_fullgraph(no_tf32):
    """Under the interpreter the op is an opaque custom_op (see drn_kernels/triton/__init__.py), so inductor calls
    it; on a GPU (test below) it is a triton_op whose kernel inductor sees."""
    x, weight, bias, residual, geo = _inputs(CASES[2], torch.float32, True, True)

    def f(x, weight, bias, residual):
        return torch.ops.drn.conv_bn_act_triton(x, weight, bias, geo["stride"], geo["padding"], geo["dilation"],
                                                residual, True)

    y = torch.compile(f, fullgraph=True)(x, weight, bias, residual)
    _check(y, x, weight, bias, residual, geo, True, torch.float32, 0.0, 1e-5)


def test_torch_compile_public_op_fullgraph(no_tf32):
    x, weight, bias, residual, geo = _inputs(CASES[2], torch.float32, True, True)

    def f(x, weight, bias, residual):
        return drn_kernels.conv_bn_act(x, weight, bias, residual=residual, backend="triton", **geo)

    y = torch.compile(f, fullgraph=True)(x, weight, bias, residual)
    _check(y, x, weight, bias, residual, geo, True, torch.float32, 0.0, 1e-5)


# ---- tile order, the vector path, thin layers, the tuning space -------------------------------------------------

# Interpreter tiles small enough that the cases below span several groups of row tiles (with a short last group)
# and several column tiles (with a partly and a wholly masked epilogue half).
TILE_CONFIGS = [
    pytest.param({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_C": 16, "GROUP_M": 3, "EPILOGUE_SPLIT": 1}, id="group3"),
    pytest.param({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_C": 32, "GROUP_M": 2, "EPILOGUE_SPLIT": 2}, id="split2"),
    pytest.param({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_C": 16, "GROUP_M": 1, "EPILOGUE_SPLIT": 1}, id="group1"),
]
# C a multiple of 8: the vector (NESTED) path, with 8-channel vectors when channels_last
VECTOR_CASES = [
    ("c8", 1, 8, 9, 13, 37, 3, 3, 1, 1, 1),
    ("c16_thin", 2, 16, 7, 9, 16, 3, 3, 1, 1, 1),
    ("c24_d2", 1, 24, 9, 11, 37, 3, 3, 1, 2, 2),
    ("c40_s2", 1, 40, 11, 9, 21, 3, 3, 2, 1, 1),
    ("c16_1x1_s2", 1, 16, 9, 13, 35, 1, 1, 2, 0, 1),
]


@pytest.mark.parametrize("config", TILE_CONFIGS)
@pytest.mark.parametrize("case", VECTOR_CASES + [CASES[0]], ids=[c[0] for c in VECTOR_CASES] + ["flat_stem"])
@pytest.mark.parametrize("dtype, atol, rtol", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_tile_orders_and_vector_path(config, case, dtype, atol, rtol, channels_last, monkeypatch, poisoned, no_tf32):
    monkeypatch.setattr(conv_mod, "INTERPRET_CONFIG", config)
    x, weight, bias, residual, geo = _inputs(case, dtype, channels_last, True, seed=5)
    c = x.shape[1]
    assert conv_mod.reduction_order(c) == (c % 8 != 0)
    assert conv_mod.channel_vector(x) == (8 if channels_last and c % 8 == 0 else 1)
    y = drn_kernels.conv_bn_act(x, weight, bias, residual=residual, relu=True, backend="triton", **geo)
    _check(y, x, weight, bias, residual, geo, True, dtype, atol, rtol)


def test_channel_vector_needs_aligned_strides():
    x = torch.randn(2, 16, 5, 6).contiguous(memory_format=torch.channels_last)
    assert conv_mod.channel_vector(x) == 8
    # C_VEC is about offsets from x's data pointer; whether the pointer itself is 16-byte aligned triton's JIT
    # checks (and specialises on) by itself
    assert conv_mod.channel_vector(x[:, 8:]) == 8
    assert conv_mod.channel_vector(x[:, 4:12]) == 8
    assert conv_mod.channel_vector(x[:, 4:]) == 1  # C = 12
    assert conv_mod.channel_vector(x.contiguous()) == 1  # NCHW: channels are not unit-stride
    odd = torch.empty_strided((1, 16, 5, 7), (5 * 115, 1, 115, 16))  # rows 115 elements apart
    assert conv_mod.channel_vector(odd) == 1
    # a dimension of length 1 may have any stride: it never moves an address
    one_row = torch.empty_strided((1, 16, 1, 4), (5, 1, 3, 16))
    assert conv_mod.channel_vector(one_row) == 8


@pytest.mark.parametrize("start", [8, 4], ids=["aligned_start", "unaligned_start"])
def test_channel_vector_with_sliced_view_matches_reference(start, poisoned, no_tf32):
    # x[:, start:start+16] of a 24-channel channels_last tensor: rows 24 elements apart, the first at `start`
    g = torch.Generator().manual_seed(6)
    base = torch.randn(1, 24, 7, 9, generator=g).contiguous(memory_format=torch.channels_last)
    x = base[:, start:start + 16]
    weight = torch.randn(13, 16, 3, 3, generator=g) / 12
    bias = torch.randn(13, generator=g)
    geo = dict(stride=[1, 1], padding=[2, 2], dilation=[2, 2])
    assert conv_mod.channel_vector(x) == 8
    y = drn_kernels.conv_bn_act(x, weight, bias, backend="triton", **geo)
    _check(y, x, weight, bias, None, geo, True, torch.float32, 0.0, 1e-5)


def _named(c, k, dtype):
    return {"C": c, "K": k, "x_ptr": torch.empty(1, dtype=dtype)}


def _tiles(configs):
    return {(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_C"], cfg.num_stages) for cfg in configs}


def test_prune_keeps_thin_steps_for_thin_layers_only():
    thin = conv_mod._prune_configs(conv_mod.CONFIGS, _named(16, 16, torch.float16), FLAT=False)
    assert thin and {bc for _, _, bc, _ in _tiles(thin)} == {16}
    wide = conv_mod._prune_configs(conv_mod.CONFIGS, _named(512, 512, torch.float16), FLAT=False)
    assert {bc for _, _, bc, _ in _tiles(wide)} == {32, 64}
    assert {(128, 128, 64, 4), (128, 128, 64, 3), (128, 256, 64, 3)} <= _tiles(wide)
    c32 = conv_mod._prune_configs(conv_mod.CONFIGS, _named(32, 64, torch.float16), FLAT=False)
    assert {bc for _, _, bc, _ in _tiles(c32)} == {32}  # a 64-channel step would be half masked
    assert all(bn < 128 for _, bn, _, _ in _tiles(c32))  # a column tile >= 2*K is masked waste
    # fp32 keeps its 16-channel steps (narrow tiles for registers) at any C
    assert any(bc == 16 for _, _, bc, _ in _tiles(
        conv_mod._prune_configs(conv_mod.FP32_CONFIGS, _named(512, 512, torch.float32), FLAT=False)))
    # FLAT steps over R*S*C, not channels: no channel rule
    flat = conv_mod._prune_configs(conv_mod.FLAT_CONFIGS, _named(3, 64, torch.float16), FLAT=True)
    assert {bc for _, _, bc, _ in _tiles(flat)} == {16, 32}


def test_prune_follows_the_device_shared_memory(monkeypatch):
    named = _named(512, 512, torch.float16)
    monkeypatch.setattr(conv_mod, "_shared_limit", lambda t: 100 * 1024)
    small = _tiles(conv_mod._prune_configs(conv_mod.CONFIGS, named, FLAT=False))
    assert (128, 128, 64, 4) not in small and (128, 256, 64, 3) not in small and (128, 128, 64, 3) in small
    monkeypatch.setattr(conv_mod, "_shared_limit", lambda t: 227 * 1024 - conv_mod.SHARED_MARGIN)
    assert {(128, 128, 64, 4), (128, 256, 64, 3)} <= _tiles(conv_mod._prune_configs(conv_mod.CONFIGS, named,
                                                                                       FLAT=False))
    monkeypatch.setattr(conv_mod, "_shared_limit", lambda t: 1024)
    assert len(conv_mod._prune_configs(conv_mod.CONFIGS, named, FLAT=False)) == 1  # never an empty space


@pytest.mark.parametrize("dtype, c, configs", [(torch.float16, 512, "CONFIGS"), (torch.float32, 512, "FP32_CONFIGS"),
                                                (torch.float32, 16, "FP32_CONFIGS")])
def test_prune_with_int64_offsets_keeps_only_tiles_that_do_not_spill(dtype, c, configs):
    """With int64 offsets only the tiles int64_allowed() lets run are timed, also where every other rule would
    prune them all (C=16 at fp32: the fallback is an allowed tile, not the spilling 64x64)."""
    elt = torch.empty(0, dtype=dtype).element_size()
    kept = conv_mod._prune_configs(getattr(conv_mod, configs), _named(c, 512, dtype), FLAT=False, USE_INT64=True)
    assert kept and all(conv_mod.int64_allowed(cfg.kwargs, elt) for cfg in kept)
    assert all(bm * bn <= (128 * 128 if elt == 2 else 32 * 64) for bm, bn, _, _ in _tiles(kept))


def test_autotune_key_holds_every_flag_that_changes_the_code():
    flags = {"HAS_RES", "RELU", "FLAT", "USE_INT64", "DOT_PRECISION", "C_VEC"}
    constexprs = {"HAS_RES", "RELU", "FLAT", "USE_INT64", "DOT_PRECISION", "DOT_IN_FP32", "C_VEC"}
    params = inspect.signature(conv_mod.conv_bn_act_kernel.fn).parameters.values()
    kernel_flags = {p.name for p in params if "constexpr" in str(p.annotation)
                    and not p.name.startswith(("BLOCK_", "GROUP_", "EPILOGUE_"))}  # the config's meta-parameters
    assert kernel_flags == constexprs  # a new flag must be added here and (unless interpreter-only) to the key
    for tuner in conv_mod.TUNED.values():
        assert flags <= set(tuner.keys) and "M_BUCKET" in tuner.keys


# ---- real sizes on a GPU ------------------------------------------------------------------------------------

GPU_CASES = [
    ("stem7_s1", 2, 3, 224, 224, 16, 7, 7, 1, 3, 1),
    ("stem7_s2", 2, 3, 224, 224, 64, 7, 7, 2, 3, 1),
    ("3x3_s1", 2, 64, 56, 56, 64, 3, 3, 1, 1, 1),
    ("3x3_s2", 2, 128, 56, 56, 256, 3, 3, 2, 1, 1),
    ("3x3_d2", 2, 256, 28, 28, 256, 3, 3, 1, 2, 2),
    ("3x3_d4", 2, 512, 28, 28, 512, 3, 3, 1, 4, 4),
    ("1x1_s1", 2, 1024, 28, 28, 256, 1, 1, 1, 0, 1),
    ("1x1_s2", 2, 256, 56, 56, 512, 1, 1, 2, 0, 1),
    ("odd", 3, 37, 45, 61, 91, 3, 3, 1, 1, 1),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=[c[0] for c in GPU_CASES])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("relu, with_residual", [(True, True), (True, False), (False, False)],
                         ids=["res_relu", "relu", "plain"])
def test_parity_gpu(case, dtype, atol, rtol, relu, with_residual, poisoned, no_tf32):
    x, weight, bias, residual, geo = _inputs(case, dtype, True, with_residual)
    x, weight, bias = x.cuda(), weight.cuda(), bias.cuda()
    residual = residual.cuda() if with_residual else None
    y = drn_kernels.conv_bn_act(x, weight, bias, residual=residual, relu=relu, backend="triton", **geo)
    _check(y, x, weight, bias, residual, geo, relu, dtype, atol, rtol)  # float64 reference on the GPU


@pytest.mark.gpu
@pytest.mark.parametrize("kind", bench_common.LAYER_KINDS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_benchmarked_kinds_gpu(kind, dtype, atol, rtol, poisoned, no_tf32):
    """Every layer kind the benchmarks time, at the largest size they time it (batch 8 @1024x2048)."""
    kinds = bench_common.layer_kinds()
    assert sorted(kinds) == sorted(bench_common.LAYER_KINDS), "a benchmarked layer kind is missing"
    s = kinds[kind]
    case = (kind, s.n, s.c, s.h, s.w, s.k, s.r, s.s, s.stride, s.padding, s.dilation)
    x, weight, bias, residual, geo = _inputs(case, dtype, True, s.residual, seed=4)
    x, weight, bias = x.cuda(), weight.cuda(), bias.cuda()
    residual = residual.cuda() if s.residual else None
    y = drn_kernels.conv_bn_act(x, weight, bias, residual=residual, relu=s.relu, backend="triton", **geo)
    _check(y, x, weight, bias, residual, geo, s.relu, dtype, atol, rtol)


@pytest.mark.gpu
def test_forced_int64_gpu(monkeypatch, no_tf32):
    monkeypatch.setattr("drn_kernels.triton.common._force_int64", True)
    x, weight, bias, residual, geo = _inputs(GPU_CASES[4], torch.float16, True, True)
    y = drn_kernels.conv_bn_act(x.cuda(), weight.cuda(), bias.cuda(), residual=residual.cuda(), backend="triton",
                                **geo)
    _check(y.cpu(), x, weight, bias, residual, geo, True, torch.float16, 1e-3, 0.0)


@pytest.mark.gpu
def test_torch_compile_inductor_gpu():
    x, weight, bias, residual, geo = _inputs(GPU_CASES[2], torch.float16, True, True)
    x, weight, bias, residual = (t.cuda() for t in (x, weight, bias, residual))

    def f(x, weight, bias, residual):
        return drn_kernels.conv_bn_act(x, weight, bias, residual=residual, backend="triton", **geo)

    y = torch.compile(f, fullgraph=True)(x, weight, bias, residual)
    _check(y.cpu(), x.cpu(), weight.cpu(), bias.cpu(), residual.cpu(), geo, True, torch.float16, 1e-3, 0.0)
