"""No kernel ever computes with other weights than the current ones (no stale weight caches).

Every way a weight can change — an in-place write through `.data`, through a numpy view, to an inference tensor
under torch.inference_mode(), load_state_dict in and out of inference mode, .to(dtype), assigning a new
parameter — is followed by a call whose result must equal a fresh computation with the current weights: the
same backend on a fresh clone of the weights (bit for bit, so nothing can hide in a tolerance), and differ from
the result before the change (so the change really happened).

Op level: the ops are called with user tensors and keep nothing across calls (cpu: oneDNN and Winograd paths;
triton in the interpreter). Model level: drn.fused.FusedConv owns its weights and their prepared forms
(drn_kernels.prepared): its `weight`/`bias` and state_dict() are copies, so writing to them changes nothing, and
every route that does change them re-prepares — checked layer by layer against the public op on the current
weights, on a fused narrow DRN-D-22 with both Winograd and oneDNN layers, and on single FusedConvs on triton.
"""
from __future__ import annotations

import copy

import pytest
import torch

import drn
import drn_kernels
from drn.fused import FusedConv
from drn.zoo.models import DRN, BasicBlock
from drn_kernels.ops import cpu_conv_algorithm
from helpers import require_backend

pytestmark = pytest.mark.build

CL = torch.channels_last


def _available(backend):
    require_backend(backend)


def _rand(*shape, seed, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


# ---- op level -----------------------------------------------------------------------------------------------

# (backend, DRN_CPU_CONV, C=K, weight memory format, path the cpu backend takes)
OP_CASES = [
    pytest.param("cpu", "", 16, torch.contiguous_format, "onednn", id="cpu-onednn"),
    pytest.param("cpu", "", 16, CL, "onednn", id="cpu-onednn-cl"),
    pytest.param("cpu", "", 64, CL, "winograd", id="cpu-winograd-64ch"),
    pytest.param("cpu", "winograd", 8, torch.contiguous_format, "winograd", id="cpu-winograd-forced"),
    pytest.param("triton", "", 8, torch.contiguous_format, None, id="triton"),
    pytest.param("triton", "", 8, CL, None, id="triton-cl"),
]
ROUTES = ["data", "numpy", "inference_mode", "new_tensor"]


def _op(x, w, b, backend):
    return drn_kernels.conv_bn_act(x, w, b, padding=1, backend=backend)


def _mutate(w, route):
    """Negate w in place (or, for "new_tensor", return a new tensor of new values) by `route`."""
    if route == "data":
        w.data.mul_(-1)
    elif route == "numpy":
        view = w.numpy()
        view *= -1
    elif route == "inference_mode":
        with torch.inference_mode():
            w.mul_(-1)
    elif route == "new_tensor":
        shape, fmt = w.shape, CL if w.is_contiguous(memory_format=CL) and not w.is_contiguous() else None
        del w
        w = _rand(*shape, seed=99, scale=0.1)
        return w.contiguous(memory_format=fmt) if fmt is not None else w
    return w


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("backend, conv_env, c, fmt, path", OP_CASES)
def test_op_sees_every_weight_update(backend, conv_env, c, fmt, path, route, cpu_settings):
    _available(backend)
    cpu_settings.set("DRN_CPU_CONV", conv_env)
    x = _rand(1, c, 6, 7, seed=1).contiguous(memory_format=CL)
    b = _rand(c, seed=2)
    if route == "inference_mode":
        with torch.inference_mode():  # an inference tensor: no version counter at all
            w = _rand(c, c, 3, 3, seed=3, scale=0.1).contiguous(memory_format=fmt)
    else:
        w = _rand(c, c, 3, 3, seed=3, scale=0.1).contiguous(memory_format=fmt)
    if path is not None:
        assert cpu_conv_algorithm(x, w) == path
    before = _op(x, w, b, backend)
    assert torch.equal(_op(x, w, b, backend), before)  # a second call: whatever a cache would keep, it has
    w = _mutate(w, route)
    after = _op(x, w, b, backend)
    assert torch.equal(after, _op(x, w.clone(memory_format=torch.preserve_format), b, backend))
    assert not torch.equal(after, before)


@pytest.mark.parametrize("backend, conv_env, c, fmt, path", OP_CASES)
def test_op_sees_dtype_change(backend, conv_env, c, fmt, path, cpu_settings):
    """.to(dtype) makes a new tensor; the bf16 call must use its values, not a float32 form of the old ones."""
    _available(backend)
    cpu_settings.set("DRN_CPU_CONV", conv_env)
    x = _rand(1, c, 6, 7, seed=1).contiguous(memory_format=CL)
    w, b = _rand(c, c, 3, 3, seed=3, scale=0.1).contiguous(memory_format=fmt), _rand(c, seed=2)
    _op(x, w, b, backend)
    w16, b16, x16 = w.to(torch.bfloat16), b.to(torch.bfloat16), x.to(torch.bfloat16)
    got = _op(x16, w16, b16, backend)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, _op(x16, w16.clone(), b16, backend))


