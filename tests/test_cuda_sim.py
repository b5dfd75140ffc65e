"""backend="cuda-sim": the CUDA kernels (csrc/cuda) run on CPU tensors through the SIMT host shim (csrc/sim).

Parity against the float64 reference on tiny shapes (every CUDA thread is an OS thread), the ThreadSanitizer
race check with its negative control, and the static records of the CUDA cubins (drn_kernels._cuda_cubins).
"""
import zlib

import pytest
import torch

import drn_kernels
from helpers import skip_or_fail_unbuilt
from drn_kernels import _cuda_cubins, _sim, reference
from margins import clear_top2

pytestmark = pytest.mark.build


@pytest.fixture(scope="module", autouse=True)
def _simulator():
    """Builds the simulator (first use, cached in the torch extensions dir) when a test here runs, not when the
    module is collected; skips, or fails under --require-build, when it does not build."""
    reason = _sim.why_unavailable()
    if reason is not None:
        skip_or_fail_unbuilt("cuda-sim", reason)


BACKEND = "cuda-sim"

# (dtype, atol, rtol) for float32 against float64; low precision is judged against torch's own error instead.
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float16, None, None), (torch.bfloat16, None, None)]

# Every conv kind a DRN uses: (C, K, R, stride, padding, dilation, H, W).
CONV_KINDS = {
    "stem7x7_s1": (3, 7, 7, 1, 3, 1, 9, 8),
    "stem7x7_s2": (3, 9, 7, 2, 3, 1, 9, 9),
    "3x3_s1": (17, 19, 3, 1, 1, 1, 7, 5),
    "3x3_s2": (8, 16, 3, 2, 1, 1, 9, 7),
    "3x3_d2": (16, 7, 3, 1, 2, 2, 6, 7),
    "3x3_d4": (5, 24, 3, 1, 4, 4, 9, 6),
    "1x1_s1": (20, 19, 1, 1, 0, 1, 5, 7),
    "1x1_s2": (16, 24, 1, 2, 0, 1, 9, 7),
}


def _gen(shape, dtype, scale=1.0, channels_last=False):
    t = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def _assert_close_to_reference(out, ref64, ref_same, atol, rtol):
    """float32: plain tolerance. fp16/bf16: within 2x torch's own same-dtype error vs float64 (+ eps)."""
    out, ref64 = out.double(), ref64.double()
    assert torch.isfinite(out).all(), "non-finite output (unwritten element?)"
    if atol is not None:
        torch.testing.assert_close(out, ref64, atol=atol, rtol=rtol)
        return
    ours = (out - ref64).abs().max().item()
    theirs = (ref_same.double() - ref64).abs().max().item()
    assert ours <= 2 * theirs + 1e-5, f"max error {ours:.3g} > 2 x torch's {theirs:.3g}"


def _conv_case(kind, dtype, batch=1, residual=True, relu=True, channels_last=False):
    c, k, r, stride, padding, dilation, h, w = CONV_KINDS[kind]
    x = _gen((batch, c, h, w), dtype, channels_last=channels_last)
    weight = _gen((k, c, r, r), dtype, scale=(c * r * r) ** -0.5)
    bias = _gen((k,), dtype)
    p = (h + 2 * padding - dilation * (r - 1) - 1) // stride + 1
    q = (w + 2 * padding - dilation * (r - 1) - 1) // stride + 1
    res = _gen((batch, k, p, q), dtype, channels_last=not channels_last) if residual else None
    args = dict(stride=stride, padding=padding, dilation=dilation, residual=res, relu=relu)
    return x, weight, bias, args


