"""The `drn` command on real files: classify, segment (single- and multi-scale), localize, profile/bench forwarding.

Models are drn_d_22 with seeded random weights saved to tmp_path, images 64×80 (and one 72×56) PNGs.
"""
import importlib.util
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import drn
from drn.apps import cli, data, predict
from drn.apps.palette import CITYSCAPES_PALETTE, generic_palette
from test_multiscale import oracle_ms

pytestmark = pytest.mark.unit

HAS_FUSED = importlib.util.find_spec("drn.fused") is not None


def _save_model(path, task, num_classes, seed=0):
    torch.manual_seed(seed)
    model = drn.build("drn_d_22", task=task, num_classes=num_classes)
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding and normalisation matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    torch.save(model.state_dict(), path)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate([(64, 80), (64, 80), (72, 56)]):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        images.append(p)
    seg = _save_model(root / "seg19.pth", "segment", 19)
    seg5 = _save_model(root / "seg5.pth", "segment", 5, seed=1)
    cls = _save_model(root / "cls7.pth", "classify", 7, seed=2)
    (root / "info.json").write_text(json.dumps({"mean": [0.3, 0.35, 0.3], "std": [0.2, 0.2, 0.21]}))
    return types.SimpleNamespace(root=root, images=images, seg=seg, seg5=seg5, cls=cls)


