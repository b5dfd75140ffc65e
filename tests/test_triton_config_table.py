"""drn_kernels.triton.config_table: the capped search keeps the best config found before its cap, the table's rows
round-trip through the literal the refresh tool prints, and on a GPU a launch through the table or the search
gives the reference's answer."""
import ast
import json
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.unit

config_table = pytest.importorskip("drn_kernels.triton.config_table")


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_search_stops_at_its_cap_and_keeps_the_best_so_far():
    clock = FakeClock()
    costs = {"a": (3.0, 2e-3), "b": (3.0, 1e-3), "c": (3.0, 0.5e-3)}  # (compile seconds, time per call)

    def bench(name):
        clock.t += costs[name][0]
        return costs[name][1]

    best, t, tried = config_table.search(["a", "b", "c"], bench, cap_s=5.0, clock=clock)
    assert (best, t) == ("b", 1e-3)  # c, the fastest, comes after the cap
    assert [c for c, _ in tried] == ["a", "b"]
    best, _, tried = config_table.search(["a", "b", "c"], bench, cap_s=100.0, clock=clock)
    assert best == "c" and len(tried) == 3


def test_search_tries_one_even_with_no_time_and_skips_failures():
    clock = FakeClock()

    def bench(name):
        clock.t += 10
        if name == "big":
            raise RuntimeError("out of resources: shared memory")
        return 1.0

    best, _, tried = config_table.search(["big", "small"], bench, cap_s=0.0, clock=clock)
    assert best is None and tried[0][1].startswith("RuntimeError")
    best, _, tried = config_table.search(["big", "small"], bench, cap_s=15.0, clock=clock)
    assert best == "small" and len(tried) == 2


def test_table_rows_round_trip_through_the_refresh_literal(tmp_path, capsys):
    row = {"kernel": "conv_bn_act", "key": {"C": 512, "K": 512, "dil_h": 2, "HAS_RES": True, "DOT_PRECISION": "tf32"},
           "dtype": "float16", "arch": "sm_90", "config": {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_C": 32,
                                                            "num_warps": 4, "num_stages": 3},
           "ms": 0.21, "device": "NVIDIA H200", "tried": 3}
    newer = dict(row, config=dict(row["config"], BLOCK_M=64), ms=0.19)
    older, newest = tmp_path / "a.json", tmp_path / "b.json"
    older.write_text(json.dumps([row]))
    newest.write_text(json.dumps([newer]))
    assert config_table.main([str(older), str(newest)]) == 0
    text = capsys.readouterr().out
    rows = ast.literal_eval(text.split("=", 1)[1].strip())
    assert len(rows) == 1 and rows[0]["config"]["BLOCK_M"] == 64 and "tried" not in rows[0]
    config_table.add(rows[0])
    key = dict(reversed(list(row["key"].items())))  # the order of the key's items does not matter
    assert config_table.lookup("conv_bn_act", key, "float16", "sm_90") == newer["config"]
    assert config_table.lookup("conv_bn_act", dict(key, dil_h=4), "float16", "sm_90") is None
    assert config_table.lookup("conv_bn_act", key, "float16", "sm_80") is None


def test_committed_table_rows_are_well_formed():
    from drn_kernels.triton.tuned_configs import TABLE

    for row in TABLE:
        assert set(row) >= {"kernel", "key", "dtype", "arch", "config", "ms", "device"}, row
        assert row["kernel"] in ("conv_bn_act", "class_head", "upsample_argmax")
        assert {"num_warps", "num_stages"} <= set(row["config"]) and row["arch"].startswith("sm_")


def test_launch_declines_cpu_tensors():
    assert config_table.launch("conv_bn_act", None, None, (torch.zeros(1), 3), {}, lambda meta: (1,)) is False


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["search", "pinned"])
def test_conv_through_the_table_gpu(monkeypatch, mode):
    """A key no table holds: the capped search (or the pinned first config) launches it, the result matches the
    reference, and a search's winner is recorded and then served from the table."""
    import drn_kernels
    from drn_kernels import reference

    monkeypatch.setattr(config_table, "SEARCH_CAP_S", 0.5)
    monkeypatch.setattr(config_table, "PIN_FIRST", mode == "pinned")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 40, 23, 17, generator=g).half().cuda().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(72, 40, 3, 3, generator=g) / 19).half().cuda()
    b = torch.randn(72, generator=g).half().cuda()
    before = len(config_table.MEASURED)
    y = drn_kernels.conv_bn_act(x, w, b, stride=1, padding=3, dilation=3, backend="triton")
    ref = reference.conv_bn_act(x.double(), w.double(), b.double(), [1, 1], [3, 3], [3, 3], None, True)
    assert ((y.double() - ref).norm() / ref.norm()).item() < 2e-3
    if mode == "search":
        assert len(config_table.MEASURED) == before + 1
        assert config_table.MEASURED[-1]["arch"] == config_table.arch_of(x.device)
        y2 = drn_kernels.conv_bn_act(x, w, b, stride=1, padding=3, dilation=3, backend="triton")
        assert len(config_table.MEASURED) == before + 1 and torch.equal(y, y2)


