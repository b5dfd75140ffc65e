"""Host work per conv: the checks run once per call signature, the Triton launcher derives its launch facts once
per signature, and a fused model runs under torch.compile(mode="reduce-overhead", fullgraph=True) with the same
answer (on a GPU that mode replays CUDA graphs; docs/launch-cost.md). The microseconds themselves are measured by
`python -m benchmarks.launch_cost`, not asserted here."""
import pytest
import torch

import drn
import drn_kernels
from drn_kernels import _checks
from helpers import require_backend

pytestmark = pytest.mark.unit


@pytest.fixture
def counted_checks(monkeypatch):
    """Counts the full conv_bn_act checks; starts from an empty signature cache."""
    calls = []
    real = _checks._check_conv_bn_act

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(_checks, "_check_conv_bn_act", counting)
    monkeypatch.setattr(_checks, "_PASSED", {})
    return calls


def _conv(n=1, c=8, hw=5, k=4):
    g = torch.Generator().manual_seed(n * 100 + hw)
    return (torch.randn(n, c, hw, hw, generator=g), torch.randn(k, c, 3, 3, generator=g),
            torch.randn(k, generator=g))


def test_checks_run_once_per_signature(counted_checks):
    x, w, b = _conv()
    y1 = drn_kernels.conv_bn_act(x, w, b, padding=1, backend="reference")
    y2 = drn_kernels.conv_bn_act(x.clone(), w, b, padding=1, backend="reference")  # same signature, new tensors
    assert len(counted_checks) == 1 and torch.equal(y1, y2)
    drn_kernels.conv_bn_act(x, w, b, padding=2, backend="reference")  # new geometry
    x2, _, _ = _conv(n=2)
    drn_kernels.conv_bn_act(x2, w, b, padding=1, backend="reference")  # new shape
    drn_kernels.conv_bn_act(x, w, b, padding=1, relu=False, backend="reference")
    drn_kernels.conv_bn_act(x.double(), w.double(), b.double(), padding=1, backend="reference")  # new dtype
    assert len(counted_checks) == 5


def test_a_failing_signature_is_never_remembered(counted_checks):
    x, w, b = _conv()
    for _ in range(2):
        with pytest.raises(ValueError, match="bias"):
            drn_kernels.conv_bn_act(x, w, b[:3], padding=1, backend="reference")
        with pytest.raises(TypeError, match="relu"):
            drn_kernels.conv_bn_act(x, w, b, padding=1, relu=1, backend="reference")
    assert len(counted_checks) == 4
    # a valid call of the same shapes, then an invalid one that differs only in what the signature holds
    drn_kernels.conv_bn_act(x, w, b, padding=1, backend="reference")
    with pytest.raises(ValueError, match="residual"):
        drn_kernels.conv_bn_act(x, w, b, padding=1, residual=torch.zeros(1, 4, 4, 4), backend="reference")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        drn_kernels.conv_bn_act(x.numpy(), w, b, padding=1, backend="reference")


def test_tensor_subclasses_are_checked_every_time(counted_checks):
    class Marked(torch.Tensor):
        pass

    x, w, b = _conv()
    xm = x.as_subclass(Marked)
    for _ in range(2):
        drn_kernels.conv_bn_act(xm, w, b, padding=1, backend="reference")
    assert len(counted_checks) == 2


def test_triton_launch_facts_follow_force_int64(monkeypatch):
    conv_mod = pytest.importorskip("drn_kernels.triton.conv_bn_act")
    require_backend("triton")
    seen = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **flags: seen.append(flags["USE_INT64"])

    monkeypatch.setattr(conv_mod, "launcher", lambda kernel: Recorder())
    monkeypatch.setattr(conv_mod, "_FACTS", {})
    x, w, b = _conv(hw=6)
    drn_kernels.conv_bn_act(x, w, b, padding=1, backend="triton")
    monkeypatch.setattr("drn_kernels.triton.common._force_int64", True)
    drn_kernels.conv_bn_act(x, w, b, padding=1, backend="triton")
    monkeypatch.setattr("drn_kernels.triton.common._force_int64", False)
    drn_kernels.conv_bn_act(x, w, b, padding=1, backend="triton")
    assert seen == [False, True, False] and len(conv_mod._FACTS) == 2


def _small_classifier():
    torch.manual_seed(0)
    return drn.build("drn_d_22", num_classes=5).eval()


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.parametrize("grad_mode", ["inference_mode", "no_grad"])
def test_fused_model_under_reduce_overhead_fullgraph_cpu(grad_mode):
    require_backend("cpu")
    fused = drn.fuse(_small_classifier(), backend="cpu")
    x = torch.randn(1, 3, 40, 36)
    with getattr(torch, grad_mode)():
        eager = fused(x)
        torch._dynamo.reset()
        compiled = torch.compile(fused, mode="reduce-overhead", fullgraph=True)
        first, second = compiled(x), compiled(x)
    # the convs are the same kernels on the same prepared weights; inductor compiles the pooling + linear head
    # itself, which rounds differently in the last bits
    scale = eager.abs().max().item()
    torch.testing.assert_close(first, eager, rtol=0, atol=1e-5 * scale)
    assert torch.equal(second, first)


def test_fused_backbone_under_reduce_overhead_fullgraph_triton():
    """The interpreter is slow: the stem and the first two levels of drn_d_22 (5 convs) on 1x3x12x12."""
    require_backend("triton")
    fused = drn.fuse(_small_classifier(), backend="triton")
    stem = fused.backbone[:3]
    x = torch.randn(1, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = stem(x)
        torch._dynamo.reset()
        compiled = torch.compile(stem, mode="reduce-overhead", fullgraph=True)
        out = compiled(x)
    assert torch.equal(out, eager)
