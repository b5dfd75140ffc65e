"""The cpu backend's own GEMM (csrc/cpu/gemm/, as the test library's drn_testing::gemm_pack_b / gemm_packed:
drn_kernels.build.load_testing_library()), which the Winograd convolution runs for its per-point products: against
float64 on random odd shapes, on each ISA build (DRN_CPU_ISA, capped by this CPU), bit-identical across ISAs (every
build accumulates the same float32 FMAs in the same order), packing, empty sizes, hostile arguments."""
from __future__ import annotations

import pytest
import torch

from drn_kernels.build import load_testing_library
from helpers import require_backend
from tolerance import assert_within_torch_error

pytestmark = pytest.mark.build

ISAS = ["baseline", "avx2", "avx512"]


@pytest.fixture(autouse=True)
def _cpu_built():
    require_backend("cpu")
    load_testing_library()  # torch.ops.drn_testing.*


def _rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _gemm(a, b):
    return torch.ops.drn_testing.gemm_packed(a, torch.ops.drn_testing.gemm_pack_b(b), b.shape[-1])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch, m, k, n", [
    (1, 1, 1, 1), (2, 13, 7, 31), (3, 14, 64, 32), (1, 15, 33, 33), (2, 29, 5, 65), (36, 49, 96, 64),
    (1, 6, 17, 16), (1, 7, 130, 96), (2, 100, 3, 40)])
def test_matches_float64(cpu_settings, isa, batch, m, k, n):
    """Every row and column written (NaN-free where the poisoned padding would show), error within 4x torch's own
    float32 bmm error against the float64 product."""
    cpu_settings.set("DRN_CPU_ISA", isa)
    a, b = _rand(batch, m, k, seed=m * 1000 + k), _rand(batch, k, n, seed=n * 1000 + k)
    ours = _gemm(a, b)
    exact = torch.bmm(a.double(), b.double())
    assert ours.shape == (batch, m, n)
    assert_within_torch_error(ours, torch.bmm(a, b), exact, what=f"gemm {isa}")


def test_bit_identical_across_isas(cpu_settings):
    """Same float32 FMAs in the same order on AVX-512, AVX2 and the baseline loop: equal bit for bit (a choice of
    ISA changes the speed, never the answer). ISAs this CPU lacks are capped to the best it has."""
    a, b = _rand(4, 31, 77, seed=1), _rand(4, 77, 70, seed=2)
    outs = {}
    for isa in ISAS:
        cpu_settings.set("DRN_CPU_ISA", isa)
        outs[isa] = _gemm(a, b)
    assert torch.equal(outs["baseline"], outs["avx2"]) and torch.equal(outs["avx2"], outs["avx512"])


@pytest.mark.parametrize("isa", ISAS)
def test_bit_identical_across_prefetch_targets(cpu_settings, isa):
    """DRN_CPU_PREFETCH=l1|l2 runs the other instantiation of every kernel and the other k-block depth (256 or 512
    steps; only one of them is the default on a given CPU): k = 1100 is cut into 5 or 3 blocks (float32) and 3 or 2
    (bfloat16 pairs). Both correct against float64 and equal bit for bit, float32 and (AVX512-BF16 CPUs) bfloat16."""
    cpu_settings.set("DRN_CPU_ISA", isa)
    a, b = _rand(3, 31, 1100, seed=6), _rand(3, 1100, 70, seed=7)
    outs = {}
    for where in ("l1", "l2", "auto"):
        cpu_settings.set("DRN_CPU_PREFETCH", where)
        outs[where] = _gemm(a, b)
        assert_within_torch_error(outs[where], torch.bmm(a, b), torch.bmm(a.double(), b.double()),
                                  what=f"gemm {isa} prefetch {where}")
    assert torch.equal(outs["l1"], outs["l2"]) and torch.equal(outs["l1"], outs["auto"])
    if isa == "avx512" and torch.ops.drn.cpu_isa() == "avx512":
        ab, bb = a.bfloat16(), b.bfloat16()
        try:
            bf = {}
            for where in ("l1", "l2"):
                cpu_settings.set("DRN_CPU_PREFETCH", where)
                bf[where] = _gemm(ab, bb)
        except RuntimeError as e:  # no AVX512-BF16 on this CPU
            assert "BF16" in str(e)
            pytest.skip("no AVX512-BF16 on this CPU: no bfloat16 GEMM to compare")
        assert torch.equal(bf["l1"], bf["l2"])
        exact = torch.bmm(ab.double(), bb.double())
        assert (bf["l1"].double() - exact).abs().max() <= 1e-4 * exact.abs().max()  # exact products, fp32 sums


