"""Hostile inputs to the kernels, on every backend: strided and expanded views of every tensor argument, NaN and
±inf (through ReLU and through the heads' softmax), absurd integer arguments, zero-size images, and autograd.

Each backend must give the reference's (torch's) answer or a clear exception naming the argument. Backends that
cannot run here skip ("cuda" needs a GPU; "triton" runs in the interpreter on CPU, see conftest.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import drn_kernels
from helpers import backend_params, require_backend

pytestmark = pytest.mark.unit

BACKENDS = ["cpu", "triton", "cuda", "cuda-sim", "reference"]
INF, NAN = float("inf"), float("nan")


def _device(backend: str) -> torch.device:
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _need(backend: str) -> torch.device:
    device = _device(backend)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    require_backend(backend, device)
    return device


def _rand(*shape, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def _assert_same(got, expect, **tol):
    """Same values, NaN and ±inf at the same positions (assert_close checks infinities exactly)."""
    got = got if isinstance(got, tuple) else (got,)
    expect = expect if isinstance(expect, tuple) else (expect,)
    for g, e in zip(got, expect):
        if g.dtype.is_floating_point:
            torch.testing.assert_close(g.cpu().float(), e.cpu().float(), equal_nan=True, **tol)
        else:
            assert torch.equal(g.cpu(), e.cpu())


# ---- 1. every tensor argument in any strides ------------------------------------------------------------------

def _views(t: torch.Tensor):
    """Non-contiguous views with t's values: a strided slice of a bigger tensor, and an expanded one where t is
    constant along dim 0 (then t itself is replaced by that constant)."""
    big = torch.zeros((t.shape[0] * 2,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    big[::2] = t
    strided = big[::2]
    expanded = t[:1].expand_as(t)
    return {"strided": strided, "expanded": expanded}


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_conv_bn_act_honours_every_arguments_strides(backend):
    device = _need(backend)
    x = _rand(2, 5, 6, 7, seed=1, device=device)
    w = _rand(6, 5, 3, 3, seed=2, device=device)
    b = _rand(6, seed=3, device=device)
    r = _rand(2, 6, 6, 7, seed=4, device=device)
    args = dict(x=x, weight=w, bias=b, residual=r)
    for name in args:
        for kind, view in _views(args[name]).items():
            call = {**args, name: view}
            assert not call[name].is_contiguous()
            got = drn_kernels.conv_bn_act(call["x"], call["weight"], call["bias"], residual=call["residual"],
                                          padding=1, backend=backend)
            dense = {k: v.contiguous() for k, v in call.items()}
            expect = drn_kernels.conv_bn_act(dense["x"].double(), dense["weight"].double(), dense["bias"].double(),
                                             residual=dense["residual"].double(), padding=1, backend="reference")
            _assert_same(got.double(), expect, rtol=1e-4, atol=1e-4), (name, kind)


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
@pytest.mark.parametrize("op", ["class_head", "class_head_up8", "localize"])
def test_heads_honour_every_arguments_strides(backend, op):
    device = _need(backend)
    x = _rand(2, 6, 2, 3, seed=5, device=device)
    w = _rand(40, 6, 1, 1, seed=6, device=device)
    b = _rand(40, seed=7, device=device) * 0.1
    args = dict(x=x, weight=w, bias=b)

    def run(a, be):
        if op == "localize":
            return drn_kernels.localize(a["x"], a["weight"], a["bias"], threshold=0.02, backend=be)
        return drn_kernels.class_head(a["x"], a["weight"], a["bias"], upsample=8 if op.endswith("up8") else 1,
                                      backend=be)

    views = [(name, kind, v) for name in args for kind, v in _views(args[name]).items()]
    views.append(("weight", "2-d transposed", w.view(40, 6).t().contiguous().t()))
    for name, kind, view in views:
        call = {**args, name: view}
        got = run(call, backend)
        expect = run({k: v.contiguous() for k, v in call.items()}, "reference")
        _assert_same(got, expect, rtol=1e-4, atol=1e-5)


# ---- 2. NaN and ±inf through ReLU ----------------------------------------------------------------------------

CPU_PATHS = {"onednn": "direct", "winograd": "winograd", "aten": "aten"}  # -> DRN_CPU_CONV
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=3e-2, atol=6e-2),
       torch.float16: dict(rtol=4e-3, atol=8e-3)}


def _conv_nonfinite_case(where: str, value: float, device, dtype, channels: int):
    x = _rand(1, channels, 7, 6, seed=10, device=device, dtype=dtype)
    w = (_rand(channels, channels, 3, 3, seed=11, device=device) / channels ** 0.5).to(dtype)
    b = _rand(channels, seed=12, device=device, dtype=dtype)
    r = _rand(1, channels, 7, 6, seed=13, device=device, dtype=dtype)
    padding = 1
    if where == "x":
        x[0, 1, 3, 2] = value
    elif where == "weight":
        w[2, 1, 0, 2] = value
        padding = 0  # a padded tap times a non-finite weight: 0 * inf is NaN only where the zero is computed
        r = r[:, :, 1:-1, 1:-1].contiguous()
    elif where == "bias":
        b[3] = value
    else:
        r[0, 4, 2, 3] = value
        r[0, 0, 5, 1] = -value
    return x, w, b, r, padding


def _check_conv_nonfinite(backend, device, dtype, where, value, channels=8):
    x, w, b, r, padding = _conv_nonfinite_case(where, value, device, dtype, channels)
    for residual in ((r,) if where == "residual" else (None, r)):
        got = drn_kernels.conv_bn_act(x, w, b, residual=residual, padding=padding, backend=backend)
        expect = drn_kernels.conv_bn_act(x.double(), w.double(), b.double(),
                                         residual=None if residual is None else residual.double(),
                                         padding=padding, backend="reference")
        assert got.isnan().any() or got.isinf().any() or value == -INF
        _assert_same(got, expect, **TOL[dtype])


@pytest.mark.parametrize("backend", backend_params("triton", "cuda", "cuda-sim", "reference"))
@pytest.mark.parametrize("where", ["x", "weight", "bias", "residual"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_conv_bn_act_keeps_nan_and_inf_like_torch(backend, where, value):
    device = _need(backend)
    _check_conv_nonfinite(backend, device, torch.float32, where, value)


@pytest.mark.build
@pytest.mark.parametrize("path", list(CPU_PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("where", ["x", "weight", "bias", "residual"])
def test_cpu_conv_paths_keep_nan_and_inf_like_torch(cpu_settings, path, dtype, where):
    """Every CPU path (oneDNN, Winograd, ATen fallback) x dtype: ReLU keeps NaN. Winograd spreads a non-finite
    input over its output tile (docs/cpu-backend.md), so there x is covered by the direct paths only."""
    _need("cpu")
    if path == "winograd" and where == "x":
        pytest.skip("Winograd spreads a non-finite x over its tile by design")
    if path == "winograd" and not _winograd_runs(dtype):
        pytest.skip(f"no Winograd for {dtype} on the cpu backend (float32 and bfloat16 only)")
    # Winograd's weight transform also spreads a weight's ±inf over the filter (as NaN): NaN weights only there
    values = (NAN,) if path == "winograd" and where == "weight" else (NAN, INF, -INF)
    cpu_settings.set("DRN_CPU_CONV", CPU_PATHS[path])
    x, w, _, _, _ = _conv_nonfinite_case(where, NAN, "cpu", dtype, 8)
    algorithm = drn_kernels.ops.cpu_conv_algorithm(x, w)
    assert algorithm == path or (path == "onednn" and algorithm == "aten" and dtype != torch.float32)
    for value in values:
        _check_conv_nonfinite("cpu", torch.device("cpu"), dtype, where, value)


def _winograd_runs(dtype) -> bool:
    """Whether the cpu backend's Winograd computes a 3x3 stride-1 conv in `dtype` here (drn::cpu_winograd_tiles
    under DRN_CPU_CONV=winograd: float32 and bfloat16, the latter with a bfloat16 GEMM where the CPU has AVX512-BF16
    and a float32 one elsewhere)."""
    x, w = torch.ones(1, 8, 5, 5, dtype=dtype), torch.ones(8, 8, 3, 3, dtype=dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRN_CPU_CONV", "winograd")
        drn_kernels.push_cpu_options()
        tiles = torch.ops.drn.cpu_winograd_tiles(x, w, [1, 1])
    drn_kernels.push_cpu_options()
    return bool(tiles)


@pytest.mark.build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_in_place_residual_keeps_nan(cpu_settings, dtype):
    _need("cpu")
    for mode in CPU_PATHS.values():
        cpu_settings.set("DRN_CPU_CONV", mode)
        x, w, b, r, _ = _conv_nonfinite_case("residual", NAN, "cpu", dtype, 8)
        r = r.contiguous(memory_format=torch.channels_last)
        expect = drn_kernels.conv_bn_act(x.double(), w.double(), b.double(), residual=r.double(), padding=1,
                                         backend="reference")
        got = drn_kernels.ops.conv_bn_act_into_residual(x, w, b, residual=r, padding=1, backend="cpu")
        assert got.isnan().sum() == 2
        _assert_same(got, expect, **TOL[dtype])


@pytest.mark.build
def test_cpu_bf16_winograd_views_and_inference_mode(cpu_settings):
    """The bfloat16 Winograd path (bf16 GEMM with AVX512-BF16, float32 GEMM elsewhere) on strided and expanded
    views of x, weight, bias and residual:
    the same bits as on contiguous copies, in and out of inference_mode; a Winograd form made from a weight that
    was then written in place is not what a fresh call uses (the op transforms its weight per call)."""
    _need("cpu")
    if not _winograd_runs(torch.bfloat16):
        pytest.skip("no bfloat16 Winograd on the cpu backend of this build")
    cpu_settings.set("DRN_CPU_CONV", "winograd")
    c = 64
    x = _rand(2, c, 11, 9, seed=30, dtype=torch.bfloat16).transpose(2, 3)          # strided
    w = _rand(c, c, 3, 3, seed=31, dtype=torch.bfloat16)[:, :, :, :]
    w = (w / 24).contiguous(memory_format=torch.channels_last)                     # non-default layout
    b = _rand(1, seed=32, dtype=torch.bfloat16).expand(c)                           # expanded
    r = _rand(2, c, 1, 11, seed=33, dtype=torch.bfloat16).expand(2, c, 9, 11)       # expanded residual
    assert drn_kernels.ops.cpu_conv_algorithm(x, w) == "winograd"
    got = drn_kernels.conv_bn_act(x, w, b, residual=r, padding=1, backend="cpu")
    plain = drn_kernels.conv_bn_act(x.contiguous(), w.contiguous(), b.contiguous(), residual=r.contiguous(),
                                    padding=1, backend="cpu")
    assert torch.equal(got, plain)
    with torch.inference_mode():
        assert torch.equal(drn_kernels.conv_bn_act(x, w, b, residual=r, padding=1, backend="cpu"), plain)
    with torch.no_grad():
        w.mul_(-1)  # in place: the next call must see it
    flipped = drn_kernels.conv_bn_act(x, w, b, residual=r, padding=1, backend="cpu")
    expect = drn_kernels.conv_bn_act(x.double(), w.double(), b.double(), residual=r.double(), padding=1,
                                     backend="reference")
    _assert_same(flipped, expect, **TOL[torch.bfloat16])
    assert not torch.equal(flipped, plain)


@pytest.mark.build
def test_fused_model_returns_nan_for_a_nan_pixel():
    """One NaN pixel: the unfused model's logits are NaN, and so are the fused model's (cpu backend)."""
    _need("cpu")
    import drn

    torch.manual_seed(0)
    unfused = drn.build("drn_d_22", num_classes=5).eval()
    fused = drn.fuse(unfused, backend="cpu")
    x = _rand(1, 3, 32, 32, seed=20)
    x[0, 1, 17, 9] = NAN
    with torch.no_grad():
        expect = unfused(x)
        got = fused(x)
    assert expect.isnan().all() and got.isnan().all()


# ---- 6. ±inf and NaN logits in the heads ---------------------------------------------------------------------

def _head_case(case: str, device):
    """x, weight, bias with 40 classes (two class tiles of the Triton interpreter) and a non-finite case."""
    x = _rand(1, 6, 2, 3, seed=30, device=device)
    w = _rand(40, 6, 1, 1, seed=31, device=device)
    b = _rand(40, seed=32, device=device)
    if case == "+inf":
        b[33] = INF
    elif case == "two +inf":
        b[[5, 33]] = INF
    elif case == "-inf":
        b[[0, 7, 39]] = -INF
    elif case == "-inf first tile":  # a whole class tile of -inf before the finite classes
        b[:32] = -INF
    elif case == "all -inf":
        b[:] = -INF
    elif case == "nan":
        b[[9, 2]] = NAN
    elif case == "+inf and -inf":
        b[4], b[20] = -INF, INF
    elif case == "inf pixel":  # one pixel with +inf and -inf logits (weight column 2 has both signs)
        x[0, 2, 1, 1] = INF
    elif case == "nan pixel":
        x[0, 3, 1, 0] = NAN
    return x, w, b


HEAD_CASES = ["+inf", "two +inf", "-inf", "-inf first tile", "all -inf", "nan", "+inf and -inf", "inf pixel",
              "nan pixel"]


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
@pytest.mark.parametrize("upsample", [1, 8])
def test_class_head_follows_torch_softmax_and_argmax_for_inf_and_nan(backend, upsample):
    device = _need(backend)
    for case in HEAD_CASES:
        x, w, b = _head_case(case, device)
        logits = drn_kernels.reference.class_logits(x.double(), w.double(), b.double(), upsample)
        got = drn_kernels.class_head(x, w, b, upsample=upsample, backend=backend)
        expect = (torch.argmax(logits, dim=1), torch.softmax(logits, dim=1).amax(dim=1).float())
        # the probability of the label; softmax is NaN everywhere in a pixel whose max is NaN or ±inf
        expect = (expect[0], torch.where(torch.softmax(logits, 1).isnan().any(1), NAN, expect[1]))
        _assert_same(got, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_localize_follows_torch_for_inf_and_nan(backend):
    device = _need(backend)
    for case in HEAD_CASES:
        x, w, b = _head_case(case, device)
        got = drn_kernels.localize(x, w, b, threshold=0.01, backend=backend)
        expect = drn_kernels.reference.localize(x.double(), w.double(), b.double(), 0.01)
        _assert_same(got, expect, rtol=1e-5, atol=1e-6)


# ---- 5. absurd integer arguments -----------------------------------------------------------------------------

HUGE = [2**31, 2**62, 2**63 - 1, 2**64]


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_absurd_integers_raise_naming_the_argument(backend):
    device = _need(backend)
    x, w, b = _rand(1, 4, 5, 6, device=device), _rand(3, 4, 3, 3, device=device), _rand(3, device=device)
    hw = _rand(3, 4, 1, 1, device=device)
    for v in HUGE + [2**31 - 1, 2**30]:
        cases = [(dict(padding=v, dilation=v), "padding"), (dict(dilation=(1, v), padding=1), "dilation"),
                 (dict(padding=(v, 0)), "padding")]
        if v > 2**31 - 1:
            cases.append((dict(stride=v, padding=1), "stride"))
        for kwargs, name in cases:
            with pytest.raises(ValueError, match=name):
                drn_kernels.conv_bn_act(x, w, b, backend=backend, **kwargs)
        with pytest.raises(ValueError, match="upsample"):
            drn_kernels.class_head(x, hw, b, upsample=v, backend=backend)
        if v > 2**31 - 1:
            with pytest.raises(ValueError, match="stride"):
                drn_kernels.localize(x, hw, b, threshold=0.5, stride=v, backend=backend)


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_large_integers_within_range_give_the_right_answer(backend):
    """dilation = padding = 2**29 with a 3x3 kernel: only the centre tap lands in the image (a 1x1 conv)."""
    device = _need(backend)
    x, w, b = _rand(1, 4, 5, 6, device=device), _rand(3, 4, 3, 3, device=device), _rand(3, device=device)
    v = 2**29
    got = drn_kernels.conv_bn_act(x, w, b, padding=v, dilation=v, backend=backend)
    expect = drn_kernels.conv_bn_act(x.double(), w[:, :, 1:2, 1:2].double(), b.double(), backend="reference")
    _assert_same(got, expect, rtol=1e-5, atol=1e-5)
    stride = 2**31 - 1
    hw = _rand(3, 4, 1, 1, device=device)
    b2 = b.clone()
    b2[1] += 10.0  # a clear top-1 class
    got = drn_kernels.localize(x, hw, b2, threshold=0.0, stride=stride, backend=backend)
    expect = drn_kernels.reference.localize(x.double(), hw.double(), b2.double(), 0.0, stride)
    assert (got[3] >= 0).all() and got[3].max() > 2**31  # a box was found, in pixels of 2**31-1
    _assert_same(got, expect, rtol=1e-5, atol=1e-5)


_DIRECT_CALLS = """
import torch, drn_kernels
from drn_kernels._build import extension as _extension
from drn_kernels._build import sim as _sim
x, w, b = torch.randn(1, 4, 5, 6), torch.randn(3, 4, 3, 3), torch.randn(3)
ops = []
if _extension.load() is not None:
    ops.append(torch.ops.drn.conv_bn_act_native)
