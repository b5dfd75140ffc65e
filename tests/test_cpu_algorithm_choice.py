"""The cpu backend's algorithm choice by measurement (drn_kernels.prepared): a PreparedConv
times Winograd F(4x4,3x3), F(2x2,3x3) and oneDNN's direct convolution at the first call of a shape and keeps the
fastest; the choice is one of the candidates, repeats are bit-identical, DRN_CPU_CONV pins it, and every
candidate computes the float64 reference's answer. No timing is asserted."""
import pytest
import torch
import torch.nn.functional as F

import drn_kernels
from drn_kernels import prepared as prep
from helpers import require_backend
from tolerance import FACTOR

pytestmark = pytest.mark.build

CL = torch.channels_last


def _cpu():
    require_backend("cpu")


def _rand(*shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) * 2 - 1) * scale


def _ref(x, w, b, padding, dilation):
    return F.conv2d(x.double(), w.double(), b.double(), padding=padding, dilation=dilation).relu()


def _case(c, k, h, w, seed):
    x = _rand(1, c, h, w, seed=seed).contiguous(memory_format=CL)
    return x, _rand(k, c, 3, 3, seed=seed + 1, scale=0.05), _rand(k, seed=seed + 2)


@pytest.fixture(autouse=True)
def _auto(cpu_settings):
    cpu_settings.unset("DRN_CPU_CONV")
    cpu_settings.unset("DRN_WINOGRAD_TILE")


@pytest.mark.parametrize("dil", [1, 2])
def test_choice_is_a_candidate_and_repeats_bit_identical(dil):
    _cpu()
    x, w, b = _case(64, 72, 13, 11, seed=10 * dil)
    conv = prep.PreparedConv(w, b, "cpu")
    n_searches = len(prep.SEARCHES)
    y = conv.conv_bn_act(x, stride=1, padding=dil, dilation=dil)
    chosen = conv.algorithm(x, (1, 1), (dil, dil), (dil, dil))
    assert chosen in prep.CANDIDATES
    record = prep.SEARCHES[-1]
    assert len(prep.SEARCHES) == n_searches + 1 and record["chosen"] == chosen
    assert set(record["median_s"]) == set(prep.CANDIDATES) and conv.search_seconds > 0
    # only the Winograd form of the tile kept stays in memory
    assert set(conv.winograd) == ({int(chosen[-1])} if chosen.startswith("winograd") else set())
    torch.testing.assert_close(y.double(), _ref(x, w, b, dil, dil), atol=1e-4, rtol=1e-4)
    for _ in range(2):
        assert torch.equal(conv.conv_bn_act(x, stride=1, padding=dil, dilation=dil), y)
    twin = prep.PreparedConv(w.clone(), b.clone(), "cpu")  # same shape: the process's choice, no new search
    assert torch.equal(twin.conv_bn_act(x, stride=1, padding=dil, dilation=dil), y)
    assert len(prep.SEARCHES) == n_searches + 1 and twin.search_seconds == 0
    assert twin.algorithm(x, (1, 1), (dil, dil), (dil, dil)) == chosen


@pytest.mark.parametrize("mode, tile, expect", [("direct", "", "onednn"), ("winograd", "2", "winograd2"),
                                                ("winograd", "4", "winograd4"), ("winograd", "", "winograd4")])
def test_setting_pins_the_choice(cpu_settings, mode, tile, expect):
    _cpu()
    cpu_settings.set("DRN_CPU_CONV", mode)
    cpu_settings.set("DRN_WINOGRAD_TILE", tile)
    x, w, b = _case(64, 64, 9, 10, seed=7)
    conv = prep.PreparedConv(w, b, "cpu")
    n_searches = len(prep.SEARCHES)
    y = conv.conv_bn_act(x, stride=1, padding=1, dilation=1)
    assert conv.algorithm(x, (1, 1), (1, 1), (1, 1)) == expect and len(prep.SEARCHES) == n_searches
    assert set(conv.winograd) == ({int(expect[-1])} if expect.startswith("winograd") else set())
    assert torch.equal(y, drn_kernels.conv_bn_act(x, w, b, padding=1, backend="cpu"))  # the op's own pick


def test_each_candidate_matches_float64_and_is_what_runs():
    """The prepared op runs the algorithm its form names: the three candidates' outputs all equal the float64
    reference, and differ from each other in the last bits (three different computations)."""
    _cpu()
    x, w, b = _case(64, 64, 14, 9, seed=3)
    forms = {"winograd4": torch.ops.drn.winograd_weight(w, 4), "winograd2": torch.ops.drn.winograd_weight(w, 2),
             "onednn": torch.ops.drn.onednn_weight(w, [2, 2], [1, 1], [2, 2], list(x.shape))}
    outs = {n: torch.ops.drn.conv_bn_act_prepared_native(x, w, b, f, [1, 1], [2, 2], [2, 2], None, True)
            for n, f in forms.items()}
    ref = _ref(x, w, b, 2, 2)
    for name, y in outs.items():
        torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4, msg=name)
    assert not torch.equal(outs["winograd4"], outs["winograd2"])
    assert not torch.equal(outs["winograd4"], outs["onednn"])
    with pytest.raises(ValueError, match="tile"):
        torch.ops.drn.winograd_weight(w, 3)


