"""backend="cpu": the C++ CPU kernels of drn_kernels._C (csrc/cpu) against the float64 reference.

Low precision is judged against PyTorch's own error in that dtype: |ours - ref64| <= 2 * |torch_dtype - ref64| + eps.
The extension is built (or loaded from its cache) once per session; `python -m drn_kernels.build` does it ahead
of time.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import drn_kernels
from drn_kernels import reference, settings
from drn_kernels._build import extension as _extension

pytestmark = pytest.mark.build

CL = torch.channels_last


@pytest.fixture(scope="session", autouse=True)
def extension():
    module = _extension.load()
    if module is None:
        reason = _extension.why_unavailable("cpu")
        if settings.flag("DRN_NO_JIT_BUILD"):
            pytest.skip(reason)
        pytest.fail(f"the CPU extension did not build: {reason}")
    return module


def _rand(*shape, dtype=torch.float32, scale=1.0, fmt=torch.contiguous_format, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).contiguous(memory_format=fmt)


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# ---- conv_bn_act --------------------------------------------------------------------------------------------

# (C, K, R, stride, dilation, H, W): every conv shape of the DRN family at a small spatial size.
LAYER_SHAPES = [
    pytest.param(3, 16, 7, 1, 1, 13, 11, id="stem7x7-s1"),
    pytest.param(3, 16, 7, 2, 1, 13, 11, id="stem7x7-s2"),
    pytest.param(17, 19, 3, 1, 1, 9, 13, id="3x3-s1"),
    pytest.param(17, 19, 3, 2, 1, 9, 13, id="3x3-s2"),
    pytest.param(16, 24, 3, 1, 2, 9, 13, id="3x3-d2"),
    pytest.param(5, 7, 3, 1, 4, 11, 10, id="3x3-d4"),
    pytest.param(32, 40, 1, 1, 1, 5, 7, id="1x1-s1"),
    pytest.param(32, 40, 1, 2, 1, 5, 7, id="1x1-s2"),
]
DTYPES = [pytest.param(torch.float32, 1e-4, 1e-4, id="fp32"),
          pytest.param(torch.bfloat16, None, None, id="bf16"),
          pytest.param(torch.float16, None, None, id="fp16")]
PATHS = ["onednn", "aten", "winograd2", "winograd4"]


@pytest.fixture(params=PATHS)
def conv_path(request, cpu_settings):
    """The oneDNN fused path (DRN_CPU_CONV=direct), the ATen convolution + fused epilogue fallback
    (DRN_CPU_CONV=aten), and Winograd F(2x2,3x3) / F(4x4,3x3) for every float32 3x3 stride-1 conv
    (DRN_CPU_CONV=winograd; other convs fall through to oneDNN). Outputs of the Winograd path are poisoned
    (cpu_settings.poison(): filled with NaN before the kernel runs) so an unwritten element shows."""
    cpu_settings.set("DRN_CPU_CONV", {"onednn": "direct", "aten": "aten"}.get(request.param, "winograd"))
    cpu_settings.poison()
    if request.param.startswith("winograd"):
        cpu_settings.set("DRN_WINOGRAD_TILE", request.param[-1])
    return request.param


def _torch_same_dtype_conv(x, w, b, stride, pad, dil, res, relu):
    """PyTorch's own eager result in x's dtype (conv, + bias, + residual, relu, each rounded)."""
    y = F.conv2d(x, w, b, stride, pad, dil)
    if res is not None:
        y = y + res
    return torch.relu(y) if relu else y


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("c, k, r, stride, dil, h, w", LAYER_SHAPES)
def test_conv_bn_act_parity(conv_path, dtype, atol, rtol, c, k, r, stride, dil, h, w):
    pad = dil * (r - 1) // 2
    for batch in (1, 3):
        for fmt in (torch.contiguous_format, CL):
            x = _rand(batch, c, h, w, dtype=dtype, fmt=fmt, seed=1)
            wt = _rand(k, c, r, r, dtype=dtype, scale=(c * r * r) ** -0.5, seed=2)
            b = _rand(k, dtype=dtype, seed=3)
            p = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
            q = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
            for res in (None, _rand(batch, k, p, q, dtype=dtype, fmt=fmt, seed=4)):
                for relu in (True, False):
                    y = drn_kernels.conv_bn_act(x, wt, b, stride=stride, padding=pad, dilation=dil, residual=res,
                                                relu=relu, backend="cpu")
                    ref = reference.conv_bn_act(x.double(), wt.double(), b.double(), [stride] * 2, [pad] * 2,
                                                [dil] * 2, None if res is None else res.double(), relu)
                    assert y.shape == (batch, k, p, q) and y.dtype == dtype
                    assert y.is_contiguous(memory_format=CL)
                    assert not y.isnan().any()
                    if dtype == torch.float32:
                        torch.testing.assert_close(y.double(), ref, atol=atol, rtol=rtol)
                    else:
                        own = _torch_same_dtype_conv(x, wt, b, stride, pad, dil, res, relu)
                        # bf16 Winograd (F(2x2) only) also rounds its GEMM operands V and U to bf16: measured up
                        # to ~2.1x torch's own error here, judged by the project's 4x rule (tests/tolerance.py)
                        factor = 4 if conv_path.startswith("winograd") and y.dtype == torch.bfloat16 else 2
                        bound = factor * _max_err(own, ref) + 1e-3 * ref.abs().max().item()
                        assert _max_err(y, ref) <= bound, (conv_path, batch, fmt, res is None, relu)


def test_conv_bn_act_odd_strides_and_repeatable(conv_path):
    """A non-contiguous view of x and a strided residual; two runs bit-identical."""
    base = _rand(2, 9, 13, 22, seed=5)
    x = base[:, :, :, ::2]                                     # (2, 9, 13, 11), neither NCHW nor NHWC contiguous
    wt = _rand(6, 9, 3, 3, scale=0.2, seed=6)
    b = _rand(6, seed=7)
    res = _rand(6, 2, 13, 11, seed=8).transpose(0, 1)          # (2, 6, 13, 11) with odd strides
    y1 = drn_kernels.conv_bn_act(x, wt, b, padding=1, residual=res, backend="cpu")
    y2 = drn_kernels.conv_bn_act(x, wt, b, padding=1, residual=res, backend="cpu")
    ref = reference.conv_bn_act(x.double(), wt.double(), b.double(), [1, 1], [1, 1], [1, 1], res.double(), True)
    torch.testing.assert_close(y1.double(), ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(y1, y2)


def test_conv_bn_act_weight_update_repacks(conv_path):
    """The packed / Winograd-transformed weight caches follow in-place updates of the weight (version counter)."""
    x = _rand(1, 8, 9, 9, seed=9)
    wt = _rand(4, 8, 3, 3, scale=0.2, seed=10)
    b = _rand(4, seed=11)
    y1 = drn_kernels.conv_bn_act(x, wt, b, padding=1, relu=False, backend="cpu")
    with torch.no_grad():
        wt.mul_(-2)
    y2 = drn_kernels.conv_bn_act(x, wt, b, padding=1, relu=False, backend="cpu")
    ref = reference.conv_bn_act(x.double(), wt.double(), b.double(), [1, 1], [1, 1], [1, 1], None, False)
    torch.testing.assert_close(y2.double(), ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(y1, y2)


# (N, C, K, H, W, dilation): channel tails (not multiples of 16), dilations larger than the map, several
# workspace chunks (batch 2 of 130x126 at 64 channels is 2112 F(4,3) tiles, chunks of 910), batch 0 and 1.
WINOGRAD_CASES = [
    pytest.param(1, 64, 64, 28, 28, 4, id="64-d4-28"),
    pytest.param(2, 21, 37, 17, 23, 3, id="tails-d3"),
    pytest.param(1, 5, 70, 7, 9, 8, id="dilation-beyond-map"),
    pytest.param(2, 64, 64, 130, 126, 1, id="multi-chunk"),
    # partial tiles (phases of 21/20 rows, 20/19 columns) in every class, whose ranges cross chunk boundaries
    pytest.param(4, 64, 64, 61, 59, 3, id="multi-chunk-d3"),
    pytest.param(0, 64, 64, 9, 9, 2, id="empty-batch"),
]


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize("tile", ["2", "4"])
@pytest.mark.parametrize("n, c, k, h, w, dil", WINOGRAD_CASES)
def test_winograd_parity(cpu_settings, isa, tile, n, c, k, h, w, dil):
    """Winograd F(m,3) against the float64 reference: contiguous and channels_last x, with and without a
    residual, poisoned outputs, each build of the transforms (DRN_CPU_ISA, capped by this CPU); the per-element
    error stays at float32 level (relative to the output scale)."""
    cpu_settings.set("DRN_CPU_ISA", isa)
    cpu_settings.set("DRN_CPU_CONV", "winograd")
    cpu_settings.poison()
    cpu_settings.set("DRN_WINOGRAD_TILE", tile)
    wt = _rand(k, c, 3, 3, scale=(9 * c) ** -0.5, seed=21)
    b = _rand(k, seed=22)
    for fmt in (torch.contiguous_format, CL):
        x = _rand(n, c, h, w, fmt=fmt, seed=20)
        for res in (None, _rand(n, k, h, w, fmt=fmt, seed=23)):
            y = drn_kernels.conv_bn_act(x, wt, b, padding=dil, dilation=dil, residual=res, relu=res is None,
                                        backend="cpu")
            ref = reference.conv_bn_act(x.double(), wt.double(), b.double(), [1, 1], [dil, dil], [dil, dil],
                                        None if res is None else res.double(), res is None)
            assert y.shape == ref.shape and y.is_contiguous(memory_format=CL)
            assert not y.isnan().any()
            scale = max(ref.abs().max().item() if ref.numel() else 1.0, 1.0)
            assert _max_err(y, ref) <= (2e-6 if tile == "2" else 2e-5) * scale


def test_winograd_bf16_partial_tiles_across_chunks(cpu_settings):
    """bfloat16 Winograd (F(2x2) with the bf16 GEMM of AVX512-BF16 CPUs; elsewhere F(4x4) computing in float32)
    where partial tiles (odd phases at dilation 3) come in all four classes and their GEMM row ranges cross
    workspace chunks (4 images of 3 x 61x59 phases = 3720 F(2x2) tiles, chunks of 2044): every output written
    (poisoned), within the 4x-torch bound of the bf16 parity test."""
    cpu_settings.set("DRN_CPU_CONV", "winograd")
    cpu_settings.poison()
    x = _rand(4, 64, 61, 59, dtype=torch.bfloat16, fmt=CL, seed=27)
    wt = _rand(64, 64, 3, 3, dtype=torch.bfloat16, scale=(9 * 64) ** -0.5, seed=28)
    b = _rand(64, dtype=torch.bfloat16, seed=29)
    assert torch.ops.drn.cpu_winograd_tiles(x, wt, [1, 1]) == ([2] if torch.ops.drn.cpu_bf16_gemm() else [4, 2])
    y = drn_kernels.conv_bn_act(x, wt, b, padding=3, dilation=3, relu=False, backend="cpu")
    ref = reference.conv_bn_act(x.double(), wt.double(), b.double(), [1, 1], [3, 3], [3, 3], None, False)
    own = _torch_same_dtype_conv(x, wt, b, 1, 3, 3, None, False)
    assert not y.isnan().any()
    assert _max_err(y, ref) <= 4 * _max_err(own, ref) + 1e-3 * ref.abs().max().item()


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize("tile", ["2", "4"])
def test_winograd_bf16_parity_per_isa(cpu_settings, isa, tile):
    """bfloat16 Winograd on each build of the transforms (DRN_CPU_ISA, capped by this CPU): below AVX512-BF16 the
    bf16 storage with float32 transforms and GEMM (F(2x2) or F(4x4)), with it F(2x2) on the bf16 GEMM; ragged C
    and K, both layouts, with and without a residual, poisoned outputs; within 4x torch's own bf16 error."""
    cpu_settings.set("DRN_CPU_ISA", isa)
    cpu_settings.set("DRN_CPU_CONV", "winograd")
    cpu_settings.set("DRN_WINOGRAD_TILE", tile)
    cpu_settings.poison()
    wt = _rand(67, 65, 3, 3, dtype=torch.bfloat16, scale=(9 * 65) ** -0.5, seed=31)
    b = _rand(67, dtype=torch.bfloat16, seed=32)
    for fmt in (torch.contiguous_format, CL):
        x = _rand(1, 65, 13, 11, dtype=torch.bfloat16, fmt=fmt, seed=30)
        for res in (None, _rand(1, 67, 13, 11, dtype=torch.bfloat16, fmt=fmt, seed=33)):
            y = drn_kernels.conv_bn_act(x, wt, b, padding=2, dilation=2, residual=res, relu=res is None,
                                        backend="cpu")
            r64 = None if res is None else res.double()
            ref = reference.conv_bn_act(x.double(), wt.double(), b.double(), [1, 1], [2, 2], [2, 2], r64,
                                        res is None)
            own = _torch_same_dtype_conv(x, wt, b, 1, 2, 2, res, res is None)
            assert y.dtype == torch.bfloat16 and not y.isnan().any()
            assert _max_err(y, ref) <= 4 * _max_err(own, ref) + 1e-3 * ref.abs().max().item()