@pytest.mark.parametrize("kind", list(CONV_KINDS))
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_conv_bn_act_matches_reference(kind, dtype, atol, rtol):
    torch.manual_seed(zlib.crc32(kind.encode()) % 1000)  # stable across processes
    x, weight, bias, args = _conv_case(kind, dtype, residual=kind.startswith("3x3"), relu=kind != "1x1_s2")
    out = drn_kernels.conv_bn_act(x, weight, bias, backend=BACKEND, **args)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    res = args.pop("residual")
    conv = dict(stride=[args["stride"]] * 2, padding=[args["padding"]] * 2, dilation=[args["dilation"]] * 2)
    ref64 = reference.conv_bn_act(x.double(), weight.double(), bias.double(), **conv,
                                  residual=None if res is None else res.double(), relu=args["relu"])
    ref_same = reference.conv_bn_act(x, weight, bias, **conv, residual=res, relu=args["relu"])
    assert out.shape == ref64.shape
    _assert_close_to_reference(out, ref64, ref_same, atol, rtol)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_conv_bn_act_batch3_channels_last_and_views(dtype, atol, rtol):
    torch.manual_seed(1)
    x, weight, bias, args = _conv_case("3x3_s1", dtype, batch=3, channels_last=True)
    weight = weight.contiguous(memory_format=torch.channels_last)  # the free (K,R,S,C) view
    out = drn_kernels.conv_bn_act(x, weight, bias, backend=BACKEND, **args)
    ref64 = drn_kernels.conv_bn_act(x.double(), weight.double(), bias.double(), backend="reference",
                                    **{**args, "residual": args["residual"].double()})
    ref_same = drn_kernels.conv_bn_act(x, weight, bias, backend="reference", **args)
    _assert_close_to_reference(out, ref64, ref_same, atol, rtol)
    # A strided view (storage offset breaks 16-byte alignment: the scalar-gather path) gives the same answer.
    big = _gen((3, 18, 7, 5), dtype)
    view = big[:, 1:]
    out_view = drn_kernels.conv_bn_act(view, weight, bias, backend=BACKEND, **args)
    out_copy = drn_kernels.conv_bn_act(view.contiguous(), weight, bias, backend=BACKEND, **args)
    assert torch.equal(out_view, out_copy)


# The vector path's reduction iterator (r, s, c stepped by one 64-byte slice, carried across taps): channel counts
# below, equal to and between multiples of a slice (fp16: 32 channels, fp32: 16), rectangular kernels, strides,
# dilations, several row and column blocks.
ITERATOR_CASES = [  # (C, K, R, S, stride, padding, dilation, H, W)
    (8, 70, 3, 3, 1, 1, 1, 9, 11),
    (24, 9, 3, 1, 2, (1, 0), 1, 13, 6),
    (40, 33, 3, 3, 1, 2, 2, 7, 9),
    (48, 16, 1, 3, 1, (0, 4), 4, 5, 12),
    (72, 5, 3, 3, 2, 1, 1, 9, 8),
    (16, 17, 5, 3, 1, (4, 2), (2, 1), 6, 7),
]


@pytest.mark.parametrize("case", ITERATOR_CASES, ids=[f"c{c[0]}" for c in ITERATOR_CASES])
@pytest.mark.parametrize("dtype,atol,rtol", [DTYPES[0], DTYPES[1]])
def test_conv_bn_act_vector_iterator(case, dtype, atol, rtol):
    c, k, r, s, stride, padding, dilation, h, w = case
    torch.manual_seed(c * 7 + k)
    x = _gen((1, c, h, w), dtype, channels_last=True)
    weight = _gen((k, c, r, s), dtype, scale=(c * r * s) ** -0.5)
    bias = _gen((k,), dtype)
    conv = dict(stride=stride, padding=padding, dilation=dilation)
    out = drn_kernels.conv_bn_act(x, weight, bias, backend=BACKEND, relu=False, **conv)
    ref64 = drn_kernels.conv_bn_act(x.double(), weight.double(), bias.double(), backend="reference", relu=False,
                                    **conv)
    ref_same = drn_kernels.conv_bn_act(x, weight, bias, backend="reference", relu=False, **conv)
    _assert_close_to_reference(out, ref64, ref_same, atol, rtol)


