"""The model zoo: every model and task builds and runs; layouts, counts and outputs equal the reference's."""
import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

import drn
from drn.zoo.heads import DRNSeg, as_localizer
from drn_kernels.reference import upsample8
from seeded_weights import seeded_input, seeded_state_dict
from tolerance import assert_within_torch_error

pytestmark = pytest.mark.unit

DATA = pathlib.Path(__file__).parent / "data"
REF_SHAPES = json.loads((DATA / "reference_state_dict_shapes.json").read_text())

PARAM_COUNTS = {
    "drn_a_18": 11_689_512, "drn_a_34": 21_797_672, "drn_a_50": 25_557_032, "drn_b_26": 21_126_584,
    "drn_c_26": 21_126_584, "drn_c_42": 31_234_744, "drn_c_58": 41_591_608, "drn_d_22": 16_393_752,
    "drn_d_38": 26_501_912, "drn_d_54": 35_809_176, "drn_d_105": 54_801_304,
    # follow from the same construction (levels 7-8 doubled)
    "drn_d_24": 21_114_392, "drn_d_40": 31_222_552, "drn_d_56": 40_529_816, "drn_d_107": 59_521_944,
}


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def test_list_models():
    assert drn.list_models() == ["drn_a_18", "drn_a_34", "drn_a_50", "drn_b_26", "drn_c_26", "drn_c_42",
                                 "drn_c_58", "drn_d_22", "drn_d_24", "drn_d_38", "drn_d_40", "drn_d_54",
                                 "drn_d_56", "drn_d_105", "drn_d_107"]


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_count_and_state_dict_layout(name):
    model = drn.build(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]
    if name in REF_SHAPES["classify"]:  # every model but drn_b_26, which the reference does not have
        sd = model.state_dict()
        assert {k: list(v.shape) for k, v in sd.items()} == REF_SHAPES["classify"][name]


@pytest.mark.parametrize("name", sorted(REF_SHAPES["segment"]))
def test_segment_state_dict_layout_equals_reference(name):
    sd = drn.build(name, task="segment", num_classes=19).state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == REF_SHAPES["segment"][name]


def test_drn_b_differs_from_c_only_in_residuals():
    b, c = drn.build("drn_b_26"), drn.build("drn_c_26")
    assert {k: v.shape for k, v in b.state_dict().items()} == {k: v.shape for k, v in c.state_dict().items()}
    assert all(blk.residual for blk in list(b.layer7) + list(b.layer8))
    assert not any(blk.residual for blk in list(c.layer7) + list(c.layer8))
    c.load_state_dict(seeded_state_dict(c.state_dict()))
    b.load_state_dict(c.state_dict())
    x = seeded_input((1, 3, 64, 64))
    assert not torch.allclose(b(x), c(x))


def test_reference_quirks():
    a = drn.build("drn_a_50")
    assert a.layer3[0].conv2.dilation == (1, 1) and a.layer3[1].conv2.dilation == (2, 2)
    assert a.layer4[0].conv2.dilation == (1, 1) and a.layer4[1].conv2.dilation == (4, 4)
    c58 = drn.build("drn_c_58")
    assert c58.layer7[0].downsample is not None and not c58.layer7[0].residual
    d = drn.build("drn_d_22")
    assert isinstance(d.layer0, torch.nn.Sequential) and isinstance(d.layer1[0], torch.nn.Conv2d)
    assert isinstance(d.layer7[0], torch.nn.Conv2d) and d.layer7[0].dilation == (2, 2)


REF_OUTPUTS = torch.load(DATA / "reference_outputs.pt")


@pytest.mark.parametrize("name", ["drn_a_18", "drn_a_50", "drn_c_26", "drn_c_58", "drn_d_22", "drn_d_54"])
def test_classify_output_equals_reference_at_224(name):
    """Recorded from fyu/drn's drn.py with the same seeded weights and input (bit-identical on the machine that
    recorded them). Elsewhere oneDNN's kernels round differently, so the recording is judged as another float32
    computation of the same thing: against this model in float64, within tests/tolerance.py's budget of this
    machine's own float32 error."""
    model = drn.build(name)
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    x = seeded_input((1, 3, 224, 224))
    out = model(x)[0]
    exact = model.double()(x.double())[0]
    assert_within_torch_error(REF_OUTPUTS[name], out, exact, what=f"{name} recorded logits")


@pytest.mark.parametrize("name", ["drn_a_18", "drn_c_26", "drn_d_22"])
def test_segment_output_equals_reference(name):
    model = drn.build(name, task="segment", num_classes=19)
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    x = seeded_input((1, 3, 40, 56), seed=2)
    log_probs, low = model(x)
    ex_log_probs, ex_low = model.double()(x.double())
    assert_within_torch_error(REF_OUTPUTS[name + ":segment"], log_probs[0], ex_log_probs[0], what="log-probs")
    assert_within_torch_error(REF_OUTPUTS[name + ":segment_low"], low[0], ex_low[0], what="low logits")


