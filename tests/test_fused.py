"""drn.fuse / drn.build(fused=True): the fused model computes what the unfused one does, for every model and task.

Weights: the constructor's He initialisation plus random BatchNorm statistics and affine terms (so folding is not
an identity); models are built once per name and shared by the three tasks (segment and localize wrap the
classifier's modules), as construction dominates the run time on 2 cores.
"""
import copy
import functools
import time

import pytest
import torch
import torch.nn.functional as F

import drn
import drn_kernels
from drn.fused import FusedConv, FusedModel
from drn.zoo.heads import DRNSeg, as_localizer, classifier_weights
from margins import clear_top2
from tolerance import assert_within_torch_error
from helpers import require_backend

pytestmark = pytest.mark.unit

# Fused and unfused outputs are each judged against the model run in float64, the fused one within tolerance.FACTOR
# of the unfused float32 model's own error (tests/tolerance.py): a fixed fused-vs-unfused tolerance held on one CPU
# only. float64 forwards are slow: the main input is 48x48.
MAIN_SHAPE = (1, 3, 48, 48)
ODD_SHAPE_MODELS = {"drn_a_18", "drn_c_58", "drn_d_22"}  # also run at 2x3x57x71
SEG_CLASSES = 19
CLS_CLASSES = 10


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model


@functools.lru_cache(maxsize=3)
def unfused_models(name: str):
    """(classify, segment, localize) sharing one backbone: built once per model name."""
    torch.manual_seed(0)
    cls = randomize_bn(drn.build(name, num_classes=CLS_CLASSES))
    seg = DRNSeg(cls, SEG_CLASSES).eval()
    g = torch.Generator().manual_seed(1)
    seg.seg.weight.data.copy_(torch.randn(seg.seg.weight.shape, generator=g) * 0.05)
    seg.seg.bias.data.copy_(torch.randn(SEG_CLASSES, generator=g) * 0.1)
    loc = as_localizer(copy.copy(cls))  # a shallow copy: same modules, localize forward
    return cls, seg, loc


@functools.lru_cache(maxsize=2)
def exact_models(name: str):
    """unfused_models(name) in float64: the exact results both the fused and the unfused model are judged by."""
    cls, seg, _ = unfused_models(name)
    cls64 = copy.deepcopy(cls).double()
    seg64 = DRNSeg(cls64, SEG_CLASSES).double().eval()
    seg64.seg.weight.data.copy_(seg.seg.weight.double())
    seg64.seg.bias.data.copy_(seg.seg.bias.double())
    return cls64, seg64, as_localizer(copy.copy(cls64))