def _pixels(img: Image.Image, mean, std) -> torch.Tensor:
    """(1, 3, H, W): the model input written here with numpy, independently of drn.apps.data."""
    a = (np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    return torch.from_numpy(a.transpose(2, 0, 1)[None].astype(np.float32))


def _one_crop(path, resize: int, crop: int) -> Image.Image:
    """Shorter side to `resize` (PIL bilinear), then the centre crop by numpy slicing; the test images are chosen
    so (side - crop) is even and the centre is unambiguous."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = (resize, resize * h // w) if w <= h else (resize * w // h, resize)
    a = np.asarray(img.resize(size, Image.BILINEAR))
    assert (a.shape[0] - crop) % 2 == 0 and (a.shape[1] - crop) % 2 == 0
    top, left = (a.shape[0] - crop) // 2, (a.shape[1] - crop) // 2
    return Image.fromarray(a[top:top + crop, left:left + crop])


def test_normalisation_by_hand():
    """A few pixels of drn.apps.data.to_tensor worked out by hand: (value / 255 - mean) / std per channel."""
    img = Image.fromarray(np.array([[[255, 0, 51], [102, 204, 0]]], dtype=np.uint8))  # 1 x 2 pixels
    x = data.to_tensor(img, mean=(0.5, 0.25, 0.2), std=(0.5, 0.25, 0.1))
    assert x.shape == (3, 1, 2)
    want = [[[1.0, -0.2]], [[-1.0, 2.2]], [[0.0, -2.0]]]  # R: (1-.5)/.5, (.4-.5)/.5; G: -.25/.25, (.8-.25)/.25 ...
    torch.testing.assert_close(x, torch.tensor(want), rtol=0, atol=1e-6)
    default = data.to_tensor(img)  # ImageNet's mean/std
    assert default[0, 0, 0].item() == pytest.approx((1.0 - 0.485) / 0.229, abs=1e-6)
    assert default[2, 0, 1].item() == pytest.approx((0.0 - 0.406) / 0.225, abs=1e-6)


def test_center_crop_by_hand():
    """The centre crop of a 10 x 6 image to 4 starts at column 3, row 1 (pixel values encode their position)."""
    a = (np.arange(6)[:, None] * 16 + np.arange(10)[None, :]).astype(np.uint8)
    crop = np.asarray(data.center_crop(Image.fromarray(a), 4))
    np.testing.assert_array_equal(crop, a[1:5, 3:7])


def test_scale_box_by_hand():
    """A box found on a 40 x 20 (W x H) input, mapped to the 100 x 80 original: x by 2.5, y by 4."""
    assert predict.scale_box((8, 4, 16, 12), (40, 20), (100, 80)) == (20.0, 16.0, 40.0, 48.0)
    assert predict.scale_box((30, 10, 40, 20), (40, 20), (100, 80)) == (75.0, 40.0, 100.0, 80.0)
    assert predict.scale_box((-1, -1, -1, -1), (40, 20), (100, 80)) == (-1.0, -1.0, -1.0, -1.0)


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_classify_json_matches_the_model(files, capsys):
    out = _run(["classify", *files.images, "--model", "drn_d_22", "--weights", files.root / "cls7.pth",
                "--resize", "64", "--crop", "48", "--json", "--device", "cpu"], capsys)
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert len(lines) == 3
    for path, rec in zip(files.images, lines):
        x = _pixels(_one_crop(path, 64, 48), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ImageNet's
        with torch.no_grad():
            probs = torch.softmax(files.cls(x), dim=1)[0]
        assert rec["image"] == str(path) and len(rec["top"]) == 5
        assert rec["top"][0]["class"] == int(probs.argmax())
        assert rec["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_segment_writes_label_png_at_input_size(files, capsys):
    out_dir = files.root / "seg_out"
    _run(["segment", *files.images, "--model", "drn_d_22", "--num-classes", "19", "--weights",
          files.root / "seg19.pth", "--out", out_dir, "--info", files.root / "info.json", "--device", "cpu"], capsys)
    mean, std = data.read_info(files.root / "info.json")
    for path in files.images:
        img = Image.open(out_dir / f"{path.stem}.png")
        src = data.load_image(path)
        assert img.size == src.size and img.mode == "P"
        pal = np.array(img.getpalette()[:57], dtype=np.uint8).reshape(19, 3)
        np.testing.assert_array_equal(pal, CITYSCAPES_PALETTE)
        labels, _ = files.seg.predict(_pixels(src, [0.3, 0.35, 0.3], [0.2, 0.2, 0.21]))  # info.json's values
        np.testing.assert_array_equal(np.array(img), labels[0].numpy())


def test_segment_generic_palette(files, capsys):
    out_dir = files.root / "seg5_out"
    _run(["segment", files.images[0], "--model", "drn_d_22", "--weights", files.root / "seg5.pth",
          "--out", out_dir, "--device", "cpu"], capsys)  # --num-classes read from the checkpoint
    img = Image.open(out_dir / "img0.png")
    pal = np.array(img.getpalette()[:15], dtype=np.uint8).reshape(5, 3)
    np.testing.assert_array_equal(pal, generic_palette(5))
    assert np.array(img).max() < 5


def test_segment_multiscale(files, capsys):
    out_dir = files.root / "ms_out"
    _run(["segment", files.images[0], files.images[2], "--model", "drn_d_22", "--num-classes", "19",
          "--weights", files.root / "seg19.pth", "--out", out_dir, "--ms", "--device", "cpu"], capsys)
    for path in (files.images[0], files.images[2]):
        src = data.load_image(path)
        got = np.array(Image.open(out_dir / f"{path.stem}.png"))
        want, _ = oracle_ms(files.seg, src, data.IMAGENET_MEAN, data.IMAGENET_STD)  # the reference's test_ms
        assert got.shape == (src.size[1], src.size[0])
        np.testing.assert_array_equal(got, want)


def test_localize_png_and_json(files, capsys):
    out_dir = files.root / "loc_out"
    _run(["localize", *files.images[:2], "--model", "drn_d_22", "--weights", files.root / "cls7.pth",
          "--out", out_dir, "--threshold", "0.2", "--device", "cpu"], capsys)
    loc = drn.build("drn_d_22", task="localize", num_classes=7, pretrained=str(files.root / "cls7.pth"))
    for path in files.images[:2]:
        rec = json.loads((out_dir / f"{path.stem}.json").read_text())
        assert set(rec) == {"class", "score", "box"}
        src = data.load_image(path)
        with torch.no_grad():
            want = loc(data.to_tensor(src)[None], threshold=0.2)
        assert rec["class"] == int(want.logits.argmax())
        assert rec["score"] == pytest.approx(float(torch.softmax(want.logits, 1).max()), abs=1e-5)
        assert rec["box"] == pytest.approx(want.boxes[0].tolist())
        assert Image.open(out_dir / f"{path.stem}.png").size == src.size


class _BrightBox(torch.nn.Module):
    """A stand-in localizer whose box is the bright pixels of its input (in the input's pixels), class 1."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Conv2d(8, 2, 1)  # two classes: what the command reads for the class names

    def forward(self, x, threshold=0.5):
        ys, xs = torch.nonzero(x[0, 0] > 0, as_tuple=True)  # normalised: white > 0 > black
        box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        cells = torch.zeros(1, x.shape[2] // 8, x.shape[3] // 8)
        return drn.Localization(torch.tensor([[0.0, 3.0]]), cells.long(), cells, box)


def test_localize_box_back_in_image_pixels(tmp_path, monkeypatch, capsys):
    """Known box on a synthetic image: a white rectangle x 16..40, y 8..32 on a 96 x 48 canvas, localized on the
    image resized to 48 x 24 (--resize 24), reported in the original image's pixels."""
    canvas = np.zeros((48, 96, 3), dtype=np.uint8)
    canvas[8:32, 16:40] = 255
    Image.fromarray(canvas).save(tmp_path / "rect.png")
    seen = []
    stub = _BrightBox()
    monkeypatch.setattr(predict, "load_model", lambda *a, **k: stub)
    monkeypatch.setattr(stub, "forward", lambda x, threshold=0.5: seen.append(tuple(x.shape)) or
                        _BrightBox.forward(stub, x, threshold))
    _run(["localize", tmp_path / "rect.png", "--model", "drn_d_22", "--weights", tmp_path / "none.pth", "--out",
          tmp_path / "out", "--resize", "24", "--device", "cpu"], capsys)
    assert seen == [(1, 3, 24, 48)]
    rec = json.loads((tmp_path / "out" / "rect.json").read_text())
    assert rec["class"] == 1
    assert rec["box"] == pytest.approx([16, 8, 40, 32], abs=2)


@pytest.mark.skipif(not HAS_FUSED, reason="drn.fused is not there yet")
def test_fused_paths_match_unfused(files, capsys):
    base = ["--model", "drn_d_22", "--device", "cpu", "--backend", "reference"]
    plain = _run(["classify", files.images[0], "--weights", files.root / "cls7.pth", "--json", *base], capsys)
    fused = _run(["classify", files.images[0], "--weights", files.root / "cls7.pth", "--json", "--fused", *base],
                 capsys)
    p, f = json.loads(plain)["top"], json.loads(fused)["top"]
    assert p[0]["class"] == f[0]["class"]
    assert [r["prob"] for r in p] == pytest.approx([r["prob"] for r in f], abs=1e-4)
    for extra in ([], ["--ms"]):
        d1, d2 = files.root / f"p{len(extra)}", files.root / f"f{len(extra)}"
        seg = [files.images[0], "--weights", files.root / "seg19.pth", *base, *extra]
        _run(["segment", *seg, "--out", d1], capsys)
        _run(["segment", *seg, "--out", d2, "--fused"], capsys)
        a, b = np.array(Image.open(d1 / "img0.png")), np.array(Image.open(d2 / "img0.png"))
        assert (a == b).mean() > 0.99


def test_profile_and_bench_forward(monkeypatch):
    seen = {}
    fake = types.ModuleType("drn.tools.profile")
    fake.main = lambda argv=None: seen.setdefault("profile", argv) and 0
    monkeypatch.setitem(sys.modules, "drn.tools.profile", fake)
    assert cli.main(["profile", "drn_c_42", "--flops-only", "--json"]) == 0
    assert seen["profile"] == ["drn_c_42", "--flops-only", "--json"]
    monkeypatch.setattr(subprocess, "call", lambda cmd: seen.setdefault("bench", cmd) and 0)
    assert cli.main(["bench", "-k", "conv", "-q"]) == 0
    bench = cli.benchmarks_dir()
    assert bench is not None and (bench / "test_bench_models.py").is_file()
    assert seen["bench"][1:] == ["-m", "pytest", "--rootdir", str(bench.parent), "-c",
                                 str(bench.parent / "pyproject.toml"), str(bench), "--benchmark-only", "-k", "conv",
                                 "-q"]


def test_bench_help_is_its_own(capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "call", lambda cmd: pytest.fail("--help must not run pytest"))
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: drn bench") and "drn bench -m quick" in out and str(cli.benchmarks_dir()) in out
    monkeypatch.setattr(cli, "benchmarks_dir", lambda: None)
    assert cli.main(["bench", "-m", "quick"]) == 2
    assert "not shipped with this install" in capsys.readouterr().err


def test_errors_are_clear(files, capsys):
    rc = cli.main(["segment", str(files.images[0]), "--model", "drn_d_22", "--weights",
                   str(files.root / "seg19.pth"), "--out", str(files.root / "x"), "--info",
                   str(files.root / "missing.json"), "--device", "cpu"])
    assert rc == 2 and "missing.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["segment", str(files.images[0]), "--model", "drn_d_22", "--out", "x"])  # no --weights
    capsys.readouterr()


def _fails_in_one_line(argv, capsys, *needles):
    """The command exits non-zero with its error on the last stderr line, naming what was wrong; no traceback."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse: usage, then "drn X: error: argument --y: ..."
        rc = e.code
    err = capsys.readouterr().err
    assert rc not in (0, None), err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and all(n in last for n in needles), err
    return last


def test_one_line_errors(files, capsys, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    cls = ["--model", "drn_d_22", "--weights", files.root / "cls7.pth", "--device", "cpu"]
    _fails_in_one_line(["classify", notes, *cls], capsys, str(notes), "not an image")
    _fails_in_one_line(["classify", tmp_path / "empty", *cls], capsys, "empty", "no images")
    _fails_in_one_line(["classify", files.images[0], *cls, "--crop", "-5"], capsys, "--crop", "-5")
    _fails_in_one_line(["classify", files.images[0], *cls, "--resize", "-5"], capsys, "--resize", "-5")
    _fails_in_one_line(["localize", files.images[0], *cls, "--out", tmp_path, "--resize", "-1"], capsys, "--resize")
    onnx = ["export", "--model", "drn_d_22", "--random-weights", "--onnx", tmp_path / "m.onnx"]
    _fails_in_one_line([*onnx, "--size", "-224", "224"], capsys, "--size", "-224")
    _fails_in_one_line([*onnx, "--size", "0", "224"], capsys, "--size", "0")
    if not torch.cuda.is_available():
        _fails_in_one_line(["classify", files.images[0], "--model", "drn_d_22", "--random-weights", "--device",
                            "cuda"], capsys, "--device", "no CUDA GPU")


def test_weights_are_always_named(files, capsys):
    """No weights given: an error listing the three choices; --random-weights: runs, with a warning."""
    for cmd in (["classify", files.images[0]], ["localize", files.images[0], "--out", files.root / "w"],
                ["segment", files.images[0], "--num-classes", "5", "--out", files.root / "w"],
                ["export", "--onnx", files.root / "w.onnx"]):
        last = _fails_in_one_line([*cmd, "--model", "drn_d_22"], capsys, "--weights", "--random-weights")
        assert ("--pretrained" in last) == (cmd[0] != "segment")
    out = _run(["classify", files.images[0], "--model", "drn_d_22", "--random-weights", "--num-classes", "7",
                "--resize", "0", "--crop", "0", "--device", "cpu"], capsys)
    assert out.startswith(str(files.images[0]))
    cli.main(["classify", str(files.images[0]), "--model", "drn_d_22", "--random-weights", "--num-classes", "7",
              "--resize", "0", "--crop", "0", "--device", "cpu"])
    assert "warning: --random-weights" in capsys.readouterr().err


def test_pretrained_offline_says_where_the_file_goes(files, capsys, monkeypatch):
    import urllib.error

    def offline(url, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(files.root / "empty_hub"))
    monkeypatch.delenv("DRN_WEIGHTS_MIRROR", raising=False)
    last = _fails_in_one_line(["classify", files.images[0], "--model", "drn_c_26", "--pretrained", "--device", "cpu"],
                              capsys, drn.PRETRAINED["drn_c_26"].url, "name resolution", "ddedf421",
                              "drn weights import")
    place = str(files.root / "empty_hub") + "/checkpoints/" + drn.PRETRAINED["drn_c_26"].url.rsplit("/", 1)[1]
    assert place in last


def test_imagenet_class_names(files, capsys, tmp_path):
    """The shipped names: ImageNet-1k's 1000 classes in index order; classify shows them, --labels overrides."""
    names = (cli.IMAGENET_CLASSES).read_text().splitlines()
    assert len(names) == 1000 == len(set(names))
    assert (names[0], names[1], names[207], names[281], names[409], names[999]) == (
        "tench", "goldfish", "golden retriever", "tabby cat", "analog clock", "toilet tissue")
    args = ["classify", files.images[0], "--model", "drn_d_22", "--random-weights", "--resize", "0", "--crop", "0",
            "--device", "cpu", "--json"]
    top = json.loads(_run(args, capsys))["top"]
    assert [r["name"] for r in top] == [names[r["class"]] for r in top]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(1000)))
    top = json.loads(_run([*args, "--labels", labels], capsys))["top"]
    assert [r["name"] for r in top] == [f"thing {r['class']}" for r in top]


def test_module_entry_point(files):
    r = subprocess.run([sys.executable, "-m", "drn.apps.cli", "classify", str(files.images[0]), "--model", "drn_d_22",
                        "--weights", str(files.root / "cls7.pth"), "--resize", "0", "--crop", "0", "--top", "2",
                        "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(files.images[0]))
