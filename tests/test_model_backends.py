"""Every DRN family through the kernel backends: classify, segment predict and localize of the fused model against
the unfused one, on reference, cpu, triton (interpreter off a GPU) and cuda-sim.

The interpreter and the simulator run a conv thousands of times slower than a compiled kernel, so the models here
are the zoo's structures at narrow widths (drn.zoo.models' own classes and blocks, channels 4-32), on 1x3x24x32:
DRN-A with its max-pool stem and Bottlenecks (a dilated block after the undilated first one), DRN-B (residual kept
in levels 7-8), DRN-C with drn_c_58's Bottlenecks and its level 7 (a block without residual whose projection the
reference computes and discards), DRN-D (plain conv levels). The full-width zoo is covered on the reference and cpu
backends by tests/test_fused.py. The heads are set so the image's top class, and most pixels' label, is the LAST
class: a head that never picks it fails here.
"""
import copy
import zlib

import pytest
import torch
from torch import nn

import drn
from helpers import backend_params, require_backend
from drn.zoo.heads import DRNSeg, as_localizer
from drn.zoo.models import DRN, DRN_A, BasicBlock, BatchNorm, Bottleneck, _init_weights
from margins import clear_top2

pytestmark = pytest.mark.unit

CLASSES = 5
SHAPE = (1, 3, 24, 32)  # 3 x 4 cells at output stride 8
RTOL = 1e-4  # fp32: max |fused - unfused| / max |unfused|


class _NarrowDRNA(DRN_A):
    """drn.zoo.models.DRN_A (conv1/bn1/relu/maxpool stem, levels 1-4 with levels 3-4 dilated) at narrow widths."""

    def __init__(self, block, layers, widths, num_classes):
        nn.Module.__init__(self)
        self.inplanes = widths[0]
        self.out_dim = widths[3] * block.expansion
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], dilation=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], dilation=4)
        self.fc = nn.Linear(self.out_dim, num_classes)
        _init_weights(self)


NARROW = (4, 4, 8, 8, 8, 8, 8, 8)
FAMILIES = {
    "drn_a_bottleneck": lambda: _NarrowDRNA(Bottleneck, [1, 1, 2, 1], (4, 4, 4, 8), CLASSES),
    "drn_b": lambda: DRN(BasicBlock, [1, 1, 1, 1, 1, 1, 1, 1], CLASSES, channels=NARROW, arch="B"),
    "drn_c_58_like": lambda: DRN(Bottleneck, [1, 1, 1, 1, 2, 1, 1, 1], CLASSES, channels=(4, 4, 4, 4, 4, 4, 8, 8),
                                 arch="C"),
    "drn_d": lambda: DRN(BasicBlock, [1, 1, 1, 1, 1, 1, 1, 1], CLASSES, channels=NARROW, arch="D"),
}
BACKENDS = ["reference", "cpu", "triton", "cuda-sim"]


@pytest.fixture(scope="module")
def models():
    """name -> (classify, segment, localize) unfused, with random BN statistics and heads whose top class is
    the last one."""
    built = {}
    for name, make in FAMILIES.items():
        torch.manual_seed(zlib.crc32(name.encode()))
        cls = make().eval()
        g = torch.Generator().manual_seed(1)
        for m in cls.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
        with torch.no_grad():
            feats = cls.features(_input())
            pooled = feats.mean(dim=(2, 3))[0]
            # fc: the last class wins the image by a clear margin
            cls.fc.weight.copy_(torch.randn(cls.fc.weight.shape, generator=g) * 0.1)
            fc = cls.fc.weight.reshape(CLASSES, -1)  # DRN's fc is a 1x1 conv, DRN-A's a Linear
            cls.fc.bias.zero_()
            cls.fc.bias[-1] = (fc @ pooled).max() - (fc[-1] @ pooled) + 1.0
        seg = DRNSeg(cls, CLASSES).eval()
        with torch.no_grad():
            seg.seg.weight.copy_(torch.randn(seg.seg.weight.shape, generator=g) * 0.5)
            seg.seg.bias.copy_(torch.randn(CLASSES, generator=g) * 0.1)
            low = nn.functional.conv2d(feats, seg.seg.weight, seg.seg.bias)
            # the last class wins about half of the cells
            seg.seg.bias[-1] += (low[:, :-1].amax(dim=1) - low[:, -1]).median()
        loc = as_localizer(copy.copy(cls))
        built[name] = (cls, seg, loc)
    return built


def _input():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("backend", backend_params(*BACKENDS))
@pytest.mark.parametrize("name", list(FAMILIES))
@torch.no_grad()
def test_family_on_backend(models, name, backend):
    require_backend(backend)
    cls, seg, loc = models[name]
    x = _input()
    last = CLASSES - 1

    ref = cls(x)
    out = drn.fuse(cls, backend=backend)(x)
    assert _rel(out, ref) <= RTOL
    assert ref.argmax(1).tolist() == out.argmax(1).tolist() == [last]

    labels, probs = drn.fuse(seg, backend=backend).predict(x)
    ref_labels, ref_probs = seg.predict(x)
    clear = clear_top2(seg(x)[0], 1e-3)
    assert clear.float().mean() > 0.9
    assert torch.equal(labels[clear], ref_labels[clear])
    torch.testing.assert_close(probs[clear], ref_probs[clear], rtol=1e-4, atol=1e-5)
    assert (ref_labels == last).any() and (labels[clear & (ref_labels == last)] == last).all()

    want = loc(x, threshold=0.0)
    got = drn.fuse(loc, backend=backend)(x, threshold=0.0)
    assert _rel(got.logits, want.logits) <= RTOL
    assert got.logits.argmax(1).tolist() == [last]
    maps = nn.functional.conv2d(loc.features(x), loc.fc.weight.reshape(CLASSES, -1, 1, 1), loc.fc.bias)
    maps_clear = clear_top2(maps, 1e-3)
    assert torch.equal(got.labels[maps_clear], want.labels[maps_clear])
    if maps_clear.all():
        assert torch.equal(got.boxes, want.boxes)