# ---- model level: a fused (narrow) DRN-D-22 on the cpu backend (Winograd and oneDNN layers) --------------------------

@pytest.fixture(scope="module")
def source():
    """A narrow DRN-D-22 (64 channels from level 3 on): Winograd layers (3x3 stride 1, >= 64 channels) and oneDNN
    ones (the stem, strided and 1x1 convs), small enough to fuse and re-prepare many times."""
    torch.manual_seed(0)
    model = DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], num_classes=5, channels=(16, 32, 64, 64, 64, 64, 64, 64),
                arch="D").eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _x(dtype=torch.float32):
    return _rand(1, 3, 32, 40, seed=7, dtype=dtype)


def _layers(fused, x):
    """(conv, its input, its residual, its output) of every FusedConv in one forward pass."""
    seen = []

    def hook(module, args, kwargs, out):
        residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
        seen.append((module, args[0], residual, out))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in fused.modules() if isinstance(m, FusedConv)]
    try:
        with torch.no_grad():
            out = fused(x)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def _check_fresh(fused, x, expect_paths=()):
    """Every layer's output equals the public op on the layer's input and its current weights, bit for bit.
    Returns the model's output."""
    out, layers = _layers(fused, x)
    paths = set()
    for conv, inp, residual, y in layers:
        geometry = [[v, v] if isinstance(v, int) else list(v) for v in (conv.stride, conv.padding, conv.dilation)]
        weight, bias = conv.weight, conv.bias
        if inp.dtype != weight.dtype:  # a bfloat16 model computed in float32 (prepared.widens_bfloat16)
            assert conv._conv.widened and inp.dtype == torch.float32, conv.name
            weight, bias = weight.float(), bias.float()
        chosen = conv._conv.algorithm(inp, *geometry) if conv._conv.on_cpu else None
        if chosen is not None and chosen.startswith("winograd"):  # the algorithm the layer chose, fresh weights
            form = torch.ops.drn.winograd_weight(weight, int(chosen[-1]))
            fresh = torch.ops.drn.conv_bn_act_prepared_native(inp, weight, bias, form, *geometry, residual,
                                                              conv.relu)
        else:
            fresh = drn_kernels.conv_bn_act(inp, weight, bias, stride=conv.stride, padding=conv.padding,
                                            dilation=conv.dilation, residual=residual, relu=conv.relu,
                                            backend=conv.backend)
        assert torch.equal(y, fresh), conv.name
        if chosen is not None:
            paths.add("winograd" if chosen.startswith("winograd") else chosen)
    assert set(expect_paths) <= paths, paths
    return out


def _negated(state):
    return {k: -v for k, v in state.items()}


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True)
def _winograd_pinned(cpu_settings):
    """Model-level tests check both kinds of prepared forms: Winograd pinned (DRN_CPU_CONV=winograd) so that the
    3x3 stride-1 convs take it whatever the measurement would choose (op-level tests set their own mode)."""
    cpu_settings.set("DRN_CPU_CONV", "winograd")


@pytest.fixture
def fused_cpu(source):
    _available("cpu")
    return drn.fuse(source, backend="cpu")


BOTH = ("winograd", "onednn")


