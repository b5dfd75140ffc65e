"""benchmarks/bf16_winograd_error.py, the emulation behind "bf16 Winograd runs F(2×2) only": its Toom-Cook
matrices compute the convolution exactly in float64 (odd sizes, rectangular tiles), and its bf16 error ordering
is the one the cpu kernel's choice rests on."""
import pytest
import torch
import torch.nn.functional as F
from tolerance import FACTOR

from benchmarks import bf16_winograd_error as emu

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("tile", [(2, 2), (3, 2), (2, 4), (4, 4)])
def test_float64_winograd_is_the_convolution(tile):
    gen = torch.Generator().manual_seed(sum(tile))
    x = torch.randn(5, 7, 9, generator=gen, dtype=torch.float64)  # sizes that are no multiple of the tile
    w = torch.randn(3, 5, 3, 3, generator=gen, dtype=torch.float64)
    got = emu.winograd(x, w, tile, bf16=False)
    torch.testing.assert_close(got, F.conv2d(x[None], w, padding=1)[0], rtol=0, atol=1e-10)


def test_bf16_error_grows_with_the_tile():
    ratios = {tile: max(emu.error_ratio(32, 12, tile, seed) for seed in range(2)) for tile in [(2, 2), (4, 4)]}
    # F(2x2) within the kernel tests' bound (measured here 1.7-1.8 vs 21-29 for F(4x4)), F(4x4) far outside it
    assert 0 < ratios[(2, 2)] < FACTOR < ratios[(4, 4)], ratios


def test_toom_cook_refuses_a_wrong_point_count():
    with pytest.raises(ValueError, match="needs 3 finite points"):
        emu.toom_cook(2, (0, 1))
