"""drn_kernels.class_head / localize (backend="triton") against the float64 reference.

The kernel accumulates in fp32 from the dtype's own values, so every dtype is compared with the float64 reference
run on float64 copies of the same (rounded) inputs: labels exact wherever the reference's top-2 margin exceeds
1e-4, probabilities within rel err 1e-5. Without a GPU the kernels run in the Triton interpreter (small shapes).
"""
import pytest
import torch

import drn_kernels
from drn_kernels import reference
from margins import clear_top2

pytestmark = pytest.mark.unit

head_mod = pytest.importorskip("drn_kernels.triton.class_head")

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
]
PROB_RTOL = 1e-5
MARGIN = 1e-4

# (N, C, H, W, K, upsample): K in {1, 2, 19, 1000}, odd sizes; K=1000 x8 only on a tiny map (interpreter speed)
CASES = [
    (3, 5, 5, 7, 1, 1),
    (1, 17, 5, 7, 2, 1),
    (3, 17, 9, 13, 19, 1),
    (1, 33, 3, 5, 1000, 1),
    (1, 5, 3, 5, 1, 8),
    (3, 7, 3, 5, 2, 8),
    (1, 17, 5, 7, 19, 8),
    (1, 9, 2, 3, 1000, 8),
]


def _inputs(n, c, h, w, k, dtype, channels_last, seed=0, weight_2d=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (2 * torch.randn(k, c, 1, 1, generator=g) / c ** 0.5).to(dtype)
    if weight_2d:
        weight = weight.view(k, c)
    bias = torch.randn(k, generator=g).to(dtype)
    return x, weight, bias


def _reference_logits64(x, weight, bias, upsample):
    return reference.class_logits(x.double(), weight.double(), bias.double(), upsample)


def _margin_mask(logits):
    return clear_top2(logits, MARGIN)


def _check_head(labels, probs, x, weight, bias, upsample, label_dtype=torch.int64):
    ref_labels, ref_probs = reference.class_head(x.double(), weight.double().view(weight.shape[0], -1, 1, 1),
                                                 bias.double(), upsample, torch.int64)
    assert labels.shape == ref_labels.shape and labels.dtype == label_dtype
    assert probs.shape == ref_probs.shape and probs.dtype == torch.float32
    assert not torch.isnan(probs).any()
    sure = _margin_mask(_reference_logits64(x, weight, bias, upsample))
    assert sure.float().mean() > 0.9  # the check below must cover most pixels to mean anything
    assert torch.equal(labels.long()[sure], ref_labels[sure])
    rel = ((probs.double() - ref_probs).abs() / ref_probs)[sure]
    assert rel.max().item() <= PROB_RTOL


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs start as garbage (NaN probabilities, labels set to the largest value) so skipped pixels show."""
    real = head_mod.empty_class_head_output

    def poisoned_output(*args, **kwargs):
        labels, probs = real(*args, **kwargs)
        labels.fill_(torch.iinfo(labels.dtype).max)
        return labels, probs.fill_(float("nan"))

    monkeypatch.setattr(head_mod, "empty_class_head_output", poisoned_output)


@pytest.mark.parametrize("case", CASES, ids=[f"K{c[4]}_up{c[5]}" for c in CASES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_class_head_parity(case, dtype, poisoned):
    n, c, h, w, k, upsample = case
    channels_last = CASES.index(case) % 2 == 1
    x, weight, bias = _inputs(n, c, h, w, k, dtype, channels_last, weight_2d=CASES.index(case) % 3 == 0)
    labels, probs = drn_kernels.class_head(x, weight, bias, upsample=upsample, backend="triton")
    _check_head(labels, probs, x, weight, bias, upsample)


@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int16, torch.uint8])
def test_label_dtypes(label_dtype, poisoned):
    x, weight, bias = _inputs(1, 5, 3, 4, 19, torch.float32, False)
    labels, probs = drn_kernels.class_head(x, weight, bias, upsample=8, label_dtype=label_dtype, backend="triton")
    _check_head(labels, probs, x, weight, bias, 8, label_dtype)


@pytest.mark.parametrize("upsample", [1, 8])
def test_ties_take_first_index(upsample):
    # classes 7, 9 (same class tile) and 33 (another tile) are identical and dominate: torch.argmax says 7
    x, weight, bias = _inputs(1, 5, 3, 4, 40, torch.float32, False)
    for k in (9, 33):
        weight[k] = weight[7]
    bias[7] = bias[9] = bias[33] = 50.0
    labels, probs = drn_kernels.class_head(x, weight, bias, upsample=upsample, backend="triton")
    ref_labels, ref_probs = reference.class_head(x, weight, bias, upsample)
    assert (ref_labels == 7).all() and torch.equal(labels, ref_labels)
    torch.testing.assert_close(probs, ref_probs.float(), rtol=PROB_RTOL, atol=0)


@pytest.mark.parametrize("upsample", [1, 8])
def test_nan_wins(upsample):
    # a NaN bias makes class 21 (second class tile) NaN everywhere and class 30 NaN too: the first NaN, 21, wins
    x, weight, bias = _inputs(1, 5, 3, 4, 40, torch.float32, False)
    bias[21] = float("nan")
    bias[30] = float("nan")
    labels, probs = drn_kernels.class_head(x, weight, bias, upsample=upsample, backend="triton")
    ref_labels, ref_probs = reference.class_head(x, weight, bias, upsample)
    assert (ref_labels == 21).all() and torch.equal(labels, ref_labels)
    assert torch.isnan(probs).all() and torch.isnan(ref_probs).all()


def test_nan_pixel():
    x, weight, bias = _inputs(1, 5, 3, 4, 19, torch.float32, True)
    x[0, 2, 1, 2] = float("nan")  # one pixel's logits are all NaN: label 0, probability NaN
    labels, probs = drn_kernels.class_head(x, weight, bias, backend="triton")
    ref_labels, ref_probs = reference.class_head(x, weight, bias)
    assert torch.equal(labels, ref_labels)
    assert torch.equal(torch.isnan(probs), torch.isnan(ref_probs))


def test_deterministic_and_batch_zero():
    x, weight, bias = _inputs(3, 7, 3, 5, 19, torch.float16, True)
    first = drn_kernels.class_head(x, weight, bias, upsample=8, backend="triton")
    second = drn_kernels.class_head(x, weight, bias, upsample=8, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    labels, probs = drn_kernels.class_head(x[:0], weight, bias, upsample=8, backend="triton")
    assert labels.shape == (0, 24, 40) and probs.shape == (0, 24, 40)


# ---- localize -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, threshold", [((2, 6, 5, 7, 4), 0.4), ((3, 17, 4, 9, 19), 0.2),
                                              ((1, 9, 3, 3, 1000), 0.001), ((2, 5, 5, 7, 4), 0.999)],
                         ids=["K4", "K19", "K1000", "none"])
def test_localize_parity(dtype, shape, threshold):
    n, c, h, w, k = shape
    x, weight, bias = _inputs(n, c, h, w, k, dtype, n == 2, seed=3)
    logits, labels, scores, boxes = drn_kernels.localize(x, weight, bias, threshold=threshold, stride=8,
                                                          backend="triton")
    ref = reference.localize(x.double(), weight.double(), bias.double(), threshold, 8)
    ref_logits, ref_labels, ref_scores, ref_boxes = ref
    assert logits.dtype == dtype and logits.shape == (n, k)
    ref_logits_rounded = ref_logits.to(dtype).double()
    # the kernel's only rounding beyond the reference's is its final cast: within one ulp of the dtype
    ulp = torch.finfo(dtype).eps * ref_logits.abs().max().item()
    assert (logits.double() - ref_logits_rounded).abs().max().item() <= ulp + 1e-5 * ref_logits.abs().max().item()
    sure = _margin_mask(_reference_logits64(x, weight, bias, 1))
    assert torch.equal(labels[sure], ref_labels[sure]) and labels.dtype == torch.int64
    assert ((scores.double() - ref_scores).abs() / ref_scores)[sure].max().item() <= PROB_RTOL
    near = (ref_scores - threshold).abs() < 1e-5
    if sure.all() and not near.any():
        assert torch.equal(boxes, ref_boxes.float())
    if threshold == 0.999:
        assert (boxes == -1).all()
        return
    # every box is the one its own labels and scores draw (cells of the top-1 class above the threshold), written
    # out here cell by cell; the image's top-1 class is taken from the float64 reference where it is clear
    top2 = ref_logits.topk(2, dim=1).values
    for i in range(n):
        if top2[i, 0] - top2[i, 1] <= 1e-3:
            continue
        top = int(ref_logits[i].argmax())
        cells = [(r, q) for r in range(h) for q in range(w)
                 if labels[i, r, q] == top and scores[i, r, q] > threshold]
        want = [-1.0] * 4 if not cells else [8.0 * min(q for _, q in cells), 8.0 * min(r for r, _ in cells),
                                              8.0 * (max(q for _, q in cells) + 1), 8.0 * (max(r for r, _ in cells) + 1)]
        assert boxes[i].tolist() == want, i
    assert (boxes[:, 0] >= 0).any()  # these cases do draw boxes


def test_localize_deterministic_and_batch_zero():
    x, weight, bias = _inputs(2, 6, 5, 7, 40, torch.float32, True)
    first = drn_kernels.localize(x, weight, bias, threshold=0.1, backend="triton")
    second = drn_kernels.localize(x, weight, bias, threshold=0.1, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    out = drn_kernels.localize(x[:0], weight, bias, threshold=0.1, backend="triton")
    assert [tuple(t.shape) for t in out] == [(0, 40), (0, 5, 7), (0, 5, 7), (0, 4)]


# ---- real sizes on a GPU ------------------------------------------------------------------------------------

# (1, 512, 128, 256, 19, 8): the benchmarked head, 19 classes of drn_d_22/38 segmentation at 1024x2048
GPU_CASES = [(2, 512, 64, 128, 19, 8), (1, 512, 128, 256, 19, 8), (2, 512, 28, 28, 1000, 1),
             (1, 512, 16, 32, 1000, 8), (3, 37, 45, 61, 7, 8)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=[f"K{c[4]}_up{c[5]}_{c[2]}x{c[3]}" for c in GPU_CASES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_class_head_parity_gpu(case, dtype, poisoned):
    n, c, h, w, k, upsample = case
    x, weight, bias = (t.cuda() for t in _inputs(n, c, h, w, k, dtype, True))
    labels, probs = drn_kernels.class_head(x, weight, bias, upsample=upsample, backend="triton")
    _check_head(labels, probs, x, weight, bias, upsample)  # float64 reference on the GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_localize_parity_gpu(dtype):
    x, weight, bias = _inputs(4, 512, 28, 28, 1000, dtype, True, seed=5)
    out = drn_kernels.localize(x.cuda(), weight.cuda(), bias.cuda(), threshold=0.01, backend="triton")
    logits, labels, scores, boxes = (t.cpu() for t in out)
    ref_logits, ref_labels, ref_scores, ref_boxes = reference.localize(x.double(), weight.double(), bias.double(),
                                                                       0.01, 8)
    sure = _margin_mask(_reference_logits64(x, weight, bias, 1))
    assert torch.equal(labels[sure], ref_labels[sure])
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-2 if dtype != torch.float32 else 1e-5,
                               atol=1e-3 if dtype != torch.float32 else 1e-5)
    if sure.all():
        assert torch.equal(boxes, ref_boxes.float())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_forced_int64_gpu(monkeypatch, dtype, poisoned):
    """The int64-offset kernels (what a > 2**31-element tensor gets) at a small size, both stages of upsample=8."""
    monkeypatch.setattr("drn_kernels.triton.common._force_int64", True)
    n, c, h, w, k, upsample = GPU_CASES[4]
    x, weight, bias = (t.cuda() for t in _inputs(n, c, h, w, k, dtype, True))
    labels, probs = drn_kernels.class_head(x, weight, bias, upsample=upsample, backend="triton")
    _check_head(labels, probs, x, weight, bias, upsample)
