"""The demo's pieces, without its training runs: canvases, a few training steps, the committed weights, all parts."""
import numpy as np
import pytest
import torch

from drn.demo import digits, parts, train

pytestmark = pytest.mark.unit


def test_canvases_and_boxes():
    canvases, labels, boxes = digits.make_canvases(16, np.random.default_rng(0), "test")
    assert canvases.shape == (16, digits.CANVAS, digits.CANVAS) and canvases.dtype == np.float32
    assert 0.0 <= canvases.min() and canvases.max() <= 1.0
    assert set(labels.tolist()) <= set(range(10))  # test canvases always hold a digit
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= digits.CANVAS).all()
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (sides >= 4).all() and (sides <= digits.DIGIT_SIZES[1]).all()
    for c, b in zip(canvases, boxes.astype(int)):  # the box holds bright ink
        assert c[b[1]:b[3], b[0]:b[2]].max() > 0.5
    x = digits.to_input(canvases)
    assert x.shape == (16, 3, digits.CANVAS, digits.CANVAS) and torch.isfinite(x).all()


def test_crops_hold_the_whole_digit_or_none_of_it():
    images, labels = digits.crops(32, np.random.default_rng(0))
    assert images.shape == (32, digits.CROP, digits.CROP) and images.dtype == np.float32
    assert set(labels.tolist()) <= set(range(digits.NUM_CLASSES))
    assert 0 < (labels == digits.BACKGROUND).sum() < 32


def test_splits_are_disjoint():
    ranges = sorted(digits.SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))


@pytest.mark.build
def test_boxes_at_matches_the_op(tmp_path):
    model, fused, _ = parts.localizer()
    canvases, _, _ = digits.make_canvases(6, np.random.default_rng(2), "val")
    with torch.no_grad():
        out = model(digits.to_input(canvases), threshold=0.7)
    assert np.array_equal(parts.boxes_at(out, 0.7), out.boxes.numpy())


def test_two_training_steps_change_the_weights():
    torch.manual_seed(0)
    model = train.digits_model()
    before = [p.detach().clone() for p in model.parameters()]
    losses = train.train_steps(model, 2, np.random.default_rng(0), batch=4, full=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.build
def test_committed_weights_are_small_and_load():
    assert train.WEIGHTS.is_file(), "run `python -m drn.demo train` and commit drn/demo/assets/digits_drn.pth"
    assert train.WEIGHTS.stat().st_size < 5_000_000
    model, fused, note = parts.localizer()
    assert isinstance(note, str)
    assert fused is not None or "not available" in note


@pytest.mark.build
def test_localize_part_reports_accuracies(tmp_path, monkeypatch):
    monkeypatch.setattr(parts, "OUT", tmp_path)
    result = parts.demo_localize(n=40, val=40)
    for key in ("classification_accuracy", "localization_accuracy", "box_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["threshold"] in parts.THRESHOLDS
    assert result["classification_accuracy"] > 0.5  # the committed weights learned something
    assert (tmp_path / "localize_grid.png").is_file()


@pytest.mark.build
def test_models_part(tmp_path, monkeypatch):
    monkeypatch.setattr(parts, "OUT", tmp_path)
    result = parts.demo_models(seg_size=(48, 64))
    assert {"classify_ms", "classify_first_ms", "segment_ms", "segment_first_ms"} <= set(result)
    if "segment_label_agreement" in result:  # fused path present: it must agree with the unfused model
        assert result["segment_label_agreement"] > 0.99 and result["classify_rel_diff"] <= 1e-4
    assert not (tmp_path / "segment.png").exists()  # random weights: no picture to mistake for a result


def test_segmentation_canvases_label_the_ink():
    canvases, maps = digits.segmentation_canvases(12, np.random.default_rng(0), "test")
    assert canvases.shape == maps.shape == (12, digits.SEG_CANVAS, digits.SEG_CANVAS)
    digit = maps != digits.BACKGROUND
    assert digit.any(axis=(1, 2)).all()  # every canvas holds a digit
    assert (canvases[digit] > digits.INK).all()  # a digit label only where its ink is
    assert set(np.unique(maps).tolist()) <= set(range(digits.NUM_CLASSES))
    assert max(len(set(np.unique(m).tolist()) - {digits.BACKGROUND}) for m in maps) <= 2


def test_mean_iou_by_hand():
    truth = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    conf = parts.confusion(pred, truth, k=3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    miou, iou = parts.mean_iou(conf)
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(2 / 3) and np.isnan(iou[2])
    assert miou == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_one_segmentation_training_step_writes_loadable_weights(tmp_path):
    path = train.train_segmentation(steps=1, batch=2, path=tmp_path / "seg.pth")
    state = torch.load(path, weights_only=True)
    train.segmentation_model().load_state_dict({k: v.float() for k, v in state.items()})


@pytest.mark.build
def test_segment_part_with_committed_weights(tmp_path, monkeypatch):
    from PIL import Image

    assert train.SEG_WEIGHTS.is_file() and train.SEG_WEIGHTS.stat().st_size < 2_000_000
    monkeypatch.setattr(parts, "OUT", tmp_path)
    result = parts.demo_segment(n=24)
    miou = result.get("miou_fused", result["miou_unfused"])
    assert miou > 0.4  # chance is ~1/11 per digit class: well above it, with margin for 24 canvases
    if "fused_unfused_agreement" in result:
        assert result["fused_unfused_agreement"] > 0.99
    labels = Image.open(tmp_path / "segment.png")
    assert labels.mode == "P" and labels.size == Image.open(tmp_path / "segment_input.png").size
    assert set(np.unique(np.array(labels)).tolist()) <= set(range(digits.NUM_CLASSES))
    assert (tmp_path / "segment_sheet.png").is_file()