class FakeLauncher:
    """Records what a launch would run: (kernel, grid, kwargs)."""

    def __init__(self):
        self.calls = []

    def __call__(self, fn):
        launcher = self

        class Indexed:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launcher.calls.append((fn, grid, kwargs))

        return Indexed()


def _fake_tuner():
    import triton

    configs = [triton.Config({"BLOCK_M": m}, num_warps=4, num_stages=2) for m in (256, 128, 64, 32)]

    def prune(cfgs, named, **kwargs):  # the kernel's own pruning: no tile wider than 2 x M
        return [c for c in cfgs if c.kwargs["BLOCK_M"] <= 2 * named["M"]]

    return SimpleNamespace(fn="kernel", arg_names=["x_ptr", "M", "C"], keys=["M", "C"], configs=configs,
                           early_config_prune=prune)


def test_choose_and_launch_searches_once_then_serves_the_table(monkeypatch):
    """A new key: the pruned configs are timed in order, the fastest launched and recorded (MEASURED, CHOSEN,
    the table); the same key again launches the winner without timing; pinning launches the first that fits."""
    monkeypatch.setattr(config_table, "SEARCH_CAP_S", 100.0)
    monkeypatch.setattr(config_table, "MEASURED", [])
    monkeypatch.setattr(config_table, "CHOSEN", {})
    tuner, launcher = _fake_tuner(), FakeLauncher()
    timed = []

    def time_call(call):
        call()
        cfg = launcher.calls[-1][2]
        timed.append(cfg["BLOCK_M"])
        return {128: 3e-4, 64: 1e-4, 32: 2e-4}[cfg["BLOCK_M"]]

    args = ("x", 100, 7)
    flags = {"HAS_RES": True}
    grid = lambda meta: (-(-100 // meta["BLOCK_M"]),)  # noqa: E731
    arch = "sm_test_search"
    assert config_table.choose_and_launch("k", tuner, launcher, args, flags, grid, "float16", arch, time_call,
                                          lambda: "fake GPU")
    assert timed == [128, 64, 32]  # 256 pruned (> 2 x M)
    fn, grid_used, kwargs = launcher.calls[-1]
    assert (fn, grid_used, kwargs["BLOCK_M"], kwargs["HAS_RES"], kwargs["num_warps"]) == ("kernel", (2,), 64, True, 4)
    row = config_table.MEASURED[-1]
    assert row["key"] == {"M": 100, "C": 7, "HAS_RES": True} and row["config"]["BLOCK_M"] == 64
    assert row["tried"] == 3 and row["device"] == "fake GPU" and row["arch"] == arch
    assert list(config_table.CHOSEN.values())[-1]["source"].startswith("search")
    n = len(launcher.calls)
    assert config_table.choose_and_launch("k", tuner, launcher, args, flags, grid, "float16", arch, None,
                                          lambda: "fake GPU")
    assert len(launcher.calls) == n + 1 and launcher.calls[-1][2]["BLOCK_M"] == 64 and len(timed) == 3
    # another dtype is another key: without a timer nothing is launched (the autotuner's turn)
    assert not config_table.choose_and_launch("k", tuner, launcher, args, flags, grid, "bfloat16", arch, None,
                                              lambda: "fake GPU")
    monkeypatch.setattr(config_table, "PIN_FIRST", True)
    assert config_table.choose_and_launch("k", tuner, launcher, args, flags, grid, "bfloat16", arch, None,
                                          lambda: "fake GPU")
    assert launcher.calls[-1][2]["BLOCK_M"] == 128


def test_choose_and_launch_with_a_zero_cap_leaves_it_to_the_autotuner(monkeypatch):
    monkeypatch.setattr(config_table, "SEARCH_CAP_S", 0)
    launcher = FakeLauncher()
    assert not config_table.choose_and_launch("k", _fake_tuner(), launcher, ("x", 100, 7), {}, lambda m: (1,),
                                              "float16", "sm_test_zero", lambda call: 1.0, lambda: "fake GPU")
    assert launcher.calls == []


def test_only_real_tensors_are_timed():
    """A fused model's weights are nn.Parameters: searchable. A torch.compile trace's fake tensors are not."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert config_table._plain_tensors([torch.zeros(2), torch.nn.Parameter(torch.zeros(2), requires_grad=False)])
    with FakeTensorMode():
        fake = torch.zeros(2)
    assert not config_table._plain_tensors([torch.zeros(2), fake])