def test_winograd_is_the_default_for_wide_fp32_3x3(cpu_settings):
    """With DRN_CPU_CONV unset, a float32 3x3 stride-1 conv with >= 64 channels in and out takes the Winograd
    path (bit-identical to forcing it), a 32-channel one and a stride-2 one take oneDNN's."""
    x = _rand(1, 64, 15, 14, fmt=CL, seed=24)
    wt = _rand(64, 64, 3, 3, scale=0.04, seed=25)
    b = _rand(64, seed=26)

    def run(mode, **kw):
        cpu_settings.set("DRN_CPU_CONV", mode)
        return drn_kernels.conv_bn_act(x, wt, b, padding=2, dilation=2, backend="cpu", **kw)

    assert torch.equal(run(""), run("winograd"))
    assert not torch.equal(run(""), run("direct"))
    assert torch.equal(run("", stride=2), run("direct", stride=2))
    narrow_x, narrow_w = x[:, :32], wt[:32, :32]
    cpu_settings.set("DRN_CPU_CONV", "")
    auto = drn_kernels.conv_bn_act(narrow_x, narrow_w, b[:32], padding=1, backend="cpu")
    cpu_settings.set("DRN_CPU_CONV", "direct")
    assert torch.equal(auto, drn_kernels.conv_bn_act(narrow_x, narrow_w, b[:32], padding=1, backend="cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c, k, stride, dil", [(64, 64, 1, 2), (16, 24, 1, 1), (8, 8, 2, 1)])
def test_conv_bn_act_into_residual(conv_path, dtype, c, k, stride, dil):
    """The in-place variant (drn.fused's memory-frugal predict) writes exactly conv_bn_act's result over the
    residual's storage (float32: within 1e-4 of the float64 reference); a residual that is not channels_last
    contiguous gets the same values by a copy. x is contiguous with a channels_last residual and vice versa."""
    from drn_kernels.ops import conv_bn_act_into_residual

    x_nchw = _rand(2, c, 11, 13, dtype=dtype, seed=40)
    wt = _rand(k, c, 3, 3, dtype=dtype, scale=(9 * c) ** -0.5, seed=41)
    b = _rand(k, dtype=dtype, seed=42)
    p, q = (11 - 1) // stride + 1, (13 - 1) // stride + 1
    for fmt in (CL, torch.contiguous_format):
        res = _rand(2, k, p, q, dtype=dtype, fmt=fmt, seed=43)
        x = x_nchw.contiguous(memory_format=torch.contiguous_format if fmt is CL else CL)
        expected = drn_kernels.conv_bn_act(x, wt, b, stride=stride, padding=dil, dilation=dil, residual=res,
                                           backend="cpu")
        ptr = res.data_ptr()
        out = conv_bn_act_into_residual(x, wt, b, residual=res, stride=stride, padding=dil, dilation=dil,
                                        backend="cpu")
        assert out is res and res.data_ptr() == ptr
        assert torch.equal(out, expected)
        if dtype == torch.float32:
            ref = reference.conv_bn_act(x.double(), wt.double(), b.double(), [stride] * 2, [dil] * 2, [dil] * 2,
                                        _rand(2, k, p, q, dtype=dtype, seed=43).double(), True)
            torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="residual must have"):
        conv_bn_act_into_residual(x, wt, b, residual=res[:, :, 1:], stride=stride, padding=dil, dilation=dil,
                                  backend="cpu")


