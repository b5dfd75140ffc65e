"""The reference's single- and multi-scale segmentation protocols (fyu/drn segment.py test / test_ms), re-written
here as an oracle from their documented behaviour, against drn.apps.predict.segment / drn.apps.multiscale.

Oracle of test_ms: inputs = the image, then PIL bicubic resizes to (int(W*s), int(H*s)) for s = 0.5, 0.75, 1.25,
1.5, 1.75; each normalised as the reference's ToTensor/Normalize (uint8 / 255, then (x - mean) / std, float32);
the model's base and seg, a ConvTranspose2d(K, K, 16, stride 8, padding 4, groups K) with the reference's
fill_up_weights kernel, LogSoftmax over classes, the whole output kept; every map not HxW resized one class at a
time by PIL (mode 'F', BILINEAR); the maps summed in float32 in that order; argmax over classes.
Sizes: 64x80 (multiples of 8) and 61x77 / 45x70 (not).
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import drn
from drn.apps import multiscale, predict

pytestmark = pytest.mark.unit

MEAN, STD = (0.3, 0.35, 0.3), (0.2, 0.2, 0.21)
SIZES = [(64, 80), (61, 77), (45, 70)]


def _seeded_segmenter(k=19, seed=0):
    torch.manual_seed(seed)
    model = drn.build("drn_d_22", task="segment", num_classes=k)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _seeded_segmenter()


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    # smooth content plus noise, so the scales see structure (not only noise the bicubic filter averages away)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7.0 + c) * np.cos(yy / 5.0 - c) for c in range(3)], -1) * 100 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))


def _reference_up(k):
    up = torch.nn.ConvTranspose2d(k, k, 16, stride=8, padding=4, groups=k, bias=False)
    f = math.ceil(16 / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    w = torch.zeros(16, 16)
    for i in range(16):
        for j in range(16):
            w[i, j] = (1 - math.fabs(i / f - c)) * (1 - math.fabs(j / f - c))
    up.weight.data.copy_(w.expand(k, 1, 16, 16))
    return up


def _normalised(img, mean=MEAN, std=STD):
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    for t, m, s in zip(x, torch.tensor(mean), torch.tensor(std)):
        t.sub_(m).div_(s)
    return x[None]


@torch.no_grad()
def _reference_output(model, img, mean=MEAN, std=STD):
    """The reference DRNSeg's first output: (K, 8*ceil(h/8), 8*ceil(w/8)) log-probabilities, uncropped."""
    up = _reference_up(model.num_classes)
    return torch.nn.LogSoftmax(dim=1)(up(model.seg(model.base(_normalised(img, mean, std)))))[0].numpy()


def oracle_ms(model, img, mean=MEAN, std=STD):
    w, h = img.size
    images = [img] + [img.resize((int(w * s), int(h * s)), Image.BICUBIC) for s in (0.5, 0.75, 1.25, 1.5, 1.75)]
    maps = []
    for im in images:
        out = _reference_output(model, im, mean, std)
        if out.shape[1:] != (h, w):
            out = np.stack([np.asarray(Image.fromarray(c).resize((w, h), Image.BILINEAR)) for c in out])
        maps.append(out)
    total = sum(maps)
    return total.argmax(axis=0), total


def oracle_single(model, img):
    return _reference_output(model, img).argmax(axis=0)


@pytest.mark.parametrize("h, w", SIZES)
def test_unfused_ms_is_the_reference_every_pixel(model, h, w):
    img = _image(h, w, h + w)
    want, _ = oracle_ms(model, img)
    got = predict.segment(model, img, mean=MEAN, std=STD, ms=True).numpy()
    assert got.shape == (h, w)
    np.testing.assert_array_equal(got, want)


def test_single_scale_is_the_reference_on_multiples_of_8(model):
    """The reference's single-scale test runs only where the output is the input's size (it crashes otherwise);
    there every pixel agrees. Elsewhere the package crops the top-left HxW, which the oracle's map shows too."""
    img = _image(64, 80, 1)
    got = predict.segment(model, img, mean=MEAN, std=STD).numpy()
    np.testing.assert_array_equal(got, oracle_single(model, img))
    img = _image(61, 77, 2)
    got = predict.segment(model, img, mean=MEAN, std=STD).numpy()
    np.testing.assert_array_equal(got, oracle_single(model, img)[:61, :77])


def _near_tie_only(got, want, total, gap=1e-3):
    """Labels equal except where the oracle's best two summed log-probabilities are within `gap`."""
    differ = got != want
    top2 = np.sort(total, axis=0)[-2:]
    assert (top2[1] - top2[0])[differ].max(initial=0) < gap, "a label differs where the reference has no near-tie"
    assert differ.mean() < 1e-3


@pytest.mark.parametrize("h, w", SIZES[:2])
def test_streamed_ms_is_the_reference_within_near_ties(model, h, w, monkeypatch):
    """The streamed running sum (what a fused model uses) on the unfused model, one class per chunk: only
    near-ties may differ, and no up-sampled map of more than one class is ever made."""
    monkeypatch.setattr(multiscale, "CHUNK_BYTES", 1)
    seen = []
    real = multiscale.upsample8
    monkeypatch.setattr(multiscale, "upsample8", lambda low: seen.append(low.shape[0]) or real(low))
    img = _image(h, w, 3)
    want, total = oracle_ms(model, img)
    got = multiscale.segment(model, img, mean=MEAN, std=STD, streamed=True).numpy()
    step = max(1, torch.get_num_threads())  # on the CPU a chunk holds a class per thread (PIL's parallelism)
    assert max(seen) == step < 19 and len(seen) == 2 * math.ceil(19 / step) * 6
    _near_tie_only(got, want, total)