try:
    _sim.load()
    ops.append(torch.ops.drn.conv_bn_act_sim)
except RuntimeError:
    pass
for op in ops:
    for v in (2**31 - 1, 2**31, 2**62, 2**63 - 1):
        for stride, padding, dilation in (([1, 1], [v, v], [v, v]), ([min(v + 1, 2**63 - 1)] * 2, [1, 1], [1, 1]),
                                          ([1, 1], [1, 1], [v, 1]), ([1, 1], [0, v], [1, 1])):
            try:
                op(x, w, b, stride, padding, dilation, None, True)
                print("NO ERROR", op, stride, padding, dilation)
            except (ValueError, RuntimeError) as e:
                assert "2**31-1" in str(e), str(e)
    for bad in (([0, 1], [1, 1], [1, 1]), ([1, 1], [-1, 1], [1, 1]), ([1, 1], [1, 1], [0, 1]), ([1], [1], [1])):
        try:
            op(x, w, b, *bad, None, True)
            print("NO ERROR", op, bad)
        except (ValueError, RuntimeError):
            pass
    # operands that do not match: an error naming the operand, never a read past its end
    res = torch.randn(1, 3, 5, 6)
    for name, args in (("bias", (x, w, b[:1], res)), ("bias", (x, w, torch.randn(3, 1), None)),
                       ("weight", (x, w[:, :2], b, None)), ("residual", (x, w, b, res[:, :, :2, :2])),
                       ("residual", (x, w, b, res.half())), ("weight and bias", (x, w.double(), b, None))):
        try:
            op(args[0], args[1], args[2], [1, 1], [1, 1], [1, 1], args[3], True)
            print("NO ERROR", op, name)
        except (ValueError, TypeError) as e:
            assert name in str(e), str(e)