@pytest.mark.parametrize("env, value", [("DRN_WINOGRAD_TILE", "3"), ("DRN_CPU_ISA", "neon"),
                                        ("DRN_CPU_CONV", "onednn"), ("DRN_CPU_PREFETCH", "l3")])
def test_winograd_env_is_checked(cpu_settings, env, value):
    """A bad value is refused (naming the variable) when it is passed to the kernels (the cpu_settings fixture
    does what the extension's load does), not silently ignored."""
    cpu_settings.set("DRN_CPU_CONV", "winograd")
    with pytest.raises(ValueError, match=env):
        cpu_settings.set(env, value)


def test_conv_bn_act_empty_batch():
    x = torch.randn(0, 3, 9, 9)
    y = drn_kernels.conv_bn_act(x, torch.randn(5, 3, 3, 3), torch.randn(5), stride=2, padding=1, backend="cpu")
    assert y.shape == (0, 5, 5, 5)


def test_conv_bn_act_requires_grad_inputs_give_plain_output():
    """nn.Parameter weights (requires_grad) must not make the kernel record autograd history."""
    x = _rand(1, 4, 6, 6, seed=12)
    wt = torch.nn.Parameter(_rand(3, 4, 1, 1, seed=13))
    b = torch.nn.Parameter(_rand(3, seed=14))
    with torch.no_grad():
        y = drn_kernels.conv_bn_act(x, wt, b, backend="cpu")
    assert y.grad_fn is None


