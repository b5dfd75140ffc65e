"""backend="cuda-sim": the CUDA kernels (csrc/cuda) run on CPU tensors through the SIMT host shim (csrc/sim).

Parity against the float64 reference on tiny shapes (every CUDA thread is an OS thread), the ThreadSanitizer
race check with its negative control, and the static records of the CUDA cubins (drn_kernels._build.cuda_cubins).
"""
import zlib

import pytest
import torch

import drn_kernels
from drn_kernels import reference
from drn_kernels._build import cuda_cubins as _cuda_cubins
from drn_kernels._build import sim as _sim
from helpers import skip_or_fail_unbuilt
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


# Every block tile of the CUDA conv (host_ops.cuh ConvTileId: 0 64x64 3 stages, 1 128x128, 2 128x64, 3 64x128, 4
# stages), forced through the simulator's test op, against float64. Shapes are small but every tile is exercised
# whole and cut: M = BM + 7 output pixels (one full row tile and one ragged), K = BN + 8 channels (likewise), C
# not a multiple of a 64-byte slice, a 3x3 reduction of 7 slices (more than any ring's stages, so the ring wraps),
# the output poisoned with NaN before the launch; the shim's bank-conflict counters must not move.
TILES = {0: (64, 64), 1: (128, 128), 2: (128, 64), 3: (64, 128)}
# (batch, stride, dilation, residual, channels_last); padding = dilation ("same" at stride 1)
TILE_CASES = [(1, 1, 1, True, True), (2, 2, 2, False, False), (1, 1, 4, True, False), (1, 2, 1, False, True)]


def _tile_case(tile, dtype, batch, stride, dilation, channels_last):
    """x, weight, bias for a layer whose output has about BM + 7 pixels and BN + 8 channels under `tile`."""
    bm, bn = TILES[tile]
    c = 24 if dtype != torch.float32 else 12  # 16-byte chunks (vector path), 0.75 slice per tap: 7 slices
    k = bn + 8
    q = 11
    p = -(-(bm + 7) // (q * batch))  # output rows per image
    h, w = p * stride, q * stride
    x = _gen((batch, c, h, w), dtype, channels_last=channels_last)
    weight = _gen((k, c, 3, 3), dtype, scale=(9 * c) ** -0.5)
    bias = _gen((k,), dtype)
    return x, weight, bias


@pytest.mark.parametrize("case", TILE_CASES, ids=[f"n{c[0]}s{c[1]}d{c[2]}{'res' if c[3] else ''}"
                                                  f"{'cl' if c[4] else ''}" for c in TILE_CASES])
@pytest.mark.parametrize("tile", list(TILES), ids=[f"{m}x{n}" for m, n in TILES.values()])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=["fp32", "fp16", "bf16"])
def test_conv_bn_act_every_tile(tile, case, dtype, atol, rtol):
    batch, stride, dilation, with_res, channels_last = case
    torch.manual_seed(100 * tile + 10 * dilation + stride)
    x, weight, bias = _tile_case(tile, dtype, batch, stride, dilation, channels_last)
    conv = dict(stride=[stride] * 2, padding=[dilation] * 2, dilation=[dilation] * 2)
    ref_shape = reference.conv_bn_act(x[:1].double(), weight.double(), bias.double(), **conv, residual=None,
                                      relu=False).shape
    res = _gen((batch, *ref_shape[1:]), dtype, channels_last=not channels_last) if with_res else None
    conflicts = torch.ops.drn.sim_bank_conflicts()
    out, launched = torch.ops.drn.conv_bn_act_sim_tile(x, weight, bias, conv["stride"], conv["padding"],
                                                       conv["dilation"], res, True, tile, True)
    assert launched == tile
    assert torch.ops.drn.sim_bank_conflicts() == conflicts  # the swizzled layout: no ldmatrix / cp.async conflict
    bm, bn = TILES[tile]
    m = out.shape[0] * out.shape[2] * out.shape[3]
    assert bm < m < 2 * bm and bn < out.shape[1] < 2 * bn  # one whole and one ragged tile each way
    ref64 = reference.conv_bn_act(x.double(), weight.double(), bias.double(), **conv,
                                  residual=None if res is None else res.double(), relu=True)
    ref_same = reference.conv_bn_act(x, weight, bias, **conv, residual=res, relu=True)
    assert out.dtype == dtype and out.shape == ref64.shape
    _assert_close_to_reference(out, ref64, ref_same, atol, rtol)