def test_conv_bn_act_deterministic_and_empty_batch():
    torch.manual_seed(2)
    x, weight, bias, args = _conv_case("3x3_d2", torch.float16)
    a = drn_kernels.conv_bn_act(x, weight, bias, backend=BACKEND, **args)
    b = drn_kernels.conv_bn_act(x, weight, bias, backend=BACKEND, **args)
    assert torch.equal(a, b)
    empty = drn_kernels.conv_bn_act(x[:0], weight, bias, backend=BACKEND, **{**args, "residual": None})
    assert empty.shape == (0,) + a.shape[1:]


def _head_logits64(x, weight, bias, upsample):
    return reference.class_logits(x.double(), weight.double(), bias.double(), upsample)


@pytest.mark.parametrize("upsample", [1, 8])
@pytest.mark.parametrize("k", [1, 3, 19])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_class_head_matches_reference(upsample, k, dtype):
    torch.manual_seed(10 * k + upsample)
    n, c, h, w = (1, 5, 5, 7) if upsample == 8 else (3, 17, 5, 7)
    x = _gen((n, c, h, w), dtype, channels_last=k == 3)
    weight = _gen((k, c, 1, 1) if k != 3 else (k, c), dtype)
    bias = _gen((k,), dtype)
    labels, probs = drn_kernels.class_head(x, weight, bias, upsample=upsample, backend=BACKEND)
    ref_labels, ref_probs = reference.class_head(x.double(), weight.double().view(k, c, 1, 1), bias.double(),
                                                 upsample)
    assert labels.shape == ref_labels.shape == (n, h * upsample, w * upsample)
    assert labels.dtype == torch.int64 and probs.dtype == torch.float32
    mask = clear_top2(_head_logits64(x, weight, bias, upsample), 1e-4)
    assert mask.float().mean() > 0.9
    assert torch.equal(labels[mask], ref_labels[mask])
    torch.testing.assert_close(probs.double()[mask], ref_probs[mask], atol=1e-5, rtol=1e-4)