# ---- class_head -----------------------------------------------------------------------------------------------

def _logits64(x, wt, b, upsample):
    return reference.class_logits(x.double(), wt.double(), b.double(), upsample)


def _check_labels(labels, ref_labels, logits64, gap=1e-4):
    """Labels equal the reference's except where the reference's top two logits are within `gap` (near-ties)."""
    diff = labels.long() != ref_labels
    if diff.any():
        top2 = logits64.topk(min(2, logits64.shape[1]), dim=1).values
        margin = (top2[:, 0] - top2[:, -1]).abs()
        assert (margin[diff] <= gap * (1 + top2[:, 0].abs()[diff])).all(), f"{int(diff.sum())} labels differ"


HEAD_SHAPES = [  # (N, C, h, w, K)
    (1, 3, 5, 7, 1),
    (3, 5, 9, 13, 2),
    (1, 17, 5, 7, 19),
    (3, 17, 9, 13, 19),
    (1, 8, 3, 4, 1000),
]
LABEL_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("upsample", [1, 8])
@pytest.mark.parametrize("n, c, h, w, k", HEAD_SHAPES)
def test_class_head_parity(dtype, atol, rtol, upsample, n, c, h, w, k):
    for i, fmt in enumerate((torch.contiguous_format, CL)):
        x = _rand(n, c, h, w, dtype=dtype, fmt=fmt, seed=20 + i)
        wt = _rand(k, c, 1, 1, dtype=dtype, scale=c ** -0.5, seed=22)
        b = _rand(k, dtype=dtype, scale=0.1, seed=23)
        label_dtype = LABEL_DTYPES[(i + k) % len(LABEL_DTYPES)] if k <= 255 else torch.int64
        weight = wt if i == 0 else wt.view(k, c)                      # (K, C, 1, 1) and (K, C)
        labels, probs = drn_kernels.class_head(x, weight, b, upsample=upsample, label_dtype=label_dtype,
                                               backend="cpu")
        ref_labels, ref_probs = reference.class_head(x.double(), wt.double(), b.double(), upsample, torch.int64)
        assert labels.shape == (n, h * upsample, w * upsample) and labels.dtype == label_dtype
        assert probs.dtype == torch.float32 and not probs.isnan().any()
        _check_labels(labels, ref_labels, _logits64(x, wt, b, upsample))
        same = labels.long() == ref_labels
        if dtype == torch.float32:
            torch.testing.assert_close(probs.double()[same], ref_probs[same], atol=1e-5, rtol=1e-5)
        elif k >= 1000 and upsample == 8:
            # PyTorch's own low-precision transposed conv with 1000 groups is very slow on CPU; ours accumulates in
            # float32, so hold it to the float32 tolerance instead (stricter than 2x PyTorch's error).
            torch.testing.assert_close(probs.double()[same], ref_probs[same], atol=1e-5, rtol=1e-5)
        else:
            # PyTorch's own pipeline in this dtype: conv1x1, the x8 transposed conv, softmax.
            own = F.conv2d(x, wt, b)
            if upsample == 8:
                own = reference.upsample8(own)
            own_probs = torch.softmax(own, dim=1).gather(1, ref_labels.unsqueeze(1)).squeeze(1)
            bound = 2 * _max_err(own_probs, ref_probs) + 1e-4
            assert _max_err(probs[same], ref_probs[same]) <= bound