def test_model_handles_are_copies(fused_cpu):
    """conv.weight / conv.bias / state_dict() values are copies: writing to them (in place, .data, numpy view,
    in inference mode) leaves the model's weights, and so its output, unchanged."""
    x = _x()
    state = fused_cpu.state_dict()
    out = _check_fresh(fused_cpu, x, BOTH)
    for conv in (m for m in fused_cpu.modules() if isinstance(m, FusedConv)):
        conv.weight.data.mul_(-1)
        conv.bias.numpy()[:] = 0
        with torch.inference_mode():
            conv.weight.mul_(2)
    for key, value in fused_cpu.state_dict().items():
        if key.endswith(".weight") and value.dim() == 4:
            view = value.numpy()
            view *= -1
    assert _state_equal(fused_cpu.state_dict(), state)
    assert torch.equal(_check_fresh(fused_cpu, x, BOTH), out)


@pytest.mark.parametrize("mode", ["plain", "inference_mode", "built_and_loaded_in_inference_mode"])
def test_model_load_state_dict(source, mode):
    _available("cpu")
    x = _x()
    if mode == "built_and_loaded_in_inference_mode":
        with torch.inference_mode():
            fused = drn.fuse(source, backend="cpu")
            before = fused(x)
    else:
        fused = drn.fuse(source, backend="cpu")
        before = _check_fresh(fused, x, BOTH)
    new = _negated(fused.state_dict())
    if mode == "plain":
        fused.load_state_dict(new)
    else:
        with torch.inference_mode():
            fused.load_state_dict(new)
            inside = fused(x)
    assert _state_equal(fused.state_dict(), new)
    after = _check_fresh(fused, x, BOTH)
    assert not torch.equal(after, before)
    if mode != "plain":
        assert torch.equal(inside, after)