@pytest.mark.parametrize("tile", list(TILES))
def test_conv_every_tile_batch0_and_scalar_gather(tile):
    """Batch 0 returns an empty output; a layer the vector path cannot take (C = 3: the scalar gather) and the
    poisoned output still come out right with 64x64 whatever tile is asked for."""
    torch.manual_seed(7 + tile)
    x, weight, bias = _gen((1, 3, 9, 8), torch.float16), _gen((9, 3, 3, 3), torch.float16), _gen((9,), torch.float16)
    one, conv = [1, 1], dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1])
    out, launched = torch.ops.drn.conv_bn_act_sim_tile(x, weight, bias, one, one, one, None, False, tile, True)
    assert launched == 0
    ref64 = reference.conv_bn_act(x.double(), weight.double(), bias.double(), **conv, residual=None, relu=False)
    ref_same = reference.conv_bn_act(x, weight, bias, **conv, residual=None, relu=False)
    _assert_close_to_reference(out, ref64, ref_same, None, None)
    x = _gen((0, 16, 5, 5), torch.float16)
    weight = _gen((8, 16, 3, 3), torch.float16)
    empty, _ = torch.ops.drn.conv_bn_act_sim_tile(x, weight, bias[:8], one, one, one, None, True, tile, True)
    assert empty.shape == (0, 8, 5, 5)
    with pytest.raises(ValueError, match="tile must be -1..3"):
        torch.ops.drn.conv_bn_act_sim_tile(x, weight, bias[:8], one, one, one, None, True, 4 + tile, True)


def test_conv_tile_rule():
    """The host rule (host_ops.cuh conv_tile_rule): the least roofline bound of drn_kernels/perf_model.py's H100
    figures. 16-bit: big layers take 128x128 (half the L2 bytes per FLOP of 64x64), K = 64 takes 128x64 (a
    128-wide tile would issue masked columns), a one-tile grid 64x64; tiles that need more shared memory than the
    device allows are skipped. fp32 (FFMA-bound in the model: only the last wave's tail differs) keeps 64x64."""
    rule = torch.ops.drn.conv_tile_rule
    h100 = dict(sms=132, smem_optin=227 * 1024)
    assert rule(8 * 28 * 28, 512, 2, **h100) == 1          # drn_c_42 layer4/5 at batch 8 @224: 128x128
    assert rule(8 * 128 * 256, 128, 2, **h100) == 1        # 1024x2048 input, 128 channels
    assert rule(8 * 28 * 28, 64, 2, **h100) == 2           # K = 64: 128x64
    assert rule(8 * 1024 * 2048, 16, 2, **h100) == 2       # thin layer: 128x64
    assert rule(8 * 28 * 28, 128, 2, **h100) == 1          # 98 tiles: 128x128 still wins (L2-bound)
    assert rule(100, 16, 2, **h100) == 0                   # one tile: the smallest issues the least
    assert rule(8 * 28 * 28, 512, 2, sms=132, smem_optin=48 * 1024) == 2  # 128x128's 64 KB not allowed
    assert rule(8 * 28 * 28, 512, 4, **h100) == 0


