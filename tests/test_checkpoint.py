"""Checkpoint loading: every accepted form, every refusal, pretrained download through the hub cache."""
import hashlib
import re
import warnings

import pytest
import torch

import drn
from drn.zoo import registry
from seeded_weights import seeded_input, seeded_state_dict

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def weights():
    model = drn.build("drn_d_22")
    return seeded_state_dict(model.state_dict())


def _same(model, sd):
    return all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_plain_state_dict(weights):
    model = drn.load_checkpoint(drn.build("drn_d_22"), weights)
    assert _same(model, weights)


def test_file_with_module_prefix_and_training_wrapper(tmp_path, weights):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}, "epoch": 90, "best_prec1": 75.5},
               path)
    model = drn.load_checkpoint(drn.build("drn_d_22"), str(path))
    assert _same(model, weights)


def test_missing_num_batches_tracked(weights):
    old = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(weights)
    model = drn.load_checkpoint(drn.build("drn_d_22"), old)
    assert _same(model, old)


def test_refuses_missing_unexpected_and_misshaped(weights):
    missing = dict(weights)
    del missing["layer3.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['layer3.0.conv1.weight'\]"):
        drn.load_checkpoint(drn.build("drn_d_22"), missing)
    extra = dict(weights, **{"layer9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['layer9.weight'\]"):
        drn.load_checkpoint(drn.build("drn_d_22"), extra)
    bad = dict(weights, **{"layer3.0.conv1.weight": torch.zeros(64, 32, 1, 1)})
    with pytest.raises(ValueError, match="mis-shaped.*layer3.0.conv1.weight"):
        drn.load_checkpoint(drn.build("drn_d_22"), bad)
    with pytest.raises(ValueError, match="missing keys"):  # a checkpoint of another architecture
        drn.load_checkpoint(drn.build("drn_c_26"), weights)
    with pytest.raises(ValueError, match="state_dict"):
        drn.load_checkpoint(drn.build("drn_d_22"), {"epoch": 3})


def test_new_classifier_is_reinitialised_with_warning(weights):
    model = drn.build("drn_d_22", num_classes=10)
    with pytest.warns(UserWarning, match="re-initialised"):
        drn.load_checkpoint(model, weights)
    assert model.fc.weight.shape == (10, 512, 1, 1)
    assert torch.equal(model.layer3[0].conv1.weight, weights["layer3.0.conv1.weight"])


def test_misshaped_classifier_raises_not_reinitialised(weights):
    """Only another number of classes means a new classifier; a classifier with the model's class count but
    another shape (here 7 input channels instead of 512) is a wrong checkpoint."""
    model = drn.build("drn_d_22")
    bad = dict(weights, **{"fc.weight": torch.zeros(1000, 7, 1, 1)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no misleading "re-initialised" warning either
        with pytest.raises(ValueError, match=r"classifier is mis-shaped.*fc.weight: checkpoint \(1000, 7, 1, 1\) "
                                             r"vs model \(1000, 512, 1, 1\)"):
            drn.load_checkpoint(model, bad)
    other_classes_wrong_channels = dict(weights, **{"fc.weight": torch.zeros(10, 7, 1, 1), "fc.bias": torch.zeros(10)})
    with pytest.raises(ValueError, match="mis-shaped"):
        drn.load_checkpoint(model, other_classes_wrong_channels)
    inconsistent = dict(weights, **{"fc.weight": torch.zeros(10, 512, 1, 1)})  # 10 classes, bias 1000
    with pytest.raises(ValueError, match="mis-shaped"):
        drn.load_checkpoint(drn.build("drn_d_22", num_classes=10), inconsistent)


@pytest.mark.parametrize("content, what", [(b"", "the file is empty"),
                                           (b"epoch 3, top-1 75.5\n", "not a PyTorch checkpoint"),
                                           (bytes(range(256)) * 4, "not a PyTorch checkpoint")])
def test_junk_files_name_the_file_and_the_problem(tmp_path, content, what):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"cannot read checkpoint {path}: {what}")):
        drn.load_checkpoint(drn.build("drn_d_22"), str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        drn.load_checkpoint(drn.build("drn_d_22"), str(tmp_path / "missing.pth"))


def test_file_holding_no_state_dict_names_it(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} must be a state_dict") + ".*got list"):
        drn.load_checkpoint(drn.build("drn_d_22"), path)


def test_classifier_checkpoint_that_does_not_fit_segmentation_model_only_raises(weights):
    """A classification checkpoint of another architecture: one error that says how it was read, and no
    warning claiming it was loaded."""
    seg = drn.build("drn_c_26", task="segment", num_classes=19)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="does not fit DRNSeg \\(read as an image-classification checkpoint"):
            drn.load_checkpoint(seg, weights)


def test_classifier_checkpoint_into_segmentation_model(weights):
    seg = drn.build("drn_d_22", task="segment", num_classes=19)
    with pytest.warns(UserWarning, match="segmentation"):
        drn.load_checkpoint(seg, weights)
    assert torch.equal(seg.base[0][0].weight, weights["layer0.0.weight"])
    assert torch.equal(seg.base[3][0].conv1.weight, weights["layer3.0.conv1.weight"])


def test_segmentation_checkpoint_roundtrip(tmp_path):
    seg = drn.build("drn_c_26", task="segment", num_classes=19)
    sd = seeded_state_dict(seg.state_dict())
    path = tmp_path / "seg.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, path)
    again = drn.build("drn_c_26", task="segment", num_classes=19, pretrained=str(path))
    assert _same(again, sd)


def test_pretrained_path(tmp_path, weights):
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    model = drn.build("drn_d_22", pretrained=str(path))
    assert _same(model, weights)


def _hub_file(tmp_path, sd, name):
    raw = tmp_path / "raw.pth"
    torch.save(sd, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    target = served / f"{name}-{digest[:8]}.pth"
    raw.rename(target)
    return target, digest


def test_pretrained_true_downloads_through_hub_cache_and_checks_hash(tmp_path, monkeypatch, weights):
    target, _ = _hub_file(tmp_path, weights, "drn_d_22")
    monkeypatch.setitem(registry.PRETRAINED, "drn_d_22", registry.Weights(target.as_uri()))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    model = drn.build("drn_d_22", pretrained=True)
    assert _same(model, weights)
    assert list((tmp_path / "hub").rglob(target.name)), "the file is kept in the torch.hub cache"

    corrupt = target.with_name("drn_d_22-00000000.pth")
    corrupt.write_bytes(target.read_bytes())
    monkeypatch.setitem(registry.PRETRAINED, "drn_d_22", registry.Weights(corrupt.as_uri()))
    with pytest.raises(RuntimeError, match="hash"):
        drn.build("drn_d_22", pretrained=True)


def test_model_without_released_weights_lists_those_with():
    with pytest.raises(ValueError, match=r"drn_c_26.*drn_d_105|no released weights"):
        drn.build("drn_d_24", pretrained=True)


def test_drn_a_50_pretrained_says_what_it_is(tmp_path, monkeypatch):
    model = drn.build("drn_a_50")
    target, _ = _hub_file(tmp_path, model.state_dict(), "resnet50")
    monkeypatch.setitem(registry.PRETRAINED, "drn_a_50",
                        registry.Weights(target.as_uri(), note=registry.PRETRAINED["drn_a_50"].note))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.warns(UserWarning, match="ResNet-50"):
        drn.build("drn_a_50", pretrained=True)


def test_loaded_model_predicts_like_source(weights):
    src = drn.build("drn_d_22")
    src.load_state_dict(weights)
    dst = drn.build("drn_d_22", pretrained=False)
    drn.load_checkpoint(dst, {"module." + k: v for k, v in weights.items()})
    x = seeded_input((1, 3, 64, 64))
    with torch.no_grad(), warnings.catch_warnings():
        torch.testing.assert_close(src(x), dst(x), rtol=0, atol=0)
