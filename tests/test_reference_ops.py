"""The reference ops against float64 compositions of plain torch ops, written out independently here."""
import pytest
import torch
import torch.nn.functional as F

import drn_kernels
from drn_kernels import reference
from margins import clear_top2

pytestmark = pytest.mark.unit


def _conv_case(n, c, k, h, w, r, stride, pad, dil, channels_last, residual, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, r, r, generator=g) / (c * r * r) ** 0.5
    b = torch.randn(k, generator=g)
    p = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
    q = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
    res = torch.randn(n, k, p, q, generator=g) if residual else None
    return x, wt, b, res


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("r,stride,pad,dil", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4),
                                             (7, 2, 3, 1), (1, 2, 0, 1)])
@pytest.mark.parametrize("residual,relu", [(False, True), (True, True), (True, False)])
def test_conv_bn_act_reference(n, channels_last, r, stride, pad, dil, residual, relu):
    x, w, b, res = _conv_case(n, 5, 7, 11, 13, r, stride, pad, dil, channels_last, residual)
    y = drn_kernels.conv_bn_act(x, w, b, stride=stride, padding=pad, dilation=dil, residual=res, relu=relu,
                                backend="reference")
    expect = F.conv2d(x.double(), w.double(), stride=stride, padding=pad, dilation=dil) + b.double()[:, None, None]
    if residual:
        expect = expect + res.double()
    if relu:
        expect = expect.clamp_min(0)
    assert y.dtype == x.dtype and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), expect, rtol=1e-5, atol=1e-5)


def test_fold_bn_matches_conv_then_bn():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 9, 3, padding=2, dilation=2, bias=False)
    bn = torch.nn.BatchNorm2d(9).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    w, b = drn_kernels.fold_bn(conv.weight, bn)
    x = torch.randn(2, 6, 10, 12, dtype=torch.float64)
    expect = F.batch_norm(F.conv2d(x, conv.weight.double(), padding=2, dilation=2), bn.running_mean.double(),
                          bn.running_var.double(), bn.weight.double(), bn.bias.double(), False, 0.0, bn.eps)
    got = F.conv2d(x, w.double(), b.double(), padding=2, dilation=2)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="bn"):
        drn_kernels.fold_bn(conv.weight, torch.nn.ReLU())
    with pytest.raises(ValueError, match="weight"):
        drn_kernels.fold_bn(torch.randn(4, 6, 3, 3), bn)


def _upsample8_by_formula(low: torch.Tensor) -> torch.Tensor:
    """Output pixel o takes cell (o+4)//8 with weight k/8 + 1/16 and the cell before with 15/16 - k/8,
    k = (o+4) % 8; cells outside the map contribute zero. Separable in rows and columns."""
    def axis_matrix(size):
        out = torch.zeros(8 * size, size, dtype=torch.float64)
        for o in range(8 * size):
            j, k = (o + 4) // 8, (o + 4) % 8
            if j < size:
                out[o, j] += k / 8 + 1 / 16
            if 0 <= j - 1 < size:
                out[o, j - 1] += 15 / 16 - k / 8
        return out
    rows, cols = axis_matrix(low.shape[-2]), axis_matrix(low.shape[-1])
    return torch.einsum("ph,nkhw,qw->nkpq", rows, low.double(), cols)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (7, 4)])
def test_upsample8_equals_formula(h, w):
    low = torch.randn(2, 3, h, w, dtype=torch.float64)
    torch.testing.assert_close(reference.upsample8(low), _upsample8_by_formula(low))


@pytest.mark.parametrize("k", [1, 2, 19, 1000])
@pytest.mark.parametrize("upsample", [1, 8])
@pytest.mark.parametrize("n,channels_last", [(0, False), (1, True), (2, False)])
def test_class_head_reference(k, upsample, n, channels_last):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(n, 6, 5, 7, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(k, 6, 1, 1, generator=g), torch.randn(k, generator=g)
    labels, probs = drn_kernels.class_head(x, w, b, upsample=upsample, backend="reference")
    logits = torch.einsum("nchw,kc->nkhw", x.double(), w.double().flatten(1)) + b.double()[:, None, None]
    if upsample == 8:
        logits = _upsample8_by_formula(logits)
    p = torch.softmax(logits, dim=1)
    assert labels.shape == (n, 5 * upsample, 7 * upsample) and labels.dtype == torch.int64
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.double(), p.max(dim=1).values, rtol=1e-5, atol=1e-6)
    clear = clear_top2(logits, 1e-4)
    assert torch.equal(labels[clear], logits.argmax(dim=1)[clear])


def test_class_head_ties_and_nan_follow_torch_argmax():
    x = torch.ones(1, 2, 1, 3)
    w = torch.zeros(4, 2, 1, 1)
    b = torch.tensor([0.0, 1.0, 1.0, 0.5])        # tie between classes 1 and 2: first wins
    labels, probs = drn_kernels.class_head(x, w, b, backend="reference")
    assert labels.flatten().tolist() == [1, 1, 1]
    b_nan = torch.tensor([0.0, 1.0, float("nan"), float("nan")])  # a NaN wins, the first NaN
    labels, probs = drn_kernels.class_head(x, w, b_nan, backend="reference")
    assert labels.flatten().tolist() == [2, 2, 2] and torch.isnan(probs).all()


@pytest.mark.parametrize("n", [0, 1, 3])
def test_localize_reference(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 4, 6, 9, generator=g)
    w, b = torch.randn(5, 4, 1, 1, generator=g), torch.randn(5, generator=g)
    logits, labels, scores, boxes = drn_kernels.localize(x, w, b, threshold=0.3, stride=8, backend="reference")
    maps = torch.einsum("nchw,kc->nkhw", x.double(), w.double().flatten(1)) + b.double()[:, None, None]
    torch.testing.assert_close(logits.double(), maps.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    probs = torch.softmax(maps, dim=1)
    assert torch.equal(labels, probs.argmax(dim=1))
    torch.testing.assert_close(scores.double(), probs.max(dim=1).values, rtol=1e-5, atol=1e-6)
    for i in range(n):
        top = int(maps[i].mean(dim=(1, 2)).argmax())
        cells = [(r, c) for r in range(6) for c in range(9)
                 if labels[i, r, c] == top and scores[i, r, c] > 0.3]
        if not cells:
            assert boxes[i].tolist() == [-1, -1, -1, -1]
        else:
            rs, cs = zip(*cells)
            assert boxes[i].tolist() == [min(cs) * 8, min(rs) * 8, (max(cs) + 1) * 8, (max(rs) + 1) * 8]


def test_localize_no_qualifying_cell_gives_minus_one():
    x = torch.randn(2, 3, 4, 4)
    out = drn_kernels.localize(x, torch.randn(6, 3, 1, 1), torch.randn(6), threshold=1.0, backend="reference")
    assert (out[3] == -1).all()