def fresh_input(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def clear_margin(logits: torch.Tensor, dim: int = 1, margin: float = 1e-3) -> torch.Tensor:
    return clear_top2(logits, margin, dim)


def check_classify(model, fused, x, exact):
    ref, out = model(x), fused(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_within_torch_error(out, ref, exact(x.double()), what="logits")


def check_segment(model, fused, x, exact):
    ref_lp, ref_low = model(x)
    ex_lp, ex_low = exact(x.double())
    lp, low = fused(x)
    assert lp.shape == ref_lp.shape and low.shape == ref_low.shape
    assert_within_torch_error(low, ref_low, ex_low, what="low-resolution logits")
    assert_within_torch_error(lp, ref_lp, ex_lp, what="log-probabilities")
    labels, probs = fused.predict(x)
    ref_labels, ref_probs = model.predict(x)
    assert labels.shape == ref_labels.shape == x.shape[:1] + x.shape[2:]
    assert labels.dtype == torch.int64 and probs.dtype == torch.float32
    clear = clear_margin(ex_lp)
    assert clear.float().mean() > 0.9
    ex_probs, ex_labels = ex_lp.exp().max(dim=1)
    assert torch.equal(labels[clear], ex_labels[clear])
    assert_within_torch_error(probs, ref_probs, ex_probs, relative=False, mask=clear, what="probabilities")


def check_localize(model, fused, x, exact, threshold=0.0):
    ref, out = model(x, threshold=threshold), fused(x, threshold=threshold)
    x64 = x.double()
    ex = exact(x64, threshold=threshold)
    assert isinstance(out, drn.Localization)
    assert_within_torch_error(out.logits, ref.logits, ex.logits, what="logits")
    weight, bias = classifier_weights(exact)
    clear = clear_margin(F.conv2d(exact.features(x64), weight, bias))
    assert out.labels.shape == ref.labels.shape
    assert torch.equal(out.labels[clear], ex.labels[clear])
    assert_within_torch_error(out.scores, ref.scores, ex.scores, relative=False, mask=clear, what="scores")
    # with threshold 0 a box depends only on the labels and the top-1 class: equal when both are clear
    if clear.all() and clear_margin(ex.logits).all():
        torch.testing.assert_close(out.boxes, ex.boxes.to(out.boxes.dtype))


@pytest.mark.slow
@pytest.mark.parametrize("name", drn.list_models())
def test_fused_equals_unfused(name):
    cls, seg, loc = unfused_models(name)
    cls64, seg64, loc64 = exact_models(name)
    fused = {task: drn.fuse(m, backend="reference") for task, m in
             (("classify", cls), ("segment", seg), ("localize", loc))}
    shapes = [MAIN_SHAPE] + ([(2, 3, 57, 71)] if name in ODD_SHAPE_MODELS else [])
    for shape in shapes:
        x = fresh_input(shape)
        check_classify(cls, fused["classify"], x, cls64)
        check_segment(seg, fused["segment"], x, seg64)
        check_localize(loc, fused["localize"], x, loc64)


def test_structure_of_fused_model():
    cls, _, _ = unfused_models("drn_c_58")
    fused = drn.fuse(cls, backend="reference")
    convs = [m for m in fused.modules() if isinstance(m, FusedConv)]
    unfused_convs = [n for n, m in cls.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "fc"]
    # every conv but the unused projection of layer7.0 (computed and discarded by the reference)
    assert sorted(c.name for c in convs) == sorted(n for n in unfused_convs if n != "layer7.0.downsample.0")
    assert fused.backbone[-2].downsample is None  # layer7.0
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(not p.requires_grad for p in fused.parameters())
    d22 = drn.fuse(unfused_models("drn_d_22")[0], backend="reference")  # conv layers, no blocks, in levels 1-2
    assert [type(m).__name__ for m in d22.backbone[:3]] == ["FusedConv"] * 3
    assert all(m.relu for m in d22.backbone[:3])


def test_train_raises_eval_ok_and_no_grad():
    cls, _, _ = unfused_models("drn_d_22")
    fused = drn.fuse(cls, backend="reference")
    assert not fused.training
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.backbone[0].train(True)
    assert fused.eval() is fused and not any(m.training for m in fused.modules())
    with torch.enable_grad():
        out = fused(fresh_input((1, 3, 32, 32)))
    assert not out.requires_grad
    assert all(not p.requires_grad for p in fused.parameters())


def test_fuse_leaves_source_untouched():
    cls, seg, _ = unfused_models("drn_d_22")
    for model in (cls, seg):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        modules = [(n, type(m), m.training) for n, m in model.named_modules()]
        fused = drn.fuse(model, backend="reference")
        after = model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert [(n, type(m), m.training) for n, m in model.named_modules()] == modules
        fp = {p.data_ptr() for p in fused.parameters()}
        assert not fp & {t.data_ptr() for t in model.state_dict().values()}


def test_empty_batch():
    cls, seg, loc = unfused_models("drn_d_22")
    x = fresh_input((0, 3, 64, 64))
    assert drn.fuse(cls, backend="reference")(x).shape == cls(x).shape == (0, CLS_CLASSES)
    fseg = drn.fuse(seg, backend="reference")
    assert [t.shape for t in fseg(x)] == [t.shape for t in seg(x)]
    labels, probs = fseg.predict(x)
    assert labels.shape == probs.shape == (0, 64, 64)
    out, ref = drn.fuse(loc, backend="reference")(x), loc(x)
    assert [t.shape for t in out] == [t.shape for t in ref]


def test_empty_batch_drn_a_maxpool():
    cls, _, _ = unfused_models("drn_a_18")
    x = fresh_input((0, 3, 40, 40))
    assert drn.fuse(cls, backend="reference")(x).shape == (0, CLS_CLASSES)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    """Judged as the kernels are: within 2x of PyTorch's own same-dtype error against float64 (+ eps)."""
    cls, seg, _ = unfused_models("drn_d_22")
    x = fresh_input((1, 3, 48, 64))
    exact = exact_models("drn_d_22")[0](x.double())
    torch_own = copy.deepcopy(cls).to(dtype)(x.to(dtype))
    fused = drn.fuse(cls, backend="reference").to(dtype)
    assert all(c.weight.dtype == dtype and c.weight.is_contiguous(memory_format=torch.channels_last)
               for c in fused.modules() if isinstance(c, FusedConv))
    out = fused(x.to(dtype))
    assert out.dtype == dtype
    assert_within_torch_error(out, torch_own, exact, what=f"{dtype} logits")
    fseg = drn.fuse(seg, backend="reference").to(dtype)
    labels, probs = fseg.predict(x.to(dtype))
    ref_lp, ref_low = seg(x)
    # The ×8 up-sampler is a convex combination per pixel, so an error e on the low-res logits moves every
    # up-sampled logit by <= e: labels whose fp32 margin exceeds 2e must agree.
    err = (fseg(x.to(dtype))[1].float() - ref_low).abs().max().item()
    clear = clear_margin(ref_lp, margin=2 * err)
    assert clear.float().mean() > 0.5 and torch.equal(labels[clear], ref_lp.argmax(1)[clear])
    assert probs.dtype == torch.float32


def test_build_fused_folds_in_float32_then_casts():
    torch.manual_seed(3)
    built = drn.build("drn_d_22", num_classes=5, fused=True, backend="reference", dtype=torch.bfloat16)
    torch.manual_seed(3)
    manual = drn.fuse(drn.build("drn_d_22", num_classes=5), backend="reference").to(torch.bfloat16)
    assert isinstance(built, FusedModel) and built.backend == "reference"
    sd_b, sd_m = built.state_dict(), manual.state_dict()
    assert sd_b.keys() == sd_m.keys() and all(torch.equal(sd_b[k], sd_m[k]) for k in sd_b)
    with pytest.raises(RuntimeError, match="inference-only"):
        built.train()


def test_fuse_builds_each_layer_once_where_it_runs(monkeypatch):
    """fuse(device=, dtype=, backend=, cpu_choices=) prepares each conv exactly once, already in its final dtype,
    on its final backend and with the pinned table: no layer is built elsewhere and then moved or re-prepared."""
    from drn_kernels import prepared

    made, init = [], prepared.PreparedConv.__init__

    def counting(self, weight, bias, backend, pinned=None):
        made.append((weight.dtype, bias.dtype, backend, pinned))
        init(self, weight, bias, backend, pinned)

    monkeypatch.setattr(prepared.PreparedConv, "__init__", counting)
    table = {}
    _, seg, loc = unfused_models("drn_d_22")
    for source in (seg, loc):
        made.clear()
        fused = drn.fuse(source, backend="triton", device="cpu", dtype=torch.bfloat16, cpu_choices=table)
        convs = [m for m in fused.modules() if isinstance(m, FusedConv)]
        assert len(made) == len(convs) > 0
        assert all(m == (torch.bfloat16, torch.bfloat16, "triton", table) for m in made)
        assert fused.backend == "triton" and fused.head_weight.dtype == torch.bfloat16
        assert all(t.device.type == "cpu" for t in fused.state_dict().values())
    with pytest.raises(TypeError, match="dtype"):
        drn.fuse(seg, dtype=torch.int32)
    with pytest.raises(ValueError, match="device"):
        drn.fuse(seg, device="bogus")


def test_fuse_rejects():
    _, seg, _ = unfused_models("drn_d_22")
    bad = copy.deepcopy(seg)
    bad.up.weight.data.mul_(1.5)
    with pytest.raises(ValueError, match="bilinear"):
        drn.fuse(bad)
    with pytest.raises(ValueError, match="backend"):
        drn.fuse(seg, backend="fast")
    fused = drn.fuse(seg, backend="reference")
    with pytest.raises(TypeError, match="already fused"):
        drn.fuse(fused)
    with pytest.raises(TypeError):
        drn.fuse(torch.nn.Linear(2, 2))


def _require(backend):
    require_backend(backend)


@pytest.mark.build
@pytest.mark.parametrize("name", ["drn_d_22", "drn_c_26"])
def test_cpu_backend(name):
    _require("cpu")
    cls, seg, loc = unfused_models(name)
    cls64, seg64, loc64 = exact_models(name)
    x = fresh_input((2, 3, 57, 71))
    check_classify(cls, drn.fuse(cls, backend="cpu"), x, cls64)
    check_segment(seg, drn.fuse(seg, backend="cpu"), x, seg64)
    check_localize(loc, drn.fuse(loc, backend="cpu"), x, loc64)


def test_triton_backend_interpreted():
    """Triton under TRITON_INTERPRET=1 is ~1000x slower than compiled: drn_d_22's first levels (stem, conv
    levels, a residual level with its projection) on a 1x3x16x16 input; the whole model takes many minutes."""
    _require("triton")
    cls, _, _ = unfused_models("drn_d_22")
    fused = drn.fuse(cls, backend="triton")
    x = fresh_input((1, 3, 16, 16))
    start = time.perf_counter()
    out = fused.backbone[:5](x)  # layer0, layer1, layer2, layer3.0 (with downsample), layer3.1
    ref = torch.nn.Sequential(cls.layer0, cls.layer1, cls.layer2, cls.layer3)(x)
    cls64 = exact_models("drn_d_22")[0]
    exact = torch.nn.Sequential(cls64.layer0, cls64.layer1, cls64.layer2, cls64.layer3)(x.double())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_within_torch_error(out, ref, exact, what="features")
    print(f"triton (interpreted) drn_d_22 levels 0-3 at 16x16: {time.perf_counter() - start:.1f} s")


# ---- memory-frugal segmentation predict (drn.fused.banded) -------------------------------------------------------

@pytest.mark.build
@pytest.mark.parametrize("name", ["drn_d_22", "drn_c_26", "drn_c_58", "drn_b_26", "drn_d_38"])
def test_low_memory_predict_equals_plain(name):
    """Row bands (stem re-computing its halo rows, blocks over their own storage, plain convs written over their
    input, the head in bands) give the plain predict()'s labels wherever the top-2 margin is clear, and its
    probabilities to float32 rounding: bands of one row, of a few rows, and a single band; batch 2, odd sides."""
    _require("cpu")
    _, seg, _ = unfused_models(name)
    fused = drn.fuse(seg, backend="cpu")
    x = fresh_input((2, 3, 75, 97))
    fused.low_memory = False
    labels, probs = fused.predict(x)
    ex_lp = exact_models(name)[1](x.double())[0]
    ex_probs, ex_labels = ex_lp.exp().max(dim=1)
    clear = clear_margin(ex_lp)
    torch_probs = seg.predict(x)[1]
    assert torch.equal(labels[clear], ex_labels[clear])
    assert_within_torch_error(probs, torch_probs, ex_probs, relative=False, mask=clear, what="plain predict")
    fused.low_memory = True
    for band_bytes, stem_band_bytes in ((1, 1), (1 << 14, 1 << 16), (1 << 40, 1 << 40)):
        fused.band_bytes, fused.stem_band_bytes = band_bytes, stem_band_bytes
        lab, prob = fused.predict(x)
        assert lab.shape == labels.shape and prob.shape == probs.shape
        assert torch.equal(lab[clear], labels[clear])
        assert_within_torch_error(prob, torch_probs, ex_probs, relative=False, what="banded predict")
    assert [t.shape for t in fused.predict(x[:0])] == [(0, 75, 97)] * 2


def test_low_memory_predict_on_the_reference_backend():
    """The banded runner is backend-agnostic: on the reference backend (no in-place kernel: the residual is
    computed and copied in) it gives the plain predict()'s labels too."""
    _, seg, _ = unfused_models("drn_c_26")
    fused = drn.fuse(seg, backend="reference")
    x = fresh_input((1, 3, 70, 90))
    fused.low_memory = False
    labels, probs = fused.predict(x)
    fused.low_memory, fused.band_bytes, fused.stem_band_bytes = True, 1 << 14, 1 << 14
    lab, prob = fused.predict(x)
    ex_lp = exact_models("drn_c_26")[1](x.double())[0]
    clear = clear_margin(ex_lp)
    assert torch.equal(lab[clear], labels[clear])
    assert_within_torch_error(prob, seg.predict(x)[1], ex_lp.exp().max(dim=1).values, relative=False,
                              what="banded predict")


@pytest.mark.build
def test_low_memory_predict_is_the_cpu_default_for_large_inputs(monkeypatch):
    """predict() takes the banded path on CPU from LOW_MEMORY_PIXELS on (and when forced), the plain one below."""
    _require("cpu")
    _, seg, _ = unfused_models("drn_d_22")
    fused = drn.fuse(seg, backend="cpu")
    calls = []
    real = fused._predict_low_memory
    monkeypatch.setattr(fused, "_predict_low_memory", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(fused, "LOW_MEMORY_PIXELS", 64 * 80)
    fused.predict(fresh_input((1, 3, 64, 72)))
    assert calls == []
    fused.predict(fresh_input((1, 3, 64, 80)))
    assert calls == [1]
    fused.low_memory = False
    fused.predict(fresh_input((1, 3, 64, 80)))
    assert calls == [1]


@pytest.mark.build
def test_low_memory_predict_bounds_peak_memory():
    """The point of the banded path: at 256x512 with bands of ~0.5 MB (as 8 MB bands are at 1024x2048) its
    steady-state peak allocation (torch.profiler's CPU allocator events) is well under the plain fused predict's,
    which holds the full-resolution stem maps. Steady state: each path runs once first, as the first call also
    makes the oneDNN weight copies for its shapes (and, before the fused model prepared its Winograd weights
    when built, made those too — 4x the 3x3 weights, which is what this test used to measure)."""
    _require("cpu")
    from benchmarks.common import peak_memory_bytes

    _, seg, _ = unfused_models("drn_d_22")
    fused = drn.fuse(seg, backend="cpu")
    fused.band_bytes, fused.stem_band_bytes = 1 << 19, 1 << 20
    x = fresh_input((1, 3, 256, 512))
    peaks = {}
    for low_memory in (False, True):
        fused.low_memory = low_memory
        fused.predict(x)
        peaks[low_memory] = peak_memory_bytes(lambda: fused.predict(x))
    assert peaks[True] < 0.6 * peaks[False], peaks


def test_conv_over_rows_checks_its_bands():
    from drn.fused import banded

    conv = FusedConv("c", torch.randn(8, 8, 3, 3), torch.randn(8), [1, 1], [4, 4], [4, 4], True, "reference")
    x = torch.randn(1, 8, 20, 9).contiguous(memory_format=torch.channels_last)
    expected = conv(x)
    with pytest.raises(ValueError, match="bands of 3 rows"):
        banded.conv_over_rows(conv, x.clone(), 3)
    out = banded.conv_over_rows(conv, x, 4)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, expected)


@pytest.mark.build
@pytest.mark.parametrize("algorithm", ["winograd", "direct"])
def test_into_residual_when_residual_is_x(cpu_settings, algorithm):
    """forward_into_residual(y, y): the result written over y, computed from y before it is overwritten (each
    path forced)."""
    _require("cpu")
    cpu_settings.set("DRN_CPU_CONV", algorithm)
    torch.manual_seed(5)
    conv = FusedConv("c", torch.randn(64, 64, 3, 3) * 0.05, torch.randn(64), [1, 1], [1, 1], [1, 1], True, "cpu")
    y = torch.randn(1, 64, 13, 17).contiguous(memory_format=torch.channels_last)
    want = drn_kernels.reference.conv_bn_act(y.double(), conv.weight.double(), conv.bias.double(), stride=(1, 1),
                                             padding=(1, 1), dilation=(1, 1), residual=y.double(), relu=True)
    with torch.no_grad():
        out = conv.forward_into_residual(y, y)
    assert out.data_ptr() == y.data_ptr()
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
