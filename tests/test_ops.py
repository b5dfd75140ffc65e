"""Op registration: torch.library opcheck, torch.compile(fullgraph=True), backend choice, bad input."""
import warnings

import pytest
import torch

import drn_kernels
from drn_kernels import _backends
from helpers import backend_params, require_backend

pytestmark = pytest.mark.unit


def _conv_sample(n=2, channels_last=False):
    x = torch.randn(n, 5, 9, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randn(7, 5, 3, 3), torch.randn(7)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_opcheck_conv_bn_act(channels_last, residual):
    x, w, b = _conv_sample(channels_last=channels_last)
    res = torch.randn(2, 7, 5, 6) if residual else None
    torch.library.opcheck(torch.ops.drn.conv_bn_act.default,
                          (x, w, b, [2, 2], [2, 2], [2, 2], res, True, "reference"))


@pytest.mark.parametrize("label_dtype", [torch.int32, torch.uint8])
@pytest.mark.parametrize("upsample", [1, 8])
def test_opcheck_class_head(upsample, label_dtype):
    x = torch.randn(2, 6, 3, 5)
    torch.library.opcheck(torch.ops.drn.class_head.default,
                          (x, torch.randn(4, 6, 1, 1), torch.randn(4), upsample, label_dtype, "reference"))


@pytest.mark.parametrize("backend", backend_params("reference", "cpu", "triton", "cuda-sim"))
@pytest.mark.parametrize("upsample", [1, 8])
def test_one_byte_labels_equal_int64_labels_on_every_backend(backend, upsample):
    """label_dtype=torch.uint8 at K = 256 (the most one byte holds): the same labels as int64, class 255 included,
    and the same probabilities."""
    require_backend(backend)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 6, 2, 3, generator=g)
    weight = torch.randn(256, 6, 1, 1, generator=g)
    bias = torch.randn(256, generator=g)
    bias[255] += 6.0  # the last class wins at most pixels, so the top byte value is exercised
    labels8, probs8 = drn_kernels.class_head(x, weight, bias, upsample=upsample, label_dtype=torch.uint8,
                                             backend=backend)
    labels64, probs64 = drn_kernels.class_head(x, weight, bias, upsample=upsample, backend=backend)
    assert labels8.dtype == torch.uint8 and labels64.dtype == torch.int64
    assert torch.equal(labels8.long(), labels64) and (labels64 == 255).any()
    assert torch.equal(probs8, probs64)


def test_opcheck_localize():
    x = torch.randn(2, 6, 3, 5)
    torch.library.opcheck(torch.ops.drn.localize.default,
                          (x, torch.randn(4, 6, 1, 1), torch.randn(4), 0.25, 8, "reference"))


def test_torch_compile_fullgraph():
    x, w, b = _conv_sample()
    hw, hb = torch.randn(3, 7, 1, 1), torch.randn(3)

    def f(x):
        y = drn_kernels.conv_bn_act(x, w, b, padding=1, backend="reference")
        y = drn_kernels.conv_bn_act(y, w.new_ones(7, 7, 1, 1), b, residual=y, relu=False, backend="reference")
        labels, probs = drn_kernels.class_head(y, hw, hb, upsample=8, backend="reference")
        logits, cells, scores, boxes = drn_kernels.localize(y, hw, hb, threshold=0.5, backend="reference")
        return labels, probs, logits, boxes

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, expect in zip(compiled(x), f(x)):
        torch.testing.assert_close(got, expect)


# A fresh process whose first use of the ops is inside torch.compile(fullgraph=True): the backend choice (which
# loads the extension under a lock, imports the Triton op modules) must stay out of the traced region.
_FIRST_USE_COMPILED = """
import sys, torch
import drn_kernels
from drn_kernels._build import extension as _extension
backend = sys.argv[1]
assert not _extension._tried, "the extension was loaded before the compiled call"
x = torch.randn(1, 8, 9, 9).contiguous(memory_format=torch.channels_last)
w, b = torch.randn(8, 8, 3, 3) * 0.2, torch.randn(8)
labels_w, labels_b = torch.randn(3, 8, 1, 1), torch.randn(3)

def f(x):
    y = drn_kernels.conv_bn_act(x, w, b, padding=1, backend=backend)
    return y, drn_kernels.class_head(y, labels_w, labels_b, backend=backend)

(y, (labels, probs)) = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
torch.testing.assert_close(y, drn_kernels.conv_bn_act(x, w, b, padding=1, backend="reference"))
ref_labels, ref_probs = drn_kernels.class_head(y, labels_w, labels_b, backend="reference")
assert torch.equal(labels, ref_labels)
torch.testing.assert_close(probs, ref_probs)
print("compiled first use ok")
"""