@pytest.mark.parametrize("h, w", [(1, 1), (5, 9), (8, 3)])
def test_separable_upsampler_is_the_transposed_conv(h, w):
    from drn_kernels.reference import upsample8

    low = torch.randn(3, h, w, dtype=torch.float64)
    torch.testing.assert_close(multiscale._upsample8_separable(low), upsample8(low[None])[0])


def test_fused_ms_within_near_ties(model):
    fused = drn.fuse(model, backend="reference")
    img = _image(61, 77, 4)
    want, total = oracle_ms(model, img)
    got = predict.segment(fused, img, mean=MEAN, std=STD, ms=True).numpy()
    _near_tie_only(got, want, total)


RESIZES = [((64, 80), (61, 77)), ((72, 56), (70, 53)), ((8, 8), (70, 53)), ((224, 280), (61, 77)),
           ((200, 120), (64, 80)), ((64, 80), (64, 33)), ((64, 80), (17, 80))]


def _maps(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    a = (rng.standard_normal((3, *src)) * 5).astype(np.float32)
    a[0, 1, 2] = -np.inf
    return a


def _resample_c(a: np.ndarray, dst) -> np.ndarray:
    """Pillow's Resample.c for mode 'F' written out in numpy: per output pixel a float64 sum over its taps in order
    (ss += in * k, one product and one sum each), stored as float32; the horizontal pass first."""
    def axis(x, out_size, dim):
        first, w, count = (t.numpy() for t in multiscale.pil_bilinear_taps(x.shape[dim], out_size))
        x = np.moveaxis(x, dim, 0).astype(np.float64)
        out = np.empty((out_size, *x.shape[1:]), dtype=np.float32)
        for i in range(out_size):
            ss = np.zeros(x.shape[1:], dtype=np.float64)
            for t in range(count[i]):
                ss = ss + x[first[i] + t] * w[i, t]
            out[i] = ss
        return np.moveaxis(out, 0, dim)
    if a.shape[-1] != dst[1]:
        a = axis(a, dst[1], -1)
    if a.shape[-2] != dst[0]:
        a = axis(a, dst[0], -2)
    return a


@pytest.mark.parametrize("src, dst", RESIZES)
def test_torch_resize_is_resample_c(src, dst):
    """resize_like_pil_torch (the non-CPU path) is Pillow's C arithmetic bit for bit (-inf stays -inf)."""
    a = _maps(src, dst)
    with np.errstate(invalid="ignore"):
        want = _resample_c(a, dst)
    np.testing.assert_array_equal(multiscale.resize_like_pil_torch(torch.from_numpy(a), dst).numpy(), want)


@pytest.mark.parametrize("src, dst", RESIZES)
def test_torch_resize_is_pils(src, dst):
    """resize_like_pil_torch against the installed Pillow, and resize_like_pil (the CPU path: Pillow itself). A
    Pillow wheel's compiled sums may round differently from its C source (docs/evaluation.md): along one axis within
    one float32 ulp of Pillow's value; on two within a few ulps of the inputs' magnitude (a Pillow build may also
    run the passes in the other order)."""
    a = _maps(src, dst)
    want = np.stack([np.asarray(Image.fromarray(c).resize(dst[::-1], Image.BILINEAR)) for c in a])
    got = multiscale.resize_like_pil_torch(torch.from_numpy(a), dst).numpy()
    assert got.shape == want.shape
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    if src[0] == dst[0] or src[1] == dst[1]:
        assert (np.abs(got[finite] - want[finite]) <= np.spacing(np.abs(want[finite]))).all()
    else:
        ulp = np.spacing(np.abs(a[np.isfinite(a)]).max())
        assert np.abs(got[finite] - want[finite]).max() <= 4 * ulp
    np.testing.assert_array_equal(multiscale.resize_like_pil(torch.from_numpy(a), dst).numpy(), want)


def test_pil_taps_by_hand():
    """Enlarging 2 -> 4: plain bilinear (centres at 0.25, 0.75, 1.25, 1.75 of the input, edges clamped);
    shrinking 4 -> 2: the triangle widened to support 2, weights normalised over the taps inside."""
    first, w, count = multiscale.pil_bilinear_taps(2, 4)
    dense = torch.zeros(4, 2, dtype=torch.float64)
    for i in range(4):
        dense[i, first[i]:first[i] + count[i]] = w[i, :count[i]]
    torch.testing.assert_close(dense, torch.tensor([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], dtype=torch.float64))
    first, w, count = multiscale.pil_bilinear_taps(4, 2)
    dense = torch.zeros(2, 4, dtype=torch.float64)
    for i in range(2):
        dense[i, first[i]:first[i] + count[i]] = w[i, :count[i]]
    # centre 1 (output 0): taps at distances 0.5, 0.5, 1.5 (x 1/2 -> 0.75, 0.75, 0.25), normalised
    torch.testing.assert_close(dense, torch.tensor([[3, 3, 1, 0], [0, 1, 3, 3]], dtype=torch.float64) / 7)


def test_fused_logits_low_banded_equals_plain(model):
    """The fused model's logits_low runs the backbone in row bands where predict() would (large CPU inputs):
    the same logits as the plain pass."""
    fused = drn.fuse(model, backend="reference")
    x = torch.randn(1, 3, 45, 70)
    fused.low_memory = False
    plain = fused.logits_low(x)
    fused.low_memory, fused.band_bytes, fused.stem_band_bytes = True, 1 << 14, 1 << 14
    banded = fused.logits_low(x)
    assert banded.shape == (1, 19, 6, 9)
    torch.testing.assert_close(banded, plain, rtol=1e-4, atol=1e-4)
