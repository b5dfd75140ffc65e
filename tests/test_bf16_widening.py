"""bfloat16 fused models on CPUs without the bfloat16 GEMM (drn_kernels.prepared.widens_bfloat16).

There the fused model widens its bfloat16 input once, runs every conv in float32 on float32 copies of its
bfloat16 weights and rounds its features to bfloat16 once. Checked bit for bit against the float32 model holding
the same (bfloat16-valued) weights, whatever this CPU offers: the rule is forced on where the CPU has the GEMM
(and checked to be off on every CPU for float32, and on exactly where the GEMM is missing).
"""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

import drn
import drn_kernels
from drn.fused import FusedConv
from drn.zoo.models import global_avg_pool
from drn_kernels import prepared
from helpers import require_backend

pytestmark = pytest.mark.build

BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def _cpu():
    require_backend("cpu")


@pytest.fixture
def widen(monkeypatch):
    """The widening rule on, for bfloat16, whatever this CPU's GEMM offers."""
    monkeypatch.setattr(prepared, "widens_bfloat16", lambda dtype: dtype == BF16)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _narrow_d22(task="classify"):
    torch.manual_seed(0)
    kwargs = {"num_classes": 5} if task == "segment" else {}
    model = drn.build("drn_d_22", task=task, **kwargs)
    return model


