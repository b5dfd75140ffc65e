"""How the cpu backend shares work among torch's threads (csrc/cpu/threading/parallel.h: each thread starts on its own share
and, once done, takes the back half of the largest share left): every item runs exactly once, a slowed thread's
work is taken over by the others, and the kernels built on it give the same bits at any thread count and split."""
from __future__ import annotations

import contextlib

import pytest
import torch

import drn_kernels
from drn_kernels.build import load_testing_library
from helpers import require_backend

pytestmark = pytest.mark.build


@pytest.fixture(autouse=True)
def _cpu_built():
    require_backend("cpu")
    load_testing_library()  # torch.ops.drn_testing.* (the trace and GEMM ops)


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _trace(bounds, run=1, slow=-1, slow_us=0.0):
    return torch.ops.drn_testing.parallel_shares_trace(bounds, run, slow, slow_us)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n, run", [(0, 1), (1, 1), (2, 1), (7, 3), (101, 1), (1000, 8)])
def test_every_item_once(threads, n, run):
    with _threads(threads):
        bounds = [n * j // threads for j in range(threads + 1)]
        out = _trace(bounds, run)
    assert out.shape == (n, 2)
    assert torch.equal(out[:, 0], torch.ones(n, dtype=torch.long))
    assert bool((out[:, 1] >= 0).all() and (out[:, 1] < threads).all())


def test_uneven_and_empty_shares():
    """Shares of any sizes, empty ones among them (the GEMM splits by rows, so a thread may start with nothing)."""
    with _threads(3):
        for bounds in ([0, 0, 0, 9], [0, 9, 9, 9], [0, 1, 1, 50], [0, 0, 40, 41]):
            out = _trace(bounds, 2)
            assert torch.equal(out[:, 0], torch.ones(bounds[-1], dtype=torch.long)), bounds


def test_slow_thread_is_relieved():
    """Thread 1 sleeps 5 ms per run it takes: thread 0 finishes its own share and then takes most of thread 1's
    (often all: it may be done before thread 1 has woken up), yet every item still runs exactly once. With a fixed
    split thread 1 would run all 100 of its own, ~0.5 s."""
    with _threads(2):
        out = _trace([0, 100, 200], 1, slow=1, slow_us=5000.0)
    assert torch.equal(out[:, 0], torch.ones(200, dtype=torch.long))
    by_thread1 = int((out[:, 1] == 1).sum())
    assert by_thread1 < 50, f"thread 1 ran {by_thread1} of 200 items"
    assert bool((out[:100, 1] == 0).all())  # its own share: nobody steals from a thread that is not behind


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n, run", [(0, 1), (1, 1), (3, 4), (4, 4), (5, 4), (9, 2), (1000, 7)])
def test_parallel_even(threads, n, run):
    """parallel_even: every item once, on no more threads than there are runs of `run` items; a pass of one run
    stays on the calling thread (as at::parallel_for's grain had it: the class head's runs each allocate buffers)."""
    with _threads(threads):
        out = torch.ops.drn_testing.parallel_even_trace(n, run)
    assert out.shape == (n, 2)
    assert torch.equal(out[:, 0], torch.ones(n, dtype=torch.long))
    assert bool((out[:, 1] >= 0).all() and (out[:, 1] < min(threads, max(-(-n // run), 1))).all())
    if n <= run:
        assert bool((out[:, 1] == 0).all())


def test_trace_rejects_bad_arguments():
    with _threads(2):
        for bounds, match in (([0, 5], "entries"), ([1, 2, 3], "start at 0"), ([0, 5, 3], "not decrease"),
                              ([0, 1, 1 << 40], "2\\^20")):
            with pytest.raises(ValueError, match=match):
                _trace(bounds)
        with pytest.raises(ValueError, match="run"):
            _trace([0, 1, 2], 0)
        with pytest.raises(ValueError, match="slow"):
            _trace([0, 1, 2], 1, slow=2)
        with pytest.raises(ValueError, match="slow_us"):
            _trace([0, 1, 2], 1, slow=0, slow_us=float("nan"))
        for n, run, match in ((-1, 1, "n must"), (1 << 40, 1, "n must"), (5, 0, "run"), (5, 1 << 40, "run")):
            with pytest.raises(ValueError, match=match):
                torch.ops.drn_testing.parallel_even_trace(n, run)


def test_gemm_same_bits_at_any_thread_count():
    """Each (problem, panel) pair is computed whole by one thread: 1, 2 and 3 threads give the same bits."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(9, 61, 70, generator=g), torch.randn(9, 70, 100, generator=g)
    packed = torch.ops.drn_testing.gemm_pack_b(b)
    outs = []
    for threads in (1, 2, 3):
        with _threads(threads):
            outs.append(torch.ops.drn_testing.gemm_packed(a, packed, 100))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("tile", ["2", "4"])
def test_winograd_same_bits_at_any_thread_count(cpu_settings, tile):
    """The transforms' tiles and the GEMMs' pairs shared among 1, 2 or 3 threads: the same output bits."""
    cpu_settings.set("DRN_CPU_CONV", "winograd")
    cpu_settings.set("DRN_WINOGRAD_TILE", tile)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 37, 23, 29, generator=g).contiguous(memory_format=torch.channels_last)
    w, bias = torch.randn(45, 37, 3, 3, generator=g) * 0.1, torch.randn(45, generator=g)
    outs = []
    for threads in (1, 2, 3):
        with _threads(threads):
            outs.append(drn_kernels.conv_bn_act(x, w, bias, padding=2, dilation=2, backend="cpu"))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