def test_class_head_ties_nan_inf():
    """torch.argmax rules: first index on ties, first NaN wins; probs NaN where the softmax is NaN."""
    k = 5
    x = _rand(2, k, 4, 6, seed=30)
    x[0, 3] = x[0, 1]                       # exact tie between classes 1 and 3 everywhere in image 0
    x[0, 1] += 10.0
    x[0, 3] += 10.0
    x[1, 2, 1, 2] = float("nan")
    x[1, 4, 1, 2] = float("nan")            # two NaNs in one cell: the first (class 2) wins
    x[1, 0, 3, 4] = float("inf")
    eye = torch.eye(k).view(k, k, 1, 1)     # logits == x exactly
    zero = torch.zeros(k)
    for upsample in (1, 8):
        labels, probs = drn_kernels.class_head(x, eye, zero, upsample=upsample, backend="cpu")
        ref_labels, ref_probs = reference.class_head(x.double(), eye.double(), zero.double(), upsample, torch.int64)
        assert torch.equal(labels, ref_labels)
        assert torch.equal(probs.isnan(), ref_probs.isnan())
        finite = ~ref_probs.isnan()
        torch.testing.assert_close(probs.double()[finite], ref_probs[finite], atol=1e-5, rtol=1e-5)
        assert (labels[0] == 1).all()


