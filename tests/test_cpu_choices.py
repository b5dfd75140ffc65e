"""Reproducible algorithm choices (drn_kernels.cpu_choices): keys by what decides them, the per-machine cache file
shared by processes, pinned tables, torch.compile deciding as eager does. No timing is asserted: each test checks
where a choice came from (searches made or not) and that the same choice gives the same bits."""
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import drn
from drn.fused import FusedConv
from drn_kernels import cpu_choices, prepared as prep
from helpers import require_backend

pytestmark = pytest.mark.build

CL = torch.channels_last
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rand(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(autouse=True)
def _auto(cpu_settings, monkeypatch, tmp_path):
    """Choices measured (DRN_CPU_CONV unset), into a cache folder of this test only."""
    require_backend("cpu")
    cpu_settings.unset("DRN_CPU_CONV")
    cpu_settings.unset("DRN_WINOGRAD_TILE")
    monkeypatch.setenv("DRN_CHOICE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_choices, "_tables", {})  # this process's table and cache reads start empty
    monkeypatch.setattr(cpu_choices, "_files", {})
    monkeypatch.setattr(cpu_choices, "_warned", set())


def _conv(k=64, c=64, seed=0):
    return prep.PreparedConv(_rand(k, c, 3, 3, seed=seed, scale=0.05).contiguous(memory_format=CL),
                             _rand(k, seed=seed + 1), "cpu")


def _x(n, c, h, w, seed=5):
    return _rand(n, c, h, w, seed=seed).contiguous(memory_format=CL)


def test_key_is_what_decides():
    cap = prep.BUCKET_PIXELS
    key = lambda shape, dil=1, dtype=torch.float32: cpu_choices.key((64, 64, 3, 3), shape, (1, 1), (dil, dil),
                                                                 (dil, dil), dtype, cap)
    assert key((1, 64, 28, 28)) == "k64c64r3s3/s1,1/p1,1/d1,1/float32/px512"  # 784 pixels: bucket 512
    assert key((1, 64, 30, 30)) == key((1, 64, 28, 28))                        # 900: the same bucket
    assert key((1, 64, 128, 128)) == key((4, 64, 300, 200)) == key((1, 64, 34, 34)) != key((1, 64, 28, 28))
    assert key((1, 64, 28, 28), dil=2) != key((1, 64, 28, 28))
    assert key((1, 64, 28, 28), dtype=torch.bfloat16) != key((1, 64, 28, 28))
    assert cpu_choices.bucket(0, cap) == 1 and cpu_choices.bucket(10 ** 9, cap) == cap


def test_a_new_size_in_the_bucket_does_not_search():
    conv = _conv(seed=1)
    n = len(prep.SEARCHES)
    first = conv.algorithm(_x(1, 64, 22, 23), (1, 1), (1, 1), (1, 1))
    assert len(prep.SEARCHES) == n + 1
    for h, w in ((23, 22), (24, 21), (21, 24)):  # 441..576 output pixels: the 512 bucket
        assert conv.algorithm(_x(1, 64, h, w), (1, 1), (1, 1), (1, 1)) == first
    assert len(prep.SEARCHES) == n + 1
    assert len(conv.algorithms) == 4 and conv.choices == {conv.choice_key((1, 64, 22, 23), (1, 1), (1, 1),
                                                                          (1, 1)): first}


def test_shapes_remembered_are_bounded():
    conv = _conv(seed=2)
    for w in range(8, 8 + conv.MAX_SHAPES + 5):
        conv.algorithm(_x(1, 64, 8, w), (1, 1), (1, 1), (1, 1))
    assert len(conv.algorithms) == conv.MAX_SHAPES


_CHILD = textwrap.dedent("""
    import hashlib, json, sys, torch
    from drn_kernels import cpu_choices, prepared as prep
    torch.manual_seed(0)
    w = torch.randn(64, 64, 3, 3) * 0.05
    b = torch.randn(64)
    x = torch.randn(1, 64, 20, 19).contiguous(memory_format=torch.channels_last)
    conv = prep.PreparedConv(w.contiguous(memory_format=torch.channels_last), b, "cpu")
    y = conv.conv_bn_act(x, stride=1, padding=2, dilation=2)
    print(json.dumps({"searches": len(prep.SEARCHES), "sources": dict(cpu_choices.SOURCES),
                      "chosen": conv.algorithm(x, (1, 1), (2, 2), (2, 2)), "threads": torch.get_num_threads(),
                      "bits": hashlib.sha256(y.contiguous().numpy().tobytes()).hexdigest(),
                      "line": cpu_choices.describe_sources()}))
""")


def _child(env):
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_the_cache_file_gives_the_next_process_the_same_choice(tmp_path):
    env = dict(os.environ, DRN_CHOICE_CACHE=str(tmp_path / "shared"))
    first, _ = _child(env)
    assert first["searches"] == 1 and first["sources"] == {"measured": 1}
    files = list((tmp_path / "shared").glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["signature"]["threads"] == first["threads"]
    assert list(data["choices"].values()) == [first["chosen"]]
    second, _ = _child(env)
    assert second["searches"] == 0 and second["sources"] == {"cache": 1}
    assert second["chosen"] == first["chosen"] and second["bits"] == first["bits"]  # the same bits
    assert str(files[0]) in second["line"] and "1 cache" in second["line"]
    # another thread count is another signature: its own file, measured again
    third, _ = _child(dict(env, OMP_NUM_THREADS="1"))
    assert third["searches"] == 1 and len(list((tmp_path / "shared").glob("*.json"))) == 2
    # "off": nothing read or written
    off, _ = _child(dict(env, DRN_CHOICE_CACHE="off"))
    assert off["searches"] == 1 and len(list((tmp_path / "shared").glob("*.json"))) == 2


@pytest.mark.parametrize("junk", ["{not json", json.dumps([1, 2]), json.dumps({"signature": {"cpu": "other"},
                                                                              "choices": {}})])
def test_a_corrupt_or_stale_cache_file_is_ignored_with_one_warning(tmp_path, monkeypatch, caplog, junk):
    conv = _conv(seed=3)
    x = _x(1, 64, 12, 13)
    context = cpu_choices.Context()
    os.makedirs(os.path.dirname(context.path), exist_ok=True)
    with open(context.path, "w") as f:
        f.write(junk)
    n = len(prep.SEARCHES)
    with caplog.at_level(logging.WARNING, logger="drn_kernels.cpu_choices"):
        y = conv.conv_bn_act(x, stride=1, padding=1, dilation=1)
        _conv(seed=4).conv_bn_act(_x(1, 64, 40, 40), stride=1, padding=1, dilation=1)  # another key, same file
    assert len(prep.SEARCHES) == n + 2
    assert len([r for r in caplog.records if "ignoring the algorithm-choice cache" in r.message]) == 1
    torch.testing.assert_close(y.double(), torch.nn.functional.conv2d(
        x.double(), conv.weight.double(), conv.bias.double(), padding=1).relu(), atol=1e-4, rtol=1e-4)
    data = json.loads(open(context.path).read())  # rewritten whole, with this machine's signature
    assert data["signature"] == context.sig and len(data["choices"]) == 2


def test_a_cached_choice_this_cpu_does_not_offer_is_measured_again(tmp_path):
    conv = _conv(seed=5)
    x = _x(1, 64, 12, 13)
    context = cpu_choices.Context()
    k = conv.choice_key(x.shape, (1, 1), (1, 1), (1, 1))
    os.makedirs(os.path.dirname(context.path), exist_ok=True)
    with open(context.path, "w") as f:
        json.dump({"signature": context.sig, "choices": {k: "winograd8"}}, f)
    n = len(prep.SEARCHES)
    assert conv.algorithm(x, (1, 1), (1, 1), (1, 1)) in prep.CANDIDATES
    assert len(prep.SEARCHES) == n + 1


def _fused(seed=0, **kw):
    torch.manual_seed(seed)
    model = drn.build("drn_d_22", num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return drn.fuse(model, backend="cpu", **kw)


def test_pinned_table_is_what_runs_and_round_trips(tmp_path):
    x = _rand(1, 3, 64, 72, seed=9)
    model = _fused()
    with torch.no_grad():
        out = model(x)
    table = model.cpu_choices()
    assert table and set(table.values()) <= set(prep.CANDIDATES)
    flipped = {k: ("onednn" if v.startswith("winograd") else "winograd2") for k, v in table.items()}
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(flipped))
    n = len(prep.SEARCHES)
    pinned = _fused(cpu_choices=str(path))
    with torch.no_grad():
        pinned_out = pinned(x)
    assert len(prep.SEARCHES) == n and pinned.cpu_choices() == flipped
    torch.testing.assert_close(pinned_out, out, rtol=1e-4, atol=1e-4 * out.abs().max().item())
    assert not torch.equal(pinned_out, out)  # other algorithms ran
    same = drn.build("drn_d_22", num_classes=10, fused=True, backend="cpu", cpu_choices=table)
    same.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(same(x), out)
    pinned.pin_cpu_choices(None)
    assert pinned.cpu_choices() == {}


@pytest.mark.parametrize("table, match", [({"k": "fastest"}, "cpu_choices: 'k'"), ([1], "cpu_choices must be"),
                                          ("/nonexistent/pins.json", "cpu_choices: cannot read")])
def test_bad_pinned_tables_raise_naming_cpu_choices(table, match):
    with pytest.raises(ValueError, match=match):
        drn.build("drn_d_22", num_classes=10, fused=True, backend="cpu", cpu_choices=table)
    with pytest.raises(ValueError, match="needs fused=True"):
        drn.build("drn_d_22", num_classes=10, cpu_choices={})


def test_a_pinned_choice_the_cpu_cannot_run_raises():
    conv = _conv(seed=6)
    x = _x(1, 64, 10, 10)
    conv.pinned = {conv.choice_key(x.shape, (1, 1), (1, 1), (1, 1)): "winograd4"}
    if torch.ops.drn.cpu_bf16_gemm():  # bfloat16's GEMM offers F(2x2) only
        conv = prep.PreparedConv(conv.weight.bfloat16(), conv.bias.bfloat16(), "cpu")
        conv.pinned = {conv.choice_key(x.shape, (1, 1), (1, 1), (1, 1)): "winograd4"}
        with pytest.raises(ValueError, match="cpu_choices: .* does not offer"):
            conv.algorithm(x.bfloat16(), (1, 1), (1, 1), (1, 1))
    else:
        assert conv.algorithm(x, (1, 1), (1, 1), (1, 1)) == "winograd4"


@pytest.mark.parametrize("pin", [None, "onednn", "winograd2"])
def test_torch_compile_decides_as_eager_does(pin):
    """The compiled model, called first, decides the choices while tracing (timing when it must) and runs them; the
    eager call afterwards finds the same choices and gives the same bits — with every conv pinned to oneDNN too
    (inside the graph it gets the dense weight, re-ordered per call, where eager passes its blocked copy)."""
    x = _rand(2, 3, 56, 48, seed=4)
    model = _fused(seed=3)
    if pin is not None:
        with torch.no_grad():
            _fused(seed=3)(x)  # the keys, from a twin
        keys = [k for k, _ in cpu_choices._tables[cpu_choices.Context().digest].items()]
        model.pin_cpu_choices({k: pin for k in keys})
    n = len(prep.SEARCHES)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got = compiled(x)
    if pin is None:
        assert len(prep.SEARCHES) > n  # measured while tracing
    else:
        assert len(prep.SEARCHES) == n and set(model.cpu_choices().values()) == {pin}
    searched = len(prep.SEARCHES)
    with torch.no_grad():
        assert torch.equal(model(x), got)
    assert len(prep.SEARCHES) == searched
    convs = [m for m in model.modules() if isinstance(m, FusedConv)]
    assert all(m._conv.algorithms for m in convs if m._conv.on_cpu)


@pytest.mark.parametrize("costs, calls", [((1.0, 2.0, 1.4), 2), ((1.0, 1.2, 3.0), 1 + prep.TIMING_ROUNDS)])
def test_search_stops_after_one_round_only_for_a_clear_winner(monkeypatch, costs, calls):
    """A first timed round whose fastest is CLEAR_MARGIN ahead of every other decides; a closer one takes every
    round (times from a fake clock: each candidate advances it by its cost)."""
    clock = [0.0]
    monkeypatch.setattr(prep.time, "perf_counter", lambda: clock[0])
    counts = {}

    def run(name, cost):
        counts[name] = counts.get(name, 0) + 1
        clock[0] += cost

    runs = {f"c{i}": (lambda i=i, cost=cost: run(f"c{i}", cost)) for i, cost in enumerate(costs)}
    medians = prep.median_times(runs)
    assert counts == {name: calls for name in runs}
    assert medians == pytest.approx({f"c{i}": cost for i, cost in enumerate(costs)})
