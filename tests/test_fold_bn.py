"""BatchNorm folding: drn_kernels.fold_bn with and without a conv bias, and both of its users (drn.fuse and
drn.apps.export's fold_batchnorm), against conv -> BatchNorm2d computed by torch in float64."""
import copy

import pytest
import torch
import torch.nn.functional as F

import drn
import drn_kernels
from drn.apps.export import fold_batchnorm

pytestmark = pytest.mark.unit


def _conv_bn(bias: bool, seed: int = 0, k: int = 6, c: int = 5):
    """A conv (optionally biased) and an eval-mode BN with running stats and affine terms far from identity."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(c, k, 3, padding=1, bias=bias)
    bn = torch.nn.BatchNorm2d(k, eps=1e-3).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        if bias:
            conv.bias.copy_(torch.randn(k, generator=g) * 2 + 1)  # mostly positive: a sign error shows
        bn.running_mean.copy_(torch.randn(k, generator=g))
        bn.running_var.copy_(torch.rand(k, generator=g) * 3 + 0.2)
        bn.weight.copy_(torch.randn(k, generator=g))  # negative gammas too
        bn.bias.copy_(torch.randn(k, generator=g))
    return conv, bn


def _conv_then_bn64(conv, bn, x):
    conv64, bn64 = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    return bn64(conv64(x.double()))


@pytest.mark.parametrize("bias", [False, True])
def test_fold_bn_equals_conv_then_bn(bias):
    conv, bn = _conv_bn(bias)
    x = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = _conv_then_bn64(conv, bn, x)
    w, b = drn_kernels.fold_bn(conv.weight.double(), bn, conv_bias=None if conv.bias is None else conv.bias.double())
    assert w.dtype == b.dtype == torch.float64
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1), want, rtol=1e-12, atol=1e-12)
    # the DESIGN signature fold_bn(weight, bn) still folds a bias-free conv
    if not bias:
        w2, b2 = drn_kernels.fold_bn(conv.weight.double(), bn)
        assert torch.equal(w2, w) and torch.equal(b2, b)
    # float32 in, float32 out, folded in float64 then rounded once
    w32, b32 = drn_kernels.fold_bn(conv.weight, bn, conv_bias=conv.bias)
    assert w32.dtype == b32.dtype == torch.float32
    torch.testing.assert_close(b32, b.float(), rtol=0, atol=0)


def test_fold_bn_rejects_a_mis_shaped_conv_bias():
    conv, bn = _conv_bn(True)
    with pytest.raises(ValueError, match="conv_bias"):
        drn_kernels.fold_bn(conv.weight, bn, conv_bias=torch.zeros(5))


def test_export_folds_a_biased_conv():
    conv, bn = _conv_bn(True, seed=2)
    folded = fold_batchnorm(torch.nn.Sequential(conv, bn))
    assert isinstance(folded[1], torch.nn.Identity)
    x = torch.randn(1, 5, 6, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(folded.double()(x.double()), _conv_then_bn64(conv, bn, x), rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_fuse_folds_a_biased_conv():
    """drn.fuse of a DRN whose stem conv has a bias (none has one as built): the fused stem equals conv -> BN."""
    model = drn.build("drn_d_22", num_classes=3).eval()
    stem_conv, stem_bn = model.layer0[0], model.layer0[1]
    conv, bn = _conv_bn(True, seed=4, k=stem_conv.out_channels, c=stem_conv.in_channels)
    biased = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 7, padding=3, bias=True)
    biased.weight.copy_(torch.randn(biased.weight.shape, generator=torch.Generator().manual_seed(5)) * 0.1)
    biased.bias.copy_(conv.bias)
    model.layer0[0] = biased
    stem_bn.load_state_dict(bn.state_dict())
    fused = drn.fuse(model, backend="reference")
    x = torch.randn(1, 3, 9, 10, generator=torch.Generator().manual_seed(6))
    want = torch.relu(_conv_then_bn64(biased, stem_bn, x))
    torch.testing.assert_close(fused.backbone[0](x).double(), want, rtol=1e-5, atol=1e-5)