def test_model_load_state_dict_refuses_wrong_shapes(fused_cpu):
    state = fused_cpu.state_dict()
    bad = dict(state, **{"backbone.0.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(RuntimeError, match="size mismatch for backbone.0.weight"):
        fused_cpu.load_state_dict(bad)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "backbone.0.bias"'):
        fused_cpu.load_state_dict({k: v for k, v in state.items() if k != "backbone.0.bias"})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "backbone.0.extra"'):
        fused_cpu.load_state_dict(dict(state, **{"backbone.0.extra": torch.zeros(1)}))
    assert _state_equal(fused_cpu.state_dict(), state)


def test_model_assign_parameter(fused_cpu):
    """Assigning a new weight (a Parameter or a tensor) copies its values in and re-prepares."""
    x = _x()
    before = _check_fresh(fused_cpu, x, BOTH)
    for conv in (m for m in fused_cpu.modules() if isinstance(m, FusedConv)):
        new = torch.nn.Parameter(-conv.weight)
        conv.weight = new
        new.data.mul_(3)  # the module took a copy: later writes to the assigned tensor do not reach it
        conv.bias = conv.bias * 0.5
    assert not torch.equal(_check_fresh(fused_cpu, x, BOTH), before)
    conv = fused_cpu.backbone[0]
    with pytest.raises(ValueError, match="must be a tensor of shape"):
        conv.weight = torch.zeros(1)


def test_model_to_dtype_and_back(fused_cpu):
    """.to(bfloat16) re-prepares both kinds of forms in bfloat16 (Winograd's GEMM in bfloat16 where the CPU has
    AVX512-BF16, in float32 elsewhere; oneDNN's in bfloat16, or float32 where oneDNN has no bfloat16 kernels),
    .to(float32) prepares them again."""
    x = _x()
    out32 = _check_fresh(fused_cpu, x, BOTH)
    fused_cpu.to(torch.bfloat16)
    assert all(c.weight.dtype == torch.bfloat16 for c in fused_cpu.modules() if isinstance(c, FusedConv))
    _check_fresh(fused_cpu, x.to(torch.bfloat16), BOTH)
    fused_cpu.load_state_dict(_negated(fused_cpu.state_dict()))
    fused_cpu.to(torch.float32)
    out = _check_fresh(fused_cpu, x, BOTH)
    assert not torch.equal(out, out32)


def test_model_backend_switch_and_copies(source):
    """A model fused on the reference backend, then switched to cpu, prepares then; deepcopy and pickling copy
    the weights (oneDNN copies are made again)."""
    _available("cpu")
    x = _x()
    fused = drn.fuse(source, backend="reference")
    ref = fused(x)
    fused.backend = "cpu"
    out = _check_fresh(fused, x, BOTH)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    twin = copy.deepcopy(fused)
    twin.load_state_dict(_negated(twin.state_dict()))
    assert torch.equal(_check_fresh(fused, x, BOTH), out)  # the original is untouched by its copy's update
    assert not torch.equal(_check_fresh(twin, x, BOTH), out)


@pytest.mark.parametrize("c, path", [(64, "winograd"), (16, "onednn")])
def test_prepared_op_uses_what_it_is_given(c, path, cpu_settings):
    """drn::conv_bn_act_prepared_native computes with the prepared form it is passed (so the fused model's
    forms are what runs, not a per-call transform), and ignores one that does not fit the call. A Winograd form
    chooses the Winograd path, a oneDNN copy oneDNN's, whatever the settings would pick (the choice by
    measurement, drn_kernels.prepared)."""
    _available("cpu")
    cpu_settings.unset("DRN_CPU_CONV")
    x = _rand(1, c, 6, 7, seed=1).contiguous(memory_format=CL)
    w, other, b = _rand(c, c, 3, 3, seed=3, scale=0.1), _rand(c, c, 3, 3, seed=4, scale=0.1), _rand(c, seed=2)
    assert cpu_conv_algorithm(x, w) == path
    if path == "winograd":
        prepared, misfit = torch.ops.drn.winograd_weight(other), torch.zeros(3, c, c)
    else:
        prepared = torch.ops.drn.onednn_weight(other, [1, 1], [1, 1], [1, 1], list(x.shape))
        misfit = torch.zeros(36, c + 1, c)  # not a Winograd form of this weight's shape
    geo = ([1, 1], [1, 1], [1, 1], None, True)
    got = torch.ops.drn.conv_bn_act_prepared_native(x, w, b, prepared, *geo)
    assert torch.equal(got, drn_kernels.conv_bn_act(x, other, b, padding=1, backend="cpu"))
    got = torch.ops.drn.conv_bn_act_prepared_native(x, w, b, misfit, *geo)
    assert torch.equal(got, drn_kernels.conv_bn_act(x, w, b, padding=1, backend="cpu"))
    swapped = (torch.ops.drn.onednn_weight(other, [1, 1], [1, 1], [1, 1], list(x.shape))
               if path == "winograd" else torch.ops.drn.winograd_weight(other))  # the other algorithm's form
    got = torch.ops.drn.conv_bn_act_prepared_native(x, w, b, swapped, *geo)
    cpu_settings.set("DRN_CPU_CONV", "direct" if path == "winograd" else "winograd")
    assert torch.equal(got, drn_kernels.conv_bn_act(x, other, b, padding=1, backend="cpu"))


# ---- model level: single FusedConvs on triton (interpreter) ---------------------------------------------------

def test_fused_conv_triton_load_and_assign():
    _available("triton")
    c = 8
    with torch.inference_mode():
        conv = FusedConv("c", _rand(c, c, 3, 3, seed=3, scale=0.1), _rand(c, seed=4), [1, 1], [1, 1], [1, 1],
                         True, "triton")
    x = _rand(1, c, 5, 6, seed=1)

    def fresh():
        y = conv(x)
        assert torch.equal(y, drn_kernels.conv_bn_act(x, conv.weight, conv.bias, padding=1, backend="triton"))
        return y

    before = fresh()
    with torch.inference_mode():
        conv.load_state_dict({"weight": -conv.weight, "bias": conv.bias})
    after = fresh()
    assert not torch.equal(after, before)
    conv.weight = torch.nn.Parameter(conv.weight.contiguous() * 2)  # not channels_last: stored channels_last
    assert conv.weight.is_contiguous(memory_format=CL)
    assert not torch.equal(fresh(), after)
