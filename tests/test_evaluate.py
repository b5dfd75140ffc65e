"""`drn evaluate` / `python -m drn.evaluate` on small datasets written to tmp_path, and torchrun agreement.

Segmentation: 3 images 64×80 with random labels 0..18 and some 255 (the reference layout); the confusion matrix
is recomputed here from model.predict. Classification: an ImageFolder tree. Localization: boxes as CSV and XML.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import drn
from drn.apps import data, evaluate

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _seeded(task, num_classes, seed):
    torch.manual_seed(seed)
    model = drn.build("drn_d_22", task=task, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def segset(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(3):
        _png(root / "img" / f"{i}.png", rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
        lab = rng.integers(0, 19, (64, 80)).astype(np.uint8)
        lab[rng.random((64, 80)) < 0.1] = 255
        _png(root / "gt" / f"{i}.png", lab)
        images.append(f"img/{i}.png")
        labels.append(f"gt/{i}.png")
    (root / "val_images.txt").write_text("\n".join(images) + "\n")
    (root / "val_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "info.json").write_text(json.dumps({"mean": [0.4, 0.4, 0.4], "std": [0.25, 0.25, 0.25]}))
    model = _seeded("segment", 19, 0)
    torch.save(model.state_dict(), root / "seg.pth")
    return root, model


def _json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_segment_matches_confusion_matrix(segset, capsys):
    root, model = segset
    rc = evaluate.main(["segment", "--data", str(root), "--model", "drn_d_22", "--num-classes", "19",
                        "--weights", str(root / "seg.pth"), "--json", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    got = _json_line(out)
    hist = np.zeros((19, 19), dtype=np.int64)
    for i in range(3):
        rgb = np.asarray(Image.open(root / "img" / f"{i}.png").convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(((rgb - 0.4) / 0.25).transpose(2, 0, 1)[None].copy())  # info.json's mean/std
        pred = model.predict(x)[0][0].numpy()
        lab = np.array(Image.open(root / "gt" / f"{i}.png")).astype(np.int64)
        keep = lab != 255
        np.add.at(hist, (lab[keep], pred[keep]), 1)
    tp = np.diag(hist)
    union = hist.sum(0) + hist.sum(1) - tp
    iou = [None if u == 0 else t / u for t, u in zip(tp, union)]
    assert got["images"] == 3
    assert got["iou"] == pytest.approx(iou, abs=1e-6)
    assert got["miou"] == pytest.approx(np.mean([v for v in iou if v is not None]), abs=1e-6)
    assert "mIoU" in out and "sidewalk" in out  # the per-class table with Cityscapes names


def test_segment_bad_label_names_the_file(segset, tmp_path, capsys):
    root, _ = segset
    for name in ("val_images.txt", "val_labels.txt", "info.json"):
        (tmp_path / name).write_text((root / name).read_text())
    for sub in ("img", "gt"):
        (tmp_path / sub).mkdir()
        for i in range(3):
            (tmp_path / sub / f"{i}.png").write_bytes((root / sub / f"{i}.png").read_bytes())
    lab = np.array(Image.open(root / "gt" / "1.png"))
    lab[5, 7] = 19  # >= K and not 255
    _png(tmp_path / "gt" / "1.png", lab)
    rc = evaluate.main(["segment", "--data", str(tmp_path), "--model", "drn_d_22", "--num-classes", "19",
                        "--weights", str(root / "seg.pth"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "gt/1.png" in err and "19" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(segset):
    root, _ = segset
    args = ["segment", "--data", str(root), "--model", "drn_d_22", "--weights", str(root / "seg.pth"),
            "--num-classes", "19", "--json", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    one = subprocess.run([sys.executable, "-m", "drn.evaluate", *args], capture_output=True, text=True,
                         env=env, timeout=300, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "drn.evaluate",
                          *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert two.returncode == 0, two.stderr
    assert len([ln for ln in two.stdout.splitlines() if ln.startswith("{")]) == 1  # rank 0 prints alone
    a, b = _json_line(two.stdout), _json_line(one.stdout)
    assert a.pop("images_per_s") > 0 and b.pop("images_per_s") > 0  # a speed: the one field that may differ
    assert a == b


@pytest.fixture(scope="module")
def classify_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(1)
    for c in ("ant", "bee", "cat"):
        for i in range(2):
            _png(root / "data" / c / f"{i}.jpg" if i else root / "data" / c / f"{i}.png",
                 rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    model = _seeded("classify", 3, 3)
    torch.save(model.state_dict(), root / "cls.pth")
    return root, model


@pytest.mark.parametrize("ten_crop", [False, True])
def test_classify_top1_top5(classify_set, capsys, ten_crop):
    root, model = classify_set
    argv = ["classify", "--data", str(root / "data"), "--model", "drn_d_22", "--weights", str(root / "cls.pth"),
            "--resize", "36", "--crop", "32", "--json", "--device", "cpu"] + (["--ten-crop"] if ten_crop else [])
    assert evaluate.main(argv) == 0
    got = _json_line(capsys.readouterr().out)
    classes, samples = data.image_folder(root / "data")
    assert classes == ["ant", "bee", "cat"] and len(samples) == 6
    right = 0
    for path, label in samples:
        x = data.classify_inputs(data.load_image(path), 36, 32, ten_crop)
        with torch.no_grad():
            right += int(torch.softmax(model(x), 1).mean(0).argmax()) == label
    assert got["images"] == 6
    assert got["top1"] == pytest.approx(right / 6)
    assert got["top5"] == 1.0  # 3 classes: the true one is always among the top 5


@pytest.fixture(scope="module")
def localize_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc")
    rng = np.random.default_rng(2)
    model = _seeded("localize", 4, 4)
    rows = ["image,class,x1,y1,x2,y2"]
    for i in range(3):
        _png(root / f"im{i}.png", rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
        with torch.no_grad():
            out = model(data.to_tensor(data.load_image(root / f"im{i}.png"))[None], threshold=0.0)
        cls = int(out.logits.argmax())
        box = out.boxes[0].tolist() if i < 2 else [0, 0, 4, 4]  # two right, one wrong box
        rows.append(f"im{i}.png,{cls},{box[0]},{box[1]},{box[2]},{box[3]}")
        ann = root / "xml" / f"im{i}.xml"
        ann.parent.mkdir(exist_ok=True)
        ann.write_text(f"<annotation><filename>im{i}</filename><object><name>{cls}</name><bndbox>"
                       f"<xmin>{box[0] + 1}</xmin><ymin>{box[1] + 1}</ymin><xmax>{box[2]}</xmax>"
                       f"<ymax>{box[3]}</ymax></bndbox></object></annotation>")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    torch.save(model.state_dict(), root / "loc.pth")
    return root


@pytest.mark.parametrize("source", ["csv", "xml"])
def test_localize_error(localize_set, capsys, source):
    root = localize_set
    extra = ["--boxes", str(root / "xml")] if source == "xml" else []
    if source == "xml":  # XML lives beside the images: copy them next to it
        for i in range(3):
            (root / "xml" / f"im{i}.png").write_bytes((root / f"im{i}.png").read_bytes())
        extra = ["--boxes", str(root / "xml")]
        data_dir = root / "xml"
    else:
        data_dir = root
    argv = ["localize", "--data", str(data_dir), "--model", "drn_d_22", "--weights", str(root / "loc.pth"),
            "--threshold", "0.0", "--json", "--device", "cpu", *extra]
    assert evaluate.main(argv) == 0
    got = _json_line(capsys.readouterr().out)
    assert got["images"] == 3
    assert got["top1_error"] == 0.0
    assert got["top1_loc_error"] == pytest.approx(1 / 3)
    assert got["top5_loc_error"] == pytest.approx(1 / 3)


def test_cli_forwards_evaluate(segset, capsys):
    from drn.apps import cli

    root, _ = segset
    argv = ["segment", "--data", str(root), "--model", "drn_d_22", "--num-classes", "19", "--weights",
            str(root / "seg.pth"), "--json", "--device", "cpu"]
    assert cli.main(["evaluate", *argv]) == 0
    forwarded = capsys.readouterr().out
    assert evaluate.main(argv) == 0
    direct = capsys.readouterr().out
    # the same evaluation: the per-class table and the JSON result (mIoU, IoUs, pixel accuracy) agree; the speed
    # (images/s) is the one thing that may differ
    import re

    def steady(out):
        return re.sub(r'[0-9.]+ images/s|"images_per_s": [0-9.e-]+', "SPEED", out)

    assert steady(forwarded) == steady(direct) and "mIoU" in forwarded
    got = _json_line(forwarded)
    assert got["images"] == 3 and got["miou"] is not None and len(got["iou"]) == 19


def test_localize_sizes_reach_the_right_step(localize_set, capsys, monkeypatch):
    """--loc-resize sizes the image the boxes' maps are computed on, --resize/--crop the 10-crop classification:
    each reaches its own step (they were easy to swap: both are resizes)."""
    from drn.apps import predict

    seen = {"localize": set(), "classify": set()}
    localize, classify = predict.localize, predict.classify

    def spy_localize(model, img, **kw):
        seen["localize"].add(kw["resize"])
        return localize(model, img, **kw)

    def spy_classify(model, img, **kw):
        seen["classify"].add((kw["resize"], kw["crop"]))
        return classify(model, img, **kw)

    monkeypatch.setattr(predict, "localize", spy_localize)
    monkeypatch.setattr(predict, "classify", spy_classify)
    root = localize_set
    argv = ["localize", "--data", str(root), "--model", "drn_d_22", "--weights", str(root / "loc.pth"),
            "--threshold", "0.0", "--device", "cpu", "--ten-crop", "--loc-resize", "40", "--resize", "36",
            "--crop", "32"]
    assert evaluate.main(argv) == 0
    assert seen == {"localize": {40}, "classify": {(36, 32)}}


# ------------------------------------------------------------------------- generated images vs label maps

# Cityscapes label ids of the 19 train ids (the labels.py table), and some void ids (-> 255)
TRAIN_TO_CITYSCAPES_ID = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
VOID_IDS = [0, 1, 4, 6, 9, 14, 29, 30]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Cityscapes names: images/<city>/X_leftImg8bit.png (some sides not multiples of 8) and
    gtFine/<city>/X_gtFine_labelIds.png at twice the size (plus the _color.png files gtFine also holds), and a
    folder of train-id PNGs at the images' size. Returns (root, model, [(stem, image size, train-id map)])."""
    root = tmp_path_factory.mktemp("gen")
    rng = np.random.default_rng(5)
    cases = []
    for i, (h, w) in enumerate([(32, 64), (29, 45), (40, 56)]):
        stem = f"city_{i:06d}_000019"
        _png(root / "images" / "city" / f"{stem}_leftImg8bit.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        train = rng.integers(0, 19, (h, w))
        void = rng.random((h, w)) < 0.15
        ids = np.asarray(TRAIN_TO_CITYSCAPES_ID)[train]
        ids[void] = rng.choice(VOID_IDS, void.sum())
        big = np.repeat(np.repeat(ids, 2, 0), 2, 1).astype(np.uint8)  # nearest down-sampling gives `ids` back
        _png(root / "gtFine" / "city" / f"{stem}_gtFine_labelIds.png", big)
        _png(root / "gtFine" / "city" / f"{stem}_gtFine_color.png", rng.integers(0, 256, (2 * h, 2 * w, 3),
                                                                                 dtype=np.uint8))
        truth = np.where(void, 255, train).astype(np.uint8)
        _png(root / "trainids" / f"{stem}.png", truth)
        cases.append((stem, (w, h), truth.astype(np.int64)))
    _png(root / "gtFine" / "city" / "other_000000_000019_gtFine_labelIds.png", np.zeros((8, 8), np.uint8))
    return root, _seeded("segment", 19, 7), cases


def _expected(model, root, cases, ms=False):
    """Confusion matrix by hand from predict.segment and the known train-id maps; Cityscapes' mean/std."""
    from drn.apps import predict
    from drn.zoo.registry import CITYSCAPES_MEAN, CITYSCAPES_STD

    hist = np.zeros((19, 19), dtype=np.int64)
    pixels = 0
    for stem, _, truth in cases:
        img = data.load_image(root / "images" / "city" / f"{stem}_leftImg8bit.png")
        pred = predict.segment(model, img, mean=CITYSCAPES_MEAN, std=CITYSCAPES_STD, ms=ms).numpy()
        keep = truth != 255
        np.add.at(hist, (truth[keep], pred[keep]), 1)
        pixels += truth.size
    tp = np.diag(hist)
    union = hist.sum(0) + hist.sum(1) - tp
    iou = [None if u == 0 else t / u for t, u in zip(tp, union)]
    return {"iou": iou, "miou": np.mean([v for v in iou if v is not None]), "pixels": pixels,
            "pixel_accuracy": tp.sum() / hist.sum(), "pixel_accuracy_all": tp.sum() / pixels}


@pytest.mark.parametrize("ms", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_images_against_cityscapes_label_ids(generated, capsys, ms):
    """Generated-size images vs full-size gtFine *_labelIds.png: pairs by stem, ids -> train ids, labels resized
    to the images by nearest (the default), the JSON fields; the sides 29x45 are not multiples of 8."""
    root, model, cases = generated
    weights = root / "seg.pth"
    torch.save(model.state_dict(), weights)
    argv = ["segment", "--images", str(root / "images"), "--labels", str(root / "gtFine"), "--model", "drn_d_22",
            "--weights", str(weights), "--json", "--device", "cpu"] + (["--ms"] if ms else [])
    assert evaluate.main(argv) == 0
    got = _json_line(capsys.readouterr().out)
    want = _expected(model, root, cases, ms=ms)
    assert got["images"] == 3 and got["pixels"] == want["pixels"]
    assert got["ignored_pixels"] == sum(int((t == 255).sum()) for _, _, t in cases) > 0
    assert got["iou"] == pytest.approx(want["iou"], abs=1e-6)
    assert got["miou"] == pytest.approx(want["miou"], abs=1e-6)
    assert got["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"], abs=1e-6)
    assert got["pixel_accuracy_all"] == pytest.approx(want["pixel_accuracy_all"], abs=1e-6)
    assert got["pixel_accuracy_all"] < got["pixel_accuracy"]
    assert got["images_per_s"] > 0


def test_images_against_train_ids_same_size(generated, capsys):
    """Train-id PNGs named like the image without _leftImg8bit; --resize none (sizes equal): the same numbers."""
    root, model, cases = generated
    torch.save(model.state_dict(), root / "seg.pth")
    base = ["segment", "--images", str(root / "images"), "--model", "drn_d_22", "--weights", str(root / "seg.pth"),
            "--json", "--device", "cpu"]
    assert evaluate.main(base + ["--labels", str(root / "trainids"), "--resize", "none"]) == 0
    a = _json_line(capsys.readouterr().out)
    assert evaluate.main(base + ["--labels", str(root / "gtFine")]) == 0
    b = _json_line(capsys.readouterr().out)
    a.pop("images_per_s"), b.pop("images_per_s")
    assert a == b


def test_resize_images_to_labels(generated, capsys):
    """--resize images: the image is brought to the label map's size (PIL bicubic) before the model."""
    from drn.apps import predict
    from drn.zoo.registry import CITYSCAPES_MEAN, CITYSCAPES_STD

    root, model, cases = generated
    torch.save(model.state_dict(), root / "seg.pth")
    assert evaluate.main(["segment", "--images", str(root / "images"), "--labels", str(root / "gtFine"),
                          "--model", "drn_d_22", "--weights", str(root / "seg.pth"), "--json", "--device", "cpu",
                          "--resize", "images"]) == 0
    got = _json_line(capsys.readouterr().out)
    pixels, right, counted = 0, 0, 0
    for stem, (w, h), truth in cases:
        img = data.load_image(root / "images" / "city" / f"{stem}_leftImg8bit.png").resize((2 * w, 2 * h),
                                                                                           Image.BICUBIC)
        pred = predict.segment(model, img, mean=CITYSCAPES_MEAN, std=CITYSCAPES_STD).numpy()
        big = np.repeat(np.repeat(truth, 2, 0), 2, 1)
        keep = big != 255
        pixels, right, counted = pixels + big.size, right + int((pred == big)[keep].sum()), counted + int(keep.sum())
    assert got["pixels"] == pixels
    assert got["pixel_accuracy"] == pytest.approx(right / counted, abs=1e-6)


def test_pairs_errors_name_the_files(generated, tmp_path):
    root, _, _ = generated
    _png(tmp_path / "imgs" / "lonely_leftImg8bit.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="lonely"):
        data.image_label_pairs(tmp_path / "imgs", root / "gtFine")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.image_label_pairs(tmp_path / "nowhere", root / "gtFine")
    pairs = data.image_label_pairs(root / "images", root / "gtFine")
    assert [p[1].name for p in pairs] == [f"city_{i:06d}_000019_gtFine_labelIds.png" for i in range(3)]


def test_cityscapes_ids_by_hand():
    ids = np.array([[7, 8, 0, 33], [-1, 34, 255, 26]])
    np.testing.assert_array_equal(data.cityscapes_to_train_ids(ids), [[0, 1, 255, 18], [255, 255, 255, 13]])


def test_images_options_refused_with_data(segset, capsys):
    root, _ = segset
    rc = evaluate.main(["segment", "--data", str(root), "--model", "drn_d_22", "--num-classes", "19",
                        "--weights", str(root / "seg.pth"), "--resize", "images", "--device", "cpu"])
    assert rc == 2 and "--resize" in capsys.readouterr().err
    rc = evaluate.main(["segment", "--images", str(root / "img"), "--model", "drn_d_22", "--num-classes", "19",
                        "--weights", str(root / "seg.pth"), "--device", "cpu"])
    assert rc == 2 and "--labels" in capsys.readouterr().err


@pytest.mark.build
def test_fused_evaluation_says_where_its_choices_came_from_and_pins_them(segset, capsys, tmp_path, cpu_settings):
    """drn evaluate --fused prints its choices' source; --save-cpu-choices writes the table, --cpu-choices pins it
    (no search, 'pinned' in the line) and gives the same numbers."""
    root, _ = segset
    cpu_settings.unset("DRN_CPU_CONV")
    table = tmp_path / "choices.json"
    base = ["segment", "--data", str(root), "--model", "drn_d_22", "--num-classes", "19", "--weights",
            str(root / "seg.pth"), "--json", "--device", "cpu", "--fused"]
    assert evaluate.main(base + ["--save-cpu-choices", str(table)]) == 0
    first = capsys.readouterr()
    assert "drn: cpu algorithm choices:" in first.err
    saved = json.loads(table.read_text())
    assert saved and set(saved.values()) <= {"winograd4", "winograd2", "onednn"}
    from drn_kernels import prepared

    searches = len(prepared.SEARCHES)
    assert evaluate.main(base + ["--cpu-choices", str(table)]) == 0
    second = capsys.readouterr()
    assert "pinned" in second.err and len(prepared.SEARCHES) == searches
    drop = lambda d: {k: v for k, v in d.items() if k != "images_per_s"}  # noqa: E731
    assert drop(_json_line(second.out)) == drop(_json_line(first.out))
    assert evaluate.main(base[:-1] + ["--cpu-choices", str(table)]) == 2  # needs --fused
    assert "needs --fused" in capsys.readouterr().err
