"""backend="cuda": the CUDA kernels of drn_kernels._C on a real GPU, at realistic DRN layer sizes and at every
layer kind the benchmarks time, at the size they time it (batch 8 @1024x2048), and the 19-class head at 1024x2048.

Needs a CUDA GPU (marked gpu: skipped elsewhere). Outputs are poisoned (fresh allocations start as NaN: torch's
deterministic-mode fill, which the extension's at::empty gets too). Compared with the float64 reference; fp16/bf16
judged against 2x PyTorch's own same-dtype error (cuDNN in that dtype). TF32 is off for the whole module, so no
fp32 comparison is made against a TF32 result.
"""
import pytest
import torch
import torch.nn.functional as F

import drn_kernels
from benchmarks import common
from drn_kernels import reference
from helpers import require_backend
from margins import clear_top2

pytestmark = [pytest.mark.build, pytest.mark.gpu]
BACKEND = "cuda"
DTYPES = [(torch.float32, 2e-4, 2e-4), (torch.float16, None, None), (torch.bfloat16, None, None)]

# (N, C, K, R, stride, padding, dilation, H, W): DRN layers, plus odd channel counts and sizes (masked tiles).
LAYERS = {
    "stem7x7_s1": (2, 3, 16, 7, 1, 3, 1, 224, 224),
    "stem7x7_s2": (2, 3, 64, 7, 2, 3, 1, 223, 221),
    "3x3_s1": (2, 64, 64, 3, 1, 1, 1, 56, 56),
    "3x3_s2": (2, 64, 128, 3, 2, 1, 1, 56, 56),
    "3x3_d2": (2, 256, 256, 3, 1, 2, 2, 28, 28),
    "3x3_d4": (1, 512, 512, 3, 1, 4, 4, 28, 28),
    "1x1_s1": (2, 512, 128, 1, 1, 0, 1, 28, 28),
    "1x1_s2": (2, 64, 256, 1, 2, 0, 1, 56, 56),
    "odd": (3, 17, 19, 3, 1, 1, 1, 33, 47),
}


@pytest.fixture(scope="module", autouse=True)
def _needs_cuda_backend():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    require_backend(BACKEND, "cuda")  # on a GPU machine, CUDA kernels that did not build fail under make test


