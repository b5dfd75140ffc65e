"""drn_kernels.perf_model: its arithmetic on cases worked out by hand, and its candidates = the autotuner's."""
import math

import pytest

from drn_kernels import perf_model as pm

pytestmark = pytest.mark.unit

H100 = pm.DEVICES["H100"]


def test_hand_computed_3x3_layer():
    # drn_d_22 layer-2-like 3x3: x (1, 64, 56, 56), weight (64, 64, 3, 3), padding 1, fp16; tile 128x64x32 w4 s3
    layer = pm.Layer(1, 64, 56, 56, 64, 3, 3, 1, 1, 1)
    tile = pm.Tile(128, 64, 32, 4, 3)
    assert (layer.p, layer.q, layer.m) == (56, 56, 3136)
    assert layer.flops == 2 * 3136 * 64 * 9 * 64 == 231_211_008
    assert pm.programs(layer, tile) == (25, 1)  # 3136 rows in 25 tiles of 128 (3200 with the masked tail)
    assert pm.reduction_steps(layer, tile) == 9 * 2
    assert pm.issued_flops(layer, tile) == 2 * 3200 * 64 * 18 * 32 == 235_929_600
    # L2: the one column tile reads all 3136 input rows x 576 reduction elements, the 25 row tiles each read the
    # 64 weight rows x 576; plus the 3136 x 64 output; 2 bytes each
    assert pm.l2_bytes(layer, tile, 2) == (3136 + 25 * 64) * 576 * 2 + 3136 * 64 * 2 == 5_857_280
    # DRAM: input 56*56*64, weight 64*576, output 3136*64, 2 bytes each, once
    assert pm.dram_bytes(layer, tile, 2, H100) == 401_408 + 73_728 + 401_408
    assert tile.shared_bytes(2) == 3 * (128 + 64) * 32 * 2 == 36_864
    assert tile.registers() == 128 * 64 // 128 + 64
    # per SM: 6 by shared memory (233472 // 36864), 4 by registers (65536 // (128 * 128)), 16 by threads
    assert pm.concurrent_programs(tile, H100, 2) == 132 * 4
    b = pm.bound(layer, tile, H100)
    # 25 programs on 132 SMs: each alone on its SM, at 1/132 of 989 TFLOP/s
    assert b.compute_s == pytest.approx(235_929_600 / 25 / (989e12 / 132), rel=1e-12)
    assert b.compute_s == pytest.approx(1.2596e-6, rel=1e-4)
    assert b.l2_s == pytest.approx(5_857_280 / 5.5e12, rel=1e-12)
    assert b.dram_s == pytest.approx(876_544 / 3.35e12, rel=1e-12)
    assert b.limit == "compute" and b.seconds == b.compute_s and b.waves == 1
    assert b.tflops == pytest.approx(231_211_008 / b.compute_s / 1e12)


def test_wave_tail_counts_the_busiest_sm():
    # 264 programs on 132 SMs: 2 each; 265: the busiest SM has 3, so the bound grows by 3/2 for 1/264 more work
    layer = pm.Layer(1, 64, 1, 128 * 264, 64, 1, 1)
    tile = pm.Tile(128, 64, 64, 4, 3)
    assert pm.programs(layer, tile) == (264, 1)
    two = pm.bound(layer, tile, H100).compute_s
    longer = pm.Layer(1, 64, 1, 128 * 264 + 1, 64, 1, 1)
    assert pm.bound(longer, tile, H100).compute_s == pytest.approx(two * 1.5, rel=1e-9)


def test_grouped_order_reads_a_large_input_once():
    # batch 8 of 128x256 maps, 512 -> 512 channels, 3x3 dilation 4: the input (268 MB) is far beyond the L2
    layer = pm.Layer(8, 512, 128, 256, 512, 3, 3, 1, 4, 4)
    tile = pm.Tile(128, 128, 64, 8, 4)
    x = 8 * 128 * 256 * 512 * 2
    w = 512 * 9 * 512 * 2
    y = 8 * 128 * 256 * 512 * 2
    assert pm.programs(layer, tile) == (2048, 4)
    assert pm.dram_bytes(layer, tile, 2, H100, grouped=False) == 4 * x + w + y  # once per column tile
    assert pm.dram_bytes(layer, tile, 2, H100, grouped=True) == x + w + y


def test_strided_1x1_reads_one_pixel_in_four():
    layer = pm.Layer(2, 256, 56, 56, 512, 1, 1, 2, 0, 1)
    assert layer.m == 2 * 28 * 28
    assert layer.input_bytes_touched(2) == 2 * 28 * 28 * 256 * 2


def test_candidates_are_the_autotuners_pruned_space():
    conv_mod = pytest.importorskip("drn_kernels.triton.conv_bn_act")
    wide = pm.candidate_tiles(pm.Layer(8, 512, 128, 256, 512, 3, 3, 1, 4, 4), 2, H100)
    labels = {t.label for t in wide}
    assert {"128x128x64 w8 s4", "128x256x64 w8 s3"} <= labels
    assert all(t.block_c >= 32 for t in wide)
    thin = pm.candidate_tiles(pm.Layer(1, 16, 224, 224, 16, 3, 3, 1, 1, 1), 2, H100)
    assert thin and all(t.block_c == 16 and not t.flat for t in thin)
    stem = pm.candidate_tiles(pm.Layer(1, 3, 224, 224, 16, 7, 7, 1, 3, 1), 2, H100)
    assert stem and all(t.flat for t in stem)
    limit = min(H100.shared_per_sm, 227 * 1024) - conv_mod.SHARED_MARGIN
    assert len(wide) == len(conv_mod.prune_for(conv_mod.CONFIGS, 512, 512, 2, False, limit))


def test_big_dilated_layer_prefers_a_big_tile():
    """The L2 roof: a 64x64 tile moves 2x the bytes per FLOP of a 128x128 one; at batch 8 @1024x2048 the
    model must not predict a small tile for the 512-channel dilated layer."""
    layer = pm.Layer(8, 512, 128, 256, 512, 3, 3, 1, 4, 4)
    win = pm.best(layer, H100)
    assert win.tile.block_m * win.tile.block_n >= 128 * 128
    small = pm.bound(layer, pm.Tile(64, 64, 32, 4, 4), H100)
    assert small.l2_bytes > 1.9 * pm.bound(layer, pm.Tile(128, 128, 64, 8, 4), H100).l2_bytes
    assert math.isclose(win.flops, layer.flops)


def test_flops_peaks_read_from_the_model():
    from drn.tools import flops

    assert flops.GPU_PEAKS["H100"]["fp16"] == H100.tensor_flops
    assert flops.GPU_PEAKS["H200"]["bytes_per_s"] == pm.DEVICES["H200"].dram_bytes_per_s