if ops:
    r = torch.randn(1, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    try:
        torch.ops.drn.conv_bn_act_residual_native(x, w, b, [1, 1], [1, 1], [1, 1], r, True, None)
        print("NO ERROR residual_native")
    except ValueError as e:
        assert "residual" in str(e), str(e)
print("ok", len(ops))
"""


@pytest.mark.build
def test_compiled_ops_guard_their_integer_arguments():
    """torch.ops.drn.*_native / *_sim called directly (no Python checks) with absurd integers or operands that do
    not match: an exception, never a crash or a read out of bounds. In a subprocess, so a crash fails this test
    instead of killing the session."""
    _need("cpu")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(_DIRECT_CALLS)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "NO ERROR" not in run.stdout and "ok" in run.stdout, run.stdout


# ---- 7. zero-height / zero-width images -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_zero_size_image_raises_like_torch(backend):
    device = _need(backend)
    w, b, hw = _rand(3, 4, 3, 3, device=device), _rand(3, device=device), _rand(3, 4, 1, 1, device=device)
    for shape in ((1, 4, 0, 5), (1, 4, 5, 0), (0, 4, 0, 5)):
        x = torch.zeros(shape, device=device)
        with pytest.raises(ValueError, match="height and width"):
            drn_kernels.conv_bn_act(x, w, b, padding=2, backend=backend)
        with pytest.raises(ValueError, match="height and width"):
            drn_kernels.class_head(x, hw, b, upsample=8, backend=backend)
        with pytest.raises(ValueError, match="height and width"):
            drn_kernels.localize(x, hw, b, threshold=0.5, backend=backend)
    with pytest.raises(RuntimeError):  # the reference's own behaviour, which the rule follows
        torch.nn.functional.conv2d(torch.zeros(1, 4, 0, 5), w.cpu(), padding=2)


@pytest.mark.build
def test_compiled_ops_reject_zero_size_image():
    _need("cpu")
    x, w, b = torch.zeros(1, 4, 0, 5), torch.randn(3, 4, 3, 3), torch.randn(3)
    with pytest.raises(ValueError, match="height and width"):
        torch.ops.drn.conv_bn_act_native(x, w, b, [1, 1], [2, 2], [1, 1], None, True)
    with pytest.raises(ValueError, match="height and width"):
        torch.ops.drn.localize_native(x, w[:, :, :1, :1], b, 0.5, 8)


# ---- 9. inference-only, the same way for every op -----------------------------------------------------------

def _public_calls(backend, device, requires_grad):
    x = _rand(1, 5, 3, 4, seed=40, device=device).requires_grad_(requires_grad)
    w = _rand(6, 5, 3, 3, seed=41, device=device).requires_grad_(requires_grad)
    b = _rand(6, seed=42, device=device)
    hw = _rand(4, 5, 1, 1, seed=43, device=device)
    hb = _rand(4, seed=44, device=device).requires_grad_(requires_grad)
    return {"conv_bn_act": (x, w, b, [1, 1], [1, 1], [2, 2], None, True),
            "class_head": (x, hw, hb, 8, torch.int32),
            "localize": (x, hw, hb, 0.25, 8)}


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
def test_backward_raises_inference_only_for_every_op(backend):
    device = _need(backend)
    suffix = {"cpu": "native", "cuda": "native", "cuda-sim": "sim", "triton": "triton", "reference": "reference"}
    for name, args in _public_calls(backend, device, requires_grad=True).items():
        ops = [(getattr(torch.ops.drn, name), args + (backend,)),
               (getattr(torch.ops.drn, f"{name}_{suffix[backend]}"), args)]
        for op, call in ops:
            outs = op(*call)
            outs = outs if isinstance(outs, tuple) else (outs,)
            assert all(o.requires_grad == o.dtype.is_floating_point for o in outs), op
            loss = sum(o.sum() for o in outs if o.requires_grad)
            with pytest.raises(RuntimeError, match="inference-only: drn::"):
                loss.backward()
            with torch.no_grad():
                plain = op(*call)
            assert not any(o.requires_grad for o in (plain if isinstance(plain, tuple) else (plain,)))


@pytest.mark.parametrize("name", ["conv_bn_act", "class_head", "localize"])
def test_opcheck_with_requires_grad_inputs(name):
    """opcheck passes with inputs that require grad. Its aot_dispatch test is replaced by the test below: it
    compares eager and compiled *gradients*, and an inference-only op has none (its backward raises, in both)."""
    args = _public_calls("reference", "cpu", requires_grad=True)[name] + ("reference",)
    torch.library.opcheck(getattr(torch.ops.drn, name).default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("name", ["conv_bn_act", "class_head"])
def test_compiled_forward_runs_and_backward_raises_like_eager(name):
    args = _public_calls("reference", "cpu", requires_grad=True)[name] + ("reference",)
    op = getattr(torch.ops.drn, name)

    def f(*a):
        return op(*a)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager, got = f(*args), compiled(*args)
    _assert_same(got, eager)
    for outs in (eager, got):
        outs = outs if isinstance(outs, tuple) else (outs,)
        with pytest.raises(RuntimeError, match="inference-only"):
            sum(o.sum() for o in outs if o.requires_grad).backward()