@pytest.fixture(scope="module", autouse=True)
def _no_tf32():
    """Exact fp32 in every torch conv/matmul here (the legacy switches only: mixing in the fp32_precision API
    would make the legacy getters raise)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def poisoned():
    with common.poisoned_outputs():
        yield


def _gen(shape, dtype, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64, device="cuda") * scale).to(dtype)


def _torch_same_dtype(x, weight, bias, residual, relu, stride, padding, dilation):
    """PyTorch's own result in x's dtype (cuDNN): the error budget for fp16/bf16."""
    y = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


def _check(out, ref64, ref_same, atol, rtol):
    out, ref64 = out.double(), ref64.double()
    assert torch.isfinite(out).all()
    if atol is not None:
        torch.testing.assert_close(out, ref64, atol=atol, rtol=rtol)
        return
    ours = (out - ref64).abs().max().item()
    theirs = (ref_same.double() - ref64).abs().max().item()
    assert ours <= 2 * theirs + 1e-4, f"max error {ours:.3g} > 2 x torch's {theirs:.3g}"


def _run_layer(n, c, k, r, stride, padding, dilation, h, w, dtype, atol, rtol, residual, relu=True):
    x = _gen((n, c, h, w), dtype).contiguous(memory_format=torch.channels_last)
    weight = _gen((k, c, r, r), dtype, (c * r * r) ** -0.5).contiguous(memory_format=torch.channels_last)
    bias = _gen((k,), dtype)
    p = (h + 2 * padding - dilation * (r - 1) - 1) // stride + 1
    q = (w + 2 * padding - dilation * (r - 1) - 1) // stride + 1
    res = _gen((n, k, p, q), dtype) if residual else None
    args = dict(stride=[stride] * 2, padding=[padding] * 2, dilation=[dilation] * 2)
    out = drn_kernels.conv_bn_act(x, weight, bias, residual=res, relu=relu, backend=BACKEND, **args)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == dtype
    ref64 = reference.conv_bn_act(x.double(), weight.double(), bias.double(), **args,
                                  residual=None if res is None else res.double(), relu=relu)
    _check(out, ref64, _torch_same_dtype(x, weight, bias, res, relu, **args), atol, rtol)
    return out, lambda: drn_kernels.conv_bn_act(x, weight, bias, residual=res, relu=relu, backend=BACKEND, **args)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("residual", [False, True])
def test_conv_bn_act(layer, dtype, atol, rtol, residual, poisoned):
    torch.manual_seed(0)
    out, again = _run_layer(*LAYERS[layer], dtype, atol, rtol, residual)
    assert torch.equal(out, again())


@pytest.mark.parametrize("kind", common.LAYER_KINDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_benchmarked_kinds_gpu(kind, dtype, atol, rtol, poisoned):
    """Every layer kind the benchmarks time, at the largest size they time it (batch 8 @1024x2048)."""
    kinds = common.layer_kinds()
    assert sorted(kinds) == sorted(common.LAYER_KINDS), "a benchmarked layer kind is missing from LAYER_KINDS"
    s = kinds[kind]
    torch.manual_seed(4)
    _run_layer(s.n, s.c, s.k, s.r, s.stride, s.padding, s.dilation, s.h, s.w, dtype, atol, rtol, s.residual,
               s.relu)


def test_conv_bn_act_nchw_input_and_second_device_stream():
    torch.manual_seed(1)
    x = _gen((2, 32, 40, 30), torch.float16)  # NCHW: the launcher makes it channels_last
    weight, bias = _gen((48, 32, 3, 3), torch.float16, 0.06), _gen((48,), torch.float16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = drn_kernels.conv_bn_act(x, weight, bias, padding=1, backend=BACKEND)
    stream.synchronize()
    ref = drn_kernels.conv_bn_act(x, weight, bias, padding=1, backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("upsample,n,h,w", [(1, 2, 64, 128), (8, 2, 64, 128), (8, 1, 128, 256)],
                         ids=["up1", "up8", "up8_1024x2048"])  # the last: the benchmarked 19-class head
def test_class_head(dtype, upsample, n, h, w, poisoned):
    torch.manual_seed(2)
    c, k = 512, 19
    x = _gen((n, c, h, w), dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = _gen((k, c, 1, 1), dtype, c ** -0.5), _gen((k,), dtype)
    labels, probs = drn_kernels.class_head(x, weight, bias, upsample=upsample, backend=BACKEND)
    ref_labels, ref_probs = reference.class_head(x.double(), weight.double(), bias.double(), upsample)
    clear = clear_top2(reference.class_logits(x.double(), weight.double(), bias.double(), upsample), 1e-3)
    assert torch.equal(labels[clear], ref_labels[clear])
    torch.testing.assert_close(probs.double()[clear], ref_probs[clear], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_localize(dtype, poisoned):
    torch.manual_seed(3)
    n, c, h, w, k = 4, 512, 28, 28, 1000
    x = _gen((n, c, h, w), dtype)
    weight, bias = _gen((k, c, 1, 1), dtype, c ** -0.5), _gen((k,), dtype)
    bias[7] += 8  # a clear top-1 class, so the box is not empty
    logits, labels, scores, boxes = drn_kernels.localize(x, weight, bias, threshold=0.5, backend=BACKEND)
    r_logits, r_labels, r_scores, r_boxes = reference.localize(x.double(), weight.double(), bias.double(), 0.5, 8)
    torch.testing.assert_close(logits.double(), r_logits, atol=2e-3, rtol=2e-3)
    assert (labels == r_labels).float().mean() > 0.999
    torch.testing.assert_close(scores.double(), r_scores, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(boxes, r_boxes.float())