def test_class_head_repeatable_and_empty_batch():
    x = _rand(2, 7, 6, 5, seed=31)
    wt, b = _rand(19, 7, seed=32), _rand(19, seed=33)
    a = drn_kernels.class_head(x, wt, b, upsample=8, backend="cpu")
    c = drn_kernels.class_head(x, wt, b, upsample=8, backend="cpu")
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    labels, probs = drn_kernels.class_head(x[:0], wt, b, upsample=8, backend="cpu")
    assert labels.shape == (0, 48, 40) and probs.shape == (0, 48, 40)


# ---- localize -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("n, c, h, w, k, threshold", [
    (1, 3, 5, 7, 1, 0.5),
    (3, 17, 9, 13, 19, 0.1),
    (2, 8, 4, 3, 1000, 0.0),
    (2, 5, 6, 6, 7, 1.0),                   # nothing scores above 1: boxes all -1
])
def test_localize_parity(dtype, atol, rtol, n, c, h, w, k, threshold):
    x = _rand(n, c, h, w, dtype=dtype, fmt=CL, seed=40)
    wt = _rand(k, c, 1, 1, dtype=dtype, scale=c ** -0.5, seed=41)
    b = _rand(k, dtype=dtype, scale=0.1, seed=42)
    logits, labels, scores, boxes = drn_kernels.localize(x, wt, b, threshold=threshold, stride=8, backend="cpu")
    r_logits, r_labels, r_scores, r_boxes = reference.localize(x.double(), wt.double(), b.double(), threshold, 8)
    assert logits.dtype == dtype and labels.dtype == torch.int64
    assert scores.dtype == torch.float32 and boxes.dtype == torch.float32
    if dtype == torch.float32:
        torch.testing.assert_close(logits.double(), r_logits, atol=1e-5, rtol=1e-5)
    else:
        assert _max_err(logits, r_logits) <= 2 * _max_err(r_logits.to(dtype), r_logits) + 1e-4
    _check_labels(labels, r_labels, _logits64(x, wt, b, 1))
    torch.testing.assert_close(scores.double(), r_scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(boxes, r_boxes)
    if threshold >= 1.0:
        assert (boxes == -1).all()


# ---- torch.library integration ----------------------------------------------------------------------------------

def test_opcheck_native_ops():
    x = _rand(2, 5, 7, 9, fmt=CL, seed=50)
    wt, b = _rand(6, 5, 3, 3, scale=0.3, seed=51), _rand(6, seed=52)
    res = _rand(2, 6, 4, 5, seed=53)
    torch.library.opcheck(torch.ops.drn.conv_bn_act_native.default, (x, wt, b, [2, 2], [1, 1], [1, 1], res, True))
    torch.library.opcheck(torch.ops.drn.conv_bn_act_native.default, (x, wt, b, [1, 1], [2, 2], [2, 2], None, False))
    torch.library.opcheck(torch.ops.drn.conv_bn_act.default, (x, wt, b, [1, 1], [1, 1], [1, 1], None, True, "cpu"))
    hw, hb = _rand(19, 5, 1, 1, seed=54), _rand(19, seed=55)
    torch.library.opcheck(torch.ops.drn.class_head_native.default, (x, hw, hb, 8, torch.int64))
    torch.library.opcheck(torch.ops.drn.class_head_native.default, (x, hw.view(19, 5), hb, 1, torch.int32))
    torch.library.opcheck(torch.ops.drn.class_head.default, (x, hw, hb, 8, torch.int64, "cpu"))
    torch.library.opcheck(torch.ops.drn.localize_native.default, (x, hw, hb, 0.2, 8))
    into = _rand(2, 6, 7, 9, fmt=CL, seed=56)  # the in-place variant: schema says it mutates `residual` only
    torch.library.opcheck(torch.ops.drn.conv_bn_act_residual_native.default,
                          (x, wt, b, [1, 1], [1, 1], [1, 1], into, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_fullgraph():
    x = _rand(1, 8, 9, 9, fmt=CL, seed=60)
    wt, b = _rand(8, 8, 3, 3, scale=0.2, seed=61), _rand(8, seed=62)

    def block(x):
        y = drn_kernels.conv_bn_act(x, wt, b, padding=1, backend="cpu")
        return drn_kernels.conv_bn_act(y, wt, b, padding=2, dilation=2, residual=x, backend="cpu")

    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(x), block(x))