def test_conv_tile_rule_agrees_with_perf_model():
    """On every layer the benchmarks time, the tile the host rule picks has the least perf_model bound among the
    four CUDA tiles (within 1%: the rule leaves out the model's DRAM roof, the output bytes and the rounding of C
    to a slice, which hardly differ between tiles), on an H100 and an H200."""
    from benchmarks import perf_model as bench_model
    from drn_kernels import perf_model

    tiles = {0: perf_model.Tile(64, 64, 32, 4, 3), 1: perf_model.Tile(128, 128, 32, 8, 4),
             2: perf_model.Tile(128, 64, 32, 4, 4), 3: perf_model.Tile(64, 128, 32, 4, 4)}
    for device in (perf_model.DEVICES["H100"], perf_model.DEVICES["H200"]):
        for name, layer in bench_model.layers():
            rule = torch.ops.drn.conv_tile_rule(layer.m, layer.k, 2, device.sms, 227 * 1024)
            bounds = {i: perf_model.bound(layer, tile, device).seconds for i, tile in tiles.items()}
            assert bounds[rule] <= 1.01 * min(bounds.values()), (device.name, name, rule, bounds)


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
            "tensor_core_instructions", "wgmma_instructions", "ldsm", "calls", "loop_exit_calls", "division_ops",
            "main_loop"}
    assert records and all(set(r) == keys and r["source"] == "cuda" for r in records)
    assert {r["arch"] for r in records} == {"sm_80", "sm_90"}
    for r in records:
        assert r["spill_bytes"] == 0, r
        assert 0 < r["registers"] <= 255, r
    conv = [r for r in records if r["kernel"] == "conv_bn_act_kernel"]
    tiles = {"BM64_BN64": 3 * 128 * 64, "BM128_BN128": 4 * 256 * 64, "BM128_BN64": 4 * 192 * 64,
             "BM64_BN128": 4 * 192 * 64}  # stages x (BM + BN) rows x 64 bytes
    assert {(r["arch"], r["dtype"], r["config"].split("_BK")[0]) for r in conv if "cp.async16" in r["config"]} == {
        (a, d, t) for a in ("sm_80", "sm_90") for d in ("fp16", "bf16", "fp32") for t in tiles}
    for r in conv:
        if r["dtype"] in ("fp16", "bf16"):
            assert r["tensor_core_instructions"] > 0 and r["ldsm"] > 0, r
        # no out-of-line routine and no integer division anywhere in the kernel
        assert r["calls"] == 0 and r["division_ops"] == 0, r
        dynamic = tiles[r["config"].split("_BK")[0]]
        assert dynamic <= r["shared_bytes"] <= dynamic + 1024, r  # + sm_90's 1 KB reserved static


def test_cuda_conv_main_loop_mix():
    """Static proof from the SASS, per 32-deep slice of the 16-bit main loop (nvcc 13.0): fragments come from
    ldmatrix.x4 (LDSM: 8 per slice for a 32x32 warp tile, 12 for 64x32 / 32x64), no integer division, and the
    other instructions per HMMA fall with the tile (the counts per tile and arch: benchmarks/results/
    aot_summary.txt)."""
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
    limits = {"BM64_BN64": 9, "BM128_BN128": 4.5, "BM128_BN64": 5.5, "BM64_BN128": 5.5}  # non-MMA per HMMA
    for key, mix in conv16.items():
        tile = key[3].split("_BK")[0]
        big = tile != "BM64_BN64"
        assert mix["mma"] == (32 if big else 16) and mix["ldsm"] == (12 if big else 8), (key, mix)
        assert mix["division_ops"] == 0 and mix["calls"] == 0, (key, mix)
        if "cp.async16" in key[3]:
            assert mix["non_mma_per_mma"] <= limits[tile], (key, mix)
    fp32 = [mix for key, mix in mixes.items() if key[1] == "conv_bn_act_kernel" and key[2] == "fp32"]
    assert fp32 and all(mix["division_ops"] == 0 and mix["ffma"] > 0 for mix in fp32)


def test_call_counts_tell_loop_exits_from_calls():
    exit_idiom = ("        /*0100*/               @P1 CALL.REL.NOINC 0x0120 ;\n"
                  "        /*0110*/                   BRA 0x0040 ;\n"
                  "        /*0120*/                   EXIT ;\n")
    real_call = ("        /*0100*/                   CALL.REL.NOINC 0x0400 ;\n"
                 "        /*0110*/                   BRA 0x0040 ;\n")
    assert _cuda_cubins.call_counts(exit_idiom) == (0, 1)
    assert _cuda_cubins.call_counts(real_call) == (1, 0)