@pytest.mark.parametrize("backend", backend_params("cpu", "triton"))
def test_torch_compile_fullgraph_as_first_use_in_a_fresh_process(backend):
    """cpu: the C++ kernels; triton: the interpreter without a GPU (TRITON_INTERPRET=1 comes from conftest)."""
    import subprocess
    import sys
    from pathlib import Path

    require_backend(backend)
    run = subprocess.run([sys.executable, "-c", _FIRST_USE_COMPILED, backend], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert run.returncode == 0 and "compiled first use ok" in run.stdout, run.stderr[-3000:]


def test_triton_availability_is_decided_at_import():
    """Asking whether triton is installed is traceable (no importlib.util.find_spec per call)."""
    compiled = torch.compile(lambda x: x + 1 if _backends.triton_importable() else x - 1, fullgraph=True,
                             backend="eager")
    expect = 1.0 if _backends._TRITON_IMPORTABLE else -1.0
    assert compiled(torch.zeros(1)).item() == expect


def test_empty_batch_returns_empty():
    x, w, b = _conv_sample(n=0)
    y = drn_kernels.conv_bn_act(x, w, b, backend="reference")
    assert y.shape == (0, 7, 7, 9)
    labels, probs = drn_kernels.class_head(x, torch.randn(3, 5, 1, 1), torch.randn(3), upsample=8,
                                           backend="reference")
    assert labels.shape == (0, 72, 88) and probs.shape == (0, 72, 88)


BAD_CONV = [
    (dict(x=torch.randn(5, 9, 11)), ValueError, "x must have rank 4"),
    (dict(x=torch.randn(1, 5, 9, 11).int()), TypeError, "x must have dtype"),
    (dict(weight=torch.randn(7, 4, 3, 3)), ValueError, "weight must have shape"),
    (dict(weight=torch.randn(7, 5, 3, 3).double()), TypeError, "weight has dtype"),
    (dict(bias=torch.randn(6)), ValueError, "bias must have shape"),
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(stride=(1, -2)), ValueError, "stride must be positive"),
    (dict(dilation=0), ValueError, "dilation must be positive"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(stride=1.5), TypeError, "stride must be an int"),
    (dict(dilation=8), ValueError, "empty kernel window"),
    (dict(residual=torch.randn(1, 7, 9, 11)), ValueError, "residual must have the output's shape"),
    (dict(residual=torch.randn(1, 7, 7, 9).half()), TypeError, "residual has dtype"),
    (dict(relu=1), TypeError, "relu must be a bool"),
    (dict(backend="tpu"), ValueError, "backend must be one of"),
    (dict(x="image"), TypeError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize("override,exc,message", BAD_CONV)
def test_conv_bn_act_bad_input(override, exc, message):
    args = dict(x=torch.randn(1, 5, 9, 11), weight=torch.randn(7, 5, 3, 3), bias=torch.randn(7), stride=1,
                padding=0, dilation=1, residual=None, relu=True, backend="reference")
    args.update(override)
    with pytest.raises(exc, match=message):
        drn_kernels.conv_bn_act(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


BAD_HEAD = [
    (dict(weight=torch.randn(3, 4, 1, 1)), ValueError, "weight must have shape"),
    (dict(weight=torch.randn(3, 6, 3, 3)), ValueError, "weight must have shape"),
    (dict(bias=torch.randn(2)), ValueError, "bias must have shape"),
    (dict(upsample=4), ValueError, "upsample must be 1 or 8"),
    (dict(label_dtype=torch.float32), TypeError, "label_dtype"),
    (dict(weight=torch.randn(300, 6, 1, 1), bias=torch.randn(300), label_dtype=torch.uint8), ValueError,
     "label_dtype"),
    (dict(x=torch.randn(1, 0, 3, 3), weight=torch.randn(3, 0, 1, 1)), ValueError, "at least one channel"),
]


@pytest.mark.parametrize("override,exc,message", BAD_HEAD)
def test_class_head_bad_input(override, exc, message):
    args = dict(x=torch.randn(1, 6, 3, 3), weight=torch.randn(3, 6, 1, 1), bias=torch.randn(3), upsample=1,
                label_dtype=torch.int64, backend="reference")
    args.update(override)
    with pytest.raises(exc, match=message):
        drn_kernels.class_head(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


@pytest.mark.parametrize("threshold,stride,message", [(float("nan"), 8, "threshold"), ("0.5", 8, "threshold"),
                                                      (0.5, 0, "stride"), (0.5, 2.0, "stride")])
def test_localize_bad_input(threshold, stride, message):
    with pytest.raises(ValueError, match=message):
        drn_kernels.localize(torch.randn(1, 6, 3, 3), torch.randn(3, 6, 1, 1), torch.randn(3),
                             threshold=threshold, stride=stride, backend="reference")


def test_named_backend_that_cannot_run_says_why():
    x, w, b = _conv_sample()
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        drn_kernels.conv_bn_act(x, w, b, backend="cuda")


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_backends, "why_unavailable",
                        lambda name, device: None if name == "reference" else "not built in this test")
    monkeypatch.setattr(_backends, "_warned_fallback", set())
    x, w, b = _conv_sample()
    with pytest.warns(RuntimeWarning, match="falling back"):
        drn_kernels.conv_bn_act(x, w, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drn_kernels.conv_bn_act(x, w, b)  # only once


@pytest.mark.build
def test_available_backends_reports_reasons():
    report = drn_kernels.available_backends("cpu")
    assert report["reference"] is None
    assert set(report) == {"triton", "cuda", "cpu", "cuda-sim", "reference"}
    assert isinstance(report["cuda"], str)