def test_class_head_label_dtypes_and_nan():
    torch.manual_seed(3)
    x = _gen((1, 6, 4, 5), torch.float32)
    weight, bias = _gen((19, 6, 1, 1), torch.float32), _gen((19,), torch.float32)
    ref_labels, _ = drn_kernels.class_head(x, weight, bias, upsample=8, backend="reference")
    for label_dtype in (torch.int32, torch.int16, torch.uint8):
        labels, _ = drn_kernels.class_head(x, weight, bias, upsample=8, label_dtype=label_dtype, backend=BACKEND)
        assert labels.dtype == label_dtype and torch.equal(labels.long(), ref_labels)
    # torch.argmax rules: a NaN logit wins (first NaN), and its probability is NaN.
    bias_nan = bias.clone()
    bias_nan[[4, 11]] = float("nan")
    labels, probs = drn_kernels.class_head(x, weight, bias_nan, backend=BACKEND)
    ref_labels, ref_probs = drn_kernels.class_head(x, weight, bias_nan, backend="reference")
    assert torch.equal(labels, ref_labels) and (labels == 4).all() and probs.isnan().all()


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("threshold", [0.3, 1.5])
def test_localize_matches_reference(dtype, atol, rtol, threshold):
    torch.manual_seed(4)
    n, c, h, w, k = 3, 9, 5, 7, 7
    x = _gen((n, c, h, w), dtype)
    weight, bias = _gen((k, c, 1, 1), dtype), _gen((k,), dtype)
    logits, labels, scores, boxes = drn_kernels.localize(x, weight, bias, threshold=threshold, backend=BACKEND)
    r_logits, r_labels, r_scores, r_boxes = reference.localize(x.double(), weight.double(), bias.double(),
                                                               threshold, 8)
    assert logits.dtype == dtype and labels.dtype == torch.int64 and scores.dtype == boxes.dtype == torch.float32
    same = reference.localize(x, weight, bias, threshold, 8)[0]
    _assert_close_to_reference(logits, r_logits, same, atol, rtol)
    mask = clear_top2(_head_logits64(x, weight, bias, 1), 1e-4)
    assert mask.all(), "test data has a near tie; pick another seed"
    assert torch.equal(labels, r_labels)
    torch.testing.assert_close(scores.double(), r_scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(boxes, r_boxes.float(), atol=0, rtol=0)
    if threshold > 1:
        assert (boxes == -1).all()
    else:
        assert (boxes >= 0).any()


# ---- ThreadSanitizer -------------------------------------------------------------------------------------------

def test_no_data_race_under_thread_sanitizer():
    try:
        proc = _sim.run_race_check(drop_sync=False)
    except RuntimeError as exc:
        skip_or_fail_unbuilt("the ThreadSanitizer race check", str(exc))
    assert "WARNING: ThreadSanitizer" not in proc.stderr, proc.stderr[:4000]
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr[:2000]


def test_thread_sanitizer_reports_a_missing_syncthreads():
    """Negative control: without the main loop's __syncthreads the shim must show the race, at that loop."""
    try:
        proc = _sim.run_race_check(drop_sync=True)
    except RuntimeError as exc:
        skip_or_fail_unbuilt("the ThreadSanitizer race check", str(exc))
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert "conv_bn_act_kernel.cuh" in proc.stderr


# ---- static records of the CUDA cubins --------------------------------------------------------------------------

def test_cuda_cubin_records():
    reason = _cuda_cubins.why_unavailable()
    if reason is not None:
        skip_or_fail_unbuilt("the CUDA extension's cubins", reason)
    records = _cuda_cubins.cuda_records()
    keys = {"source", "kernel", "arch", "dtype", "config", "registers", "spill_bytes", "shared_bytes",
            "tensor_core_instructions", "wgmma_instructions"}
    assert records and all(set(r) == keys and r["source"] == "cuda" for r in records)
    assert {r["arch"] for r in records} == {"sm_80", "sm_90"}
    for r in records:
        assert r["spill_bytes"] == 0, r
        assert 0 < r["registers"] <= 255, r
    conv = [r for r in records if r["kernel"] == "conv_bn_act_kernel"]
    assert {(r["arch"], r["dtype"]) for r in conv} >= {(a, d) for a in ("sm_80", "sm_90")
                                                        for d in ("fp16", "bf16", "fp32")}
    for r in conv:
        if r["dtype"] in ("fp16", "bf16"):
            assert r["tensor_core_instructions"] > 0, r
        assert r["shared_bytes"] >= 30720, r


def test_cuda_conv_main_loop_mix():
    """Static proof from the SASS, per 32-deep slice of the 16-bit main loop: fragments come from 8 ldmatrix.x4
    (LDSM; before: 35 32-bit LDS), and the vector (cp.async) instances step (r, s, c) incrementally, so their loop
    holds no integer division (0 MUFU/I2F/F2I; before: 12) and at most 9 other instructions per HMMA (measured:
    7.0 on sm_80, 8.7 on sm_90a; before: 17.6 and 17.9)."""
    reason = _cuda_cubins.why_unavailable()
    if reason is not None:
        skip_or_fail_unbuilt("the CUDA extension's cubins", reason)
    lib = _cuda_cubins._extension_library()
    cubins = {None: lib} if lib is not None else _cuda_cubins.build_cubins()
    mixes = {}
    for arch, path in cubins.items():
        mixes.update(_cuda_cubins.main_loop_mixes(path, arch))
    conv16 = {key: mix for key, mix in mixes.items() if key[1] == "conv_bn_act_kernel" and key[2] != "fp32"}
    assert {(key[0], key[2]) for key in conv16} >= {(a, d) for a in ("sm_80", "sm_90") for d in ("fp16", "bf16")}
    for key, mix in conv16.items():
        assert mix["mma"] == 16 and mix["ldsm"] == 8, (key, mix)
        if "cp.async16" in key[3]:
            assert mix["division_ops"] == 0 and mix["non_mma_per_mma"] <= 9, (key, mix)
    fp32 = [mix for key, mix in mixes.items() if key[1] == "conv_bn_act_kernel" and key[2] == "fp32"
            and "cp.async16" in key[3]]
    assert fp32 and all(mix["division_ops"] == 0 for mix in fp32)
