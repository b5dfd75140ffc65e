"""The demo's pieces, without its training run: canvases, two training steps, the committed weights, both parts."""
import numpy as np
import pytest
import torch

from drn import demo


def test_canvases_and_boxes():
    canvases, labels, boxes = demo.make_canvases(16, np.random.default_rng(0), "test")
    assert canvases.shape == (16, demo.CANVAS, demo.CANVAS) and canvases.dtype == np.float32
    assert 0.0 <= canvases.min() and canvases.max() <= 1.0
    assert set(labels.tolist()) <= set(range(10))  # test canvases always hold a digit
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= demo.CANVAS).all()
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (sides >= 4).all() and (sides <= demo.DIGIT_SIZES[1]).all()
    for c, b in zip(canvases, boxes.astype(int)):  # the box holds bright ink
        assert c[b[1]:b[3], b[0]:b[2]].max() > 0.5
    x = demo.to_input(canvases)
    assert x.shape == (16, 3, demo.CANVAS, demo.CANVAS) and torch.isfinite(x).all()


def test_crops_hold_the_whole_digit_or_none_of_it():
    images, labels = demo.crops(32, np.random.default_rng(0))
    assert images.shape == (32, demo.CROP, demo.CROP) and images.dtype == np.float32
    assert set(labels.tolist()) <= set(range(demo.NUM_CLASSES))
    assert 0 < (labels == demo.BACKGROUND).sum() < 32


def test_splits_are_disjoint():
    ranges = sorted(demo.SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))


def test_boxes_at_matches_the_op(tmp_path):
    model, fused, _ = demo.localizer()
    canvases, _, _ = demo.make_canvases(6, np.random.default_rng(2), "val")
    with torch.no_grad():
        out = model(demo.to_input(canvases), threshold=0.7)
    assert np.array_equal(demo.boxes_at(out, 0.7), out.boxes.numpy())


def test_two_training_steps_change_the_weights():
    torch.manual_seed(0)
    model = demo.digits_model()
    before = [p.detach().clone() for p in model.parameters()]
    losses = demo.train_steps(model, 2, np.random.default_rng(0), batch=4, full=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_committed_weights_are_small_and_load():
    assert demo.WEIGHTS.is_file(), "run `python -m drn.demo train` and commit drn/assets/digits_drn.pth"
    assert demo.WEIGHTS.stat().st_size < 5_000_000
    model, fused, note = demo.localizer()
    assert isinstance(note, str)
    assert fused is not None or "not available" in note


def test_localize_part_reports_accuracies(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "OUT", tmp_path)
    result = demo.demo_localize(n=40, val=40)
    for key in ("classification_accuracy", "localization_accuracy", "box_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["threshold"] in demo.THRESHOLDS
    assert result["classification_accuracy"] > 0.5  # the committed weights learned something
    assert (tmp_path / "localize_grid.png").is_file()


def test_models_part(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "OUT", tmp_path)
    result = demo.demo_models(seg_size=(48, 64))
    assert result["classify_ms"] > 0 and result["segment_ms"] > 0
    # what the part shows: the fused models compute what the unfused ones do
    if "classify_fused_ms" in result:
        assert result["classify_rel_diff"] <= 1e-4
        assert result["segment_label_agreement"] >= 0.99
    from PIL import Image

    img = Image.open(tmp_path / "segment.png")
    assert img.size == (64, 48) and img.mode == "P"
    labels = np.array(img)
    assert labels.max() < 19 and len(np.unique(labels)) > 1  # a label map, not a blank image