def test_rule_follows_the_bf16_gemm():
    assert not prepared.widens_bfloat16(torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert prepared.widens_bfloat16(BF16) == (not torch.ops.drn.cpu_bf16_gemm())


def test_model_equals_the_float32_model_on_the_same_weights(widen):
    bf = drn.fuse(_narrow_d22(), backend="cpu", dtype=BF16)
    convs = [m for m in bf.modules() if isinstance(m, FusedConv)]
    assert convs and all(c._conv.widened and c.weight.dtype == BF16 for c in convs)
    assert all(v.dtype == BF16 for v in bf.state_dict().values() if v.is_floating_point())
    f32 = copy.deepcopy(bf).float()  # the same bfloat16 values, exactly, in float32: not widened
    assert not any(m._conv.widened for m in f32.modules() if isinstance(m, FusedConv))
    xb = _x(2, 3, 67, 45).to(BF16)
    with torch.no_grad():
        feats = bf.features(xb)
        assert feats.dtype == BF16 and feats.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(feats, f32.features(xb.float()).to(BF16))
        logits = bf(xb)
        assert logits.dtype == BF16
        expected = torch.nn.functional.linear(
            global_avg_pool(feats).flatten(1), bf.head_weight, bf.head_bias)
        assert torch.equal(logits, expected)
        assert bf(xb[:0]).shape == (0, 1000)


def test_back_to_float32_and_again(widen):
    bf = drn.fuse(_narrow_d22(), backend="cpu", dtype=BF16)
    xb = _x(1, 3, 40, 52).to(BF16)
    with torch.no_grad():
        before = bf(xb)
        bf.float()
        assert not any(m._conv.widened for m in bf.modules() if isinstance(m, FusedConv))
        out32 = bf(xb.float())
        assert out32.dtype == torch.float32
        bf.to(BF16)
        assert all(m._conv.widened for m in bf.modules() if isinstance(m, FusedConv))
        assert torch.equal(bf(xb), before)


def test_segmenter_banded_features_equal_the_float32_model(widen):
    """The memory-frugal path (row bands) widens once too: its features are the float32 model's banded features,
    rounded once; predict() runs on them."""
    seg = drn.fuse(_narrow_d22("segment"), backend="cpu", dtype=BF16)
    f32 = copy.deepcopy(seg).float()
    xb = _x(1, 3, 75, 61, seed=3).to(BF16)
    for m in (seg, f32):
        m.low_memory, m.band_bytes, m.stem_band_bytes = True, 4 << 10, 16 << 10  # several bands at this size
    with torch.no_grad():
        feats = seg._features_low_memory(xb, list(seg.backbone))
        assert torch.equal(feats, f32._features_low_memory(xb.float(), list(f32.backbone)).to(BF16))
        labels, probs = seg.predict(xb)
    assert labels.shape == probs.shape == (1, 75, 61)


@pytest.mark.parametrize("into_residual", [False, True])
def test_layer_takes_bfloat16_and_rounds_once(widen, into_residual):
    w, b = _x(64, 64, 3, 3, seed=1).mul_(0.05).to(BF16), _x(64, seed=2).to(BF16)
    conv = FusedConv("c", w, b, (1, 1), (2, 2), (2, 2), True, "cpu")
    assert conv._conv.widened
    x = _x(1, 64, 19, 23, seed=4).to(BF16).contiguous(memory_format=torch.channels_last)
    res = _x(1, 64, 19, 23, seed=5).to(BF16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        wide = conv(x.float(), res.float())  # the float32 path, on the algorithm this conv chose for the shape
        exact = drn_kernels.conv_bn_act(x.double(), w.double(), b.double(), padding=2, dilation=2,
                                        residual=res.double(), backend="reference")
        torch.testing.assert_close(wide.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
        expected = wide.to(BF16)
        if into_residual:
            out = conv.forward_into_residual(x, res)
            assert out is res
        else:
            out = conv(x, res)
    assert out.dtype == BF16 and torch.equal(out, expected)
    with pytest.raises(TypeError, match="residual"):
        conv(x, res.float())


def test_said_once(monkeypatch):
    if torch.ops.drn.cpu_bf16_gemm():
        pytest.skip("this CPU has the bfloat16 GEMM: bfloat16 is not widened here (the rule itself is checked above)")
    monkeypatch.setattr(prepared, "_said_widened", False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        drn.fuse(_narrow_d22(), backend="cpu", dtype=BF16)
        drn.fuse(_narrow_d22(), backend="cpu", dtype=BF16)
    assert len([w for w in said if "run in float32" in str(w.message)]) == 1


@pytest.mark.parametrize("algorithm", ["winograd", "direct"])
def test_layer_hostile_inputs(widen, cpu_settings, algorithm):
    """Strided and expanded views, NaN/±inf, inference_mode and an in-place write to the model's weight handle: the
    widened layer gives its float32 path's answer on the materialised inputs, rounded once (Winograd and oneDNN,
    each forced: a timed choice would test whichever won)."""
    cpu_settings.set("DRN_CPU_CONV", algorithm)
    w, b = _x(64, 64, 3, 3, seed=6).mul_(0.05).to(BF16), _x(64, seed=7).to(BF16)
    conv = FusedConv("c", w, b, (1, 1), (1, 1), (1, 1), True, "cpu")
    base = _x(1, 64, 26, 34, seed=8).to(BF16)
    base[0, 3, 4, 7], base[0, 9, 2, 2], base[0, 11, 20, 30] = float("nan"), float("inf"), -float("inf")
    x = base[:, :, ::2, 1:]                                     # strided (even rows, from column 1): all three kept
    res = _x(1, 64, 1, 1, seed=9).to(BF16).expand(1, 64, 13, 33)  # expanded
    with torch.no_grad():
        expected = conv(x.contiguous().float(), res.contiguous().float()).to(BF16)
        conv.weight.mul_(2)  # a copy: the layer's weights stay as they were
        with torch.inference_mode():
            out = conv(x, res)
    assert out.dtype == BF16 and torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())
    assert out.isnan().any()  # the NaN reached the output: nothing filtered it
    with pytest.raises(TypeError, match="residual has dtype"):
        conv(x, res.float())


def test_widened_model_takes_only_its_dtype(widen):
    """A widened bfloat16 model computes in float32 inside, yet, like any bfloat16 model, rejects float32 input with
    the ops' error naming x (instead of computing with its float32 weight copies)."""
    model = drn.fuse(_narrow_d22(), backend="cpu", dtype=BF16)
    x = _x(1, 3, 24, 40, seed=11)
    with pytest.raises(TypeError, match="x has dtype torch.float32"):
        model(x)
    assert model(x.to(BF16)).dtype == BF16


@pytest.mark.parametrize("saved_widened", [True, False])
def test_a_pickle_follows_the_loading_machines_rule(monkeypatch, saved_widened):
    """A bfloat16 fused model saved where the rule said one thing and loaded where it says the other computes as
    a model built there does (widened or not), not as the saving machine did."""
    monkeypatch.setattr(prepared, "widens_bfloat16", lambda dtype: saved_widened and dtype == BF16)
    model = drn.fuse(_narrow_d22(), backend="cpu", dtype=BF16)
    blob = io.BytesIO()
    torch.save(model, blob)
    monkeypatch.setattr(prepared, "widens_bfloat16", lambda dtype: (not saved_widened) and dtype == BF16)
    blob.seek(0)
    loaded = torch.load(blob, weights_only=False)
    here = drn.fuse(_narrow_d22(), backend="cpu", dtype=BF16)
    convs = [m._conv for m in loaded.modules() if isinstance(m, FusedConv)]
    assert all(c.widened == (not saved_widened) for c in convs)
    x = _x(1, 3, 24, 40, seed=12).to(BF16)
    with torch.no_grad():
        assert torch.equal(loaded(x), here(x))