def test_no_search_where_only_one_algorithm_applies(cpu_settings):
    _cpu()
    x, w, b = _case(16, 16, 9, 10, seed=5)  # under 64 channels: oneDNN only
    conv = prep.PreparedConv(w, b, "cpu")
    n_searches = len(prep.SEARCHES)
    conv.conv_bn_act(x, stride=1, padding=1, dilation=1)
    assert conv.algorithm(x, (1, 1), (1, 1), (1, 1)) == "onednn" and len(prep.SEARCHES) == n_searches
    x2, w2, b2 = _case(64, 64, 9, 10, seed=7)  # stride 2: oneDNN only
    conv = prep.PreparedConv(w2, b2, "cpu")
    conv.conv_bn_act(x2, stride=2, padding=1, dilation=1)
    assert conv.algorithm(x2, (2, 2), (1, 1), (1, 1)) == "onednn"
    assert len(prep.SEARCHES) == n_searches
    with pytest.raises(ValueError, match="DRN_CPU_CONV"):  # where the value is passed on, or where it is read
        cpu_settings.set("DRN_CPU_CONV", "fastest")
        prep.PreparedConv(w, b, "cpu").conv_bn_act(x, stride=1, padding=1, dilation=1)


def test_bfloat16_search_follows_the_cpu():
    """bfloat16 3x3 convs with >= 64 channels time Winograd against oneDNN on every CPU. Where our GEMM computes in
    bfloat16 (AVX512-BF16, DRN_CPU_ISA allowing AVX-512) only F(2x2) is offered (F(4x4) too inaccurate with
    bfloat16 operands); elsewhere the Winograd GEMM is float32 (bfloat16 storage only) and both tiles are. The
    expectation comes from what this CPU (or its emulation) offers; the chosen algorithm is what runs."""
    _cpu()
    xb, wb, bb = (t.bfloat16() for t in _case(64, 64, 9, 10, seed=6))
    bf16_gemm = torch.ops.drn.cpu_bf16_gemm()
    assert bf16_gemm == (torch.ops.drn.cpu_isa() == "avx512" and _cpu_flag("avx512_bf16"))
    tiles = torch.ops.drn.cpu_winograd_tiles(xb, wb, [1, 1])
    assert tiles == ([2] if bf16_gemm else [4, 2])
    n_searches = len(prep.SEARCHES)
    conv = prep.PreparedConv(wb, bb, "cpu")
    y = conv.conv_bn_act(xb, stride=1, padding=1, dilation=1)
    chosen = conv.algorithm(xb, (1, 1), (1, 1), (1, 1))
    assert len(prep.SEARCHES) == n_searches + 1
    assert set(prep.SEARCHES[-1]["median_s"]) == {f"winograd{t}" for t in tiles} | {"onednn"}
    assert chosen in prep.SEARCHES[-1]["median_s"]
    if chosen.startswith("winograd"):
        form = torch.ops.drn.winograd_weight(wb, int(chosen[-1]))
        assert form.dtype == (torch.bfloat16 if bf16_gemm else torch.float32)
    else:
        form = torch.ops.drn.onednn_weight(wb, [1, 1], [1, 1], [1, 1], list(xb.shape))
    assert torch.equal(y, torch.ops.drn.conv_bn_act_prepared_native(xb, wb, bb, form, [1, 1], [1, 1], [1, 1],
                                                                     None, True))
    ref = _ref(xb.double(), wb.double(), bb.double(), 1, 1)
    torch_err = (F.conv2d(xb, wb, bb, padding=1).relu().double() - ref).abs().max()
    assert (y.double() - ref).abs().max() <= FACTOR * torch_err
    if bf16_gemm:
        with pytest.raises(ValueError, match="tile 4 is not offered in bfloat16"):
            torch.ops.drn.winograd_weight(wb, 4)
    else:
        assert torch.ops.drn.winograd_weight(wb, 4).dtype == torch.float32


def _cpu_flag(flag):
    """Whether /proc/cpuinfo lists `flag` (Linux; elsewhere the test trusts the build's own check)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return torch.ops.drn.cpu_bf16_gemm()


def test_timing_input_is_a_crop():
    x = torch.empty(2, 8, 300, 200)
    t = prep._timing_input(x, (4, 4), (4, 4))
    assert t.shape[:2] == (1, 8) and t.shape[3] == 200 and 32 <= t.shape[2] < 300
    small = torch.empty(1, 8, 20, 20)
    assert prep._timing_input(small, (1, 1), (1, 1)) is small