def test_pack_layout():
    """Panels of 32 columns, each (K x 32) row-major, the last zero-padded."""
    b = _rand(2, 5, 40, seed=3)
    packed = torch.ops.drn_testing.gemm_pack_b(b)
    assert packed.shape == (2, 2, 5, 32)
    assert torch.equal(packed[:, 0], b[:, :, :32])
    assert torch.equal(packed[:, 1, :, :8], b[:, :, 32:])
    assert torch.equal(packed[:, 1, :, 8:], torch.zeros(2, 5, 24))


def test_views_and_non_finite():
    """Strided / expanded views of a and b give the contiguous answer; NaN and inf propagate as in bmm."""
    a, b = _rand(3, 20, 40, seed=4), _rand(3, 40, 36, seed=5)
    want = _gemm(a.contiguous(), b.contiguous())
    at = a.transpose(1, 2).contiguous().transpose(1, 2)
    b_strided = b.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(torch.ops.drn_testing.gemm_packed(at, torch.ops.drn_testing.gemm_pack_b(b_strided), 36), want)
    a1, b1 = a[:1].expand(3, -1, -1), b[:1].expand(3, -1, -1)
    assert torch.equal(_gemm(a1, b1), _gemm(a1.contiguous(), b1.contiguous()))
    a[0, 3, 5], a[1, 0, 0], b[2, 7, 1] = float("nan"), float("inf"), float("-inf")
    ours, ref = _gemm(a, b), torch.bmm(a, b)
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf())


@pytest.mark.parametrize("batch, m, k, n", [(0, 4, 4, 4), (2, 0, 4, 4), (2, 4, 0, 5), (2, 4, 4, 0)])
def test_empty_sizes(batch, m, k, n):
    """Zero-size problems: the shape bmm gives, and k = 0 gives zeros (the empty sum), not leftover memory."""
    a, b = _rand(batch, m, k, seed=6), _rand(batch, k, n, seed=7)
    ours = _gemm(a, b)
    assert ours.shape == (batch, m, n)
    assert torch.equal(ours, torch.zeros(batch, m, n))


def test_hostile_arguments_name_the_argument():
    a, b = _rand(2, 3, 4, seed=8), _rand(2, 4, 5, seed=9)
    packed = torch.ops.drn_testing.gemm_pack_b(b)
    with pytest.raises(ValueError, match="gemm_pack_b: b must be"):
        torch.ops.drn_testing.gemm_pack_b(b.double())
    with pytest.raises(ValueError, match="gemm_pack_b: b must be"):
        torch.ops.drn_testing.gemm_pack_b(b[0])
    with pytest.raises(ValueError, match="gemm_packed: a must be"):
        torch.ops.drn_testing.gemm_packed(a.half(), packed, 5)
    with pytest.raises(ValueError, match="gemm_packed: n must be"):
        torch.ops.drn_testing.gemm_packed(a, packed, -1)
    for bad_n in (33, 2**62, 2**63 - 1):  # n that does not fit the packed panels
        with pytest.raises(ValueError, match="gemm_packed: b_packed must be"):
            torch.ops.drn_testing.gemm_packed(a, packed, bad_n)
    with pytest.raises(ValueError, match="gemm_packed: b_packed must be"):
        torch.ops.drn_testing.gemm_packed(a[:1], packed, 5)


def _bf16_supported() -> bool:
    a = torch.ones(1, 1, 2, dtype=torch.bfloat16)
    try:
        packed = torch.ops.drn_testing.gemm_pack_b(torch.ones(1, 2, 1, dtype=torch.bfloat16))
        torch.ops.drn_testing.gemm_packed(a, packed, 1)
    except RuntimeError as e:
        assert "AVX512-BF16" in str(e)
        return False
    return True


@pytest.mark.parametrize("batch, m, k, n", [(1, 1, 1, 1), (2, 13, 7, 31), (3, 15, 64, 33), (16, 49, 130, 64)])
def test_bfloat16_matches_float64(batch, m, k, n):
    """The AVX512-BF16 GEMM (bf16 operands, float32 accumulation; odd k paired with a zero): within float32
    accumulation error of the float64 product of the same bf16 values. Skips where the CPU has no AVX512-BF16
    (the op then says so)."""
    if not _bf16_supported():
        pytest.skip("this CPU has no AVX512-BF16")
    a = _rand(batch, m, k, seed=10).bfloat16()
    b = _rand(batch, k, n, seed=11).bfloat16()
    ours = _gemm(a, b)
    exact = torch.bmm(a.double(), b.double())
    assert ours.dtype == torch.float32 and ours.shape == (batch, m, n)
    assert_within_torch_error(ours, torch.bmm(a.float(), b.float()), exact, what="gemm bf16")
    with pytest.raises(ValueError, match="gemm_packed: b_packed must be"):
        torch.ops.drn_testing.gemm_packed(a, torch.ops.drn_testing.gemm_pack_b(b.float()), n)  # float32 packing, bf16 a