@pytest.mark.parametrize("name", drn.list_models())
def test_every_model_and_task_runs(name):
    # One construction per model (random init of up to 60M parameters is the slow part on 2 cores): the
    # segmentation head wraps the classifier's backbone modules, and the classifier then becomes its localize
    # twin in place — the same objects drn.build(task=...) assembles.
    classifier = drn.build(name, num_classes=7)
    models = {"classify": classifier, "segment": DRNSeg(classifier, 19).eval()}
    for shape in [(1, 3, 64, 64), (2, 3, 97, 131)]:
        n, _, h, w = shape
        x = seeded_input(shape)
        logits = models["classify"](x)
        assert logits.shape == (n, 7) and torch.isfinite(logits).all()

        log_probs, low = models["segment"](x)
        assert log_probs.shape == (n, 19, h, w) and low.shape == (n, 19, -(-h // 8), -(-w // 8))
        assert torch.isfinite(log_probs).all()
        labels, probs = models["segment"].predict(x)
        assert labels.shape == (n, h, w) and labels.dtype == torch.int64 and probs.dtype == torch.float32
        assert ((probs > 0) & (probs <= 1)).all()

    as_localizer(classifier)
    for shape in [(1, 3, 64, 64), (2, 3, 97, 131)]:
        n, _, h, w = shape
        x = seeded_input(shape)
        out = classifier(x, threshold=0.0)
        assert isinstance(out, drn.Localization)
        assert out.logits.shape == (n, 7) and out.labels.shape == (n, -(-h // 8), -(-w // 8))
        assert out.boxes.shape == (n, 4) and torch.isfinite(out.scores).all()
        valid = out.boxes[:, 0] >= 0  # boxes stay inside the image
        assert (out.boxes[valid, 2] <= w).all() and (out.boxes[valid, 3] <= h).all()


def test_localize_logits_equal_classify():
    cls = drn.build("drn_d_22", num_classes=10)
    cls.load_state_dict(seeded_state_dict(cls.state_dict()))
    loc = drn.build("drn_d_22", task="localize", num_classes=10)
    loc.load_state_dict(cls.state_dict())
    x = seeded_input((2, 3, 72, 88))
    assert_within_torch_error(loc(x).logits, cls(x), cls.double()(x.double()), what="localize logits")


def test_segment_crops_sides_not_multiple_of_8():
    seg = drn.build("drn_d_22", task="segment", num_classes=5)
    seg.load_state_dict(seeded_state_dict(seg.state_dict()))
    x = seeded_input((1, 3, 61, 75))
    log_probs, low = seg(x)
    assert log_probs.shape == (1, 5, 61, 75) and low.shape == (1, 5, 8, 10)
    # the crop keeps the top-left of the full 64x80 up-sampled map
    full = torch.log_softmax(seg.up(low), dim=1)
    torch.testing.assert_close(log_probs, full[..., :61, :75])


def test_upsampler_equals_interpolate_except_borders():
    seg = drn.build("drn_c_26", task="segment", num_classes=3)
    assert not seg.up.weight.requires_grad
    low = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    ours = F.conv_transpose2d(low, seg.up.weight.double(), stride=8, padding=4, groups=3)
    torch.testing.assert_close(ours, upsample8(low))
    interp = F.interpolate(low, scale_factor=8, mode="bilinear", align_corners=False)
    diff = (ours - interp).abs().amax(dim=(0, 1)) > 1e-9
    interior = diff[4:-4, 4:-4]
    assert not interior.any(), "the transposed conv equals bilinear interpolation away from the borders"
    rows = diff[:, 4:-4].any(dim=1).nonzero().flatten().tolist()
    cols = diff[4:-4, :].any(dim=0).nonzero().flatten().tolist()
    assert rows == [0, 1, 2, 3, 68, 69, 70, 71]  # the 4 border rows at each end see zeros beyond the edge
    assert cols == [0, 1, 2, 3, 84, 85, 86, 87]


def test_build_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown model"):
        drn.build("drn_e_1")
    with pytest.raises(ValueError, match="task"):
        drn.build("drn_c_26", task="detect")
    with pytest.raises(ValueError, match="num_classes"):
        drn.build("drn_c_26", task="segment")
    with pytest.raises(ValueError, match="num_classes"):
        drn.build("drn_c_26", num_classes=0)


def test_dtype_and_device_arguments():
    model = drn.build("drn_d_22", dtype=torch.float64, device="cpu")
    assert next(model.parameters()).dtype == torch.float64
    assert not model.training
