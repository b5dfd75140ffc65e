"""New image sizes are not a tax: a pass of fused drn_d_22 segment predict over 16 sizes it has never seen (256-376
x 384-544, as generated images and photos come) against eager's pass over the same sizes, both in a process that has
made no choice for them and with an empty algorithm-choice cache (drn_kernels.cpu_choices: every search of the pass
is in its time). Then a second pass of each (warm), and the first pass of a fresh fused model in a process that
finds the choices in this machine's cache file ("cpu-cached": what every later process on the machine pays). Goal:
the fused first pass >= 1.5x eager's first pass.

Records: group "new-sizes:drn_d_22:segment:16", providers "eager-cl" and "cpu" for the first pass, "eager-cl-warm"
and "cpu-warm" for the second, "cpu-cached"; extra_info first_pass_ratio, cached_first_pass_ratio, warm_ratio,
searches (how many the first pass made) and the labels' agreement. CPU only; --benchmark-only only (one pass takes seconds to a minute on 2 cores).
"""
import pytest
import time

import torch

from benchmarks import common
from drn_kernels import cpu_choices, prepared

pytestmark = pytest.mark.build

SIZES = [(256, 384), (264, 400), (272, 416), (280, 432), (288, 448), (296, 464), (304, 480), (312, 496), (320, 512),
         (328, 528), (336, 544), (344, 392), (352, 424), (360, 456), (368, 488), (376, 520)]
GOAL = 1.5


def _pass(fn, xs) -> tuple[float, list]:
    start = time.perf_counter()
    with torch.no_grad():
        labels = [fn(x)[0] for x in xs]
    return time.perf_counter() - start, labels


def test_first_pass_over_new_sizes(benchmark, tmp_path, monkeypatch):
    common.require_cpu_timing(benchmark, "tests/test_cpu_choices.py")
    assert len(set(SIZES)) == 16 and all(256 <= h <= 376 and 384 <= w <= 544 for h, w in SIZES)
    monkeypatch.setenv("DRN_CHOICE_CACHE", str(tmp_path / "choices"))
    monkeypatch.setattr(cpu_choices, "_tables", {})
    monkeypatch.setattr(cpu_choices, "_files", {})
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 3, h, w, generator=g).contiguous(memory_format=torch.channels_last) for h, w in SIZES]
    model = common._unfused("drn_d_22", "segment")
    eager = model.to(memory_format=torch.channels_last)
    fused = common.drn.fuse(model, backend="cpu")
    with torch.no_grad():  # both warmed on a size outside the pass (oneDNN, the fused model's first layers)
        warm = torch.randn(1, 3, 128, 160, generator=g)
        eager.predict(warm)
    searches = len(prepared.SEARCHES)
    times = {}
    times["eager-cl"], eager_labels = _pass(eager.predict, xs)
    times["cpu"], fused_labels = _pass(fused.predict, xs)
    searched = len(prepared.SEARCHES) - searches
    times["eager-cl-warm"], _ = _pass(eager.predict, xs)
    times["cpu-warm"], _ = _pass(fused.predict, xs)
    assert len(prepared.SEARCHES) - searches == searched  # the second pass searched nothing
    # the next process on this machine: a fresh fused model and empty process tables, the cache file kept
    monkeypatch.setattr(cpu_choices, "_tables", {})
    monkeypatch.setattr(cpu_choices, "_files", {})
    again = common.drn.fuse(model, backend="cpu")
    times["cpu-cached"], cached_labels = _pass(again.predict, xs)
    assert len(prepared.SEARCHES) - searches == searched  # every choice from the cache file
    assert all(torch.equal(a, b) for a, b in zip(cached_labels, fused_labels))  # and the same answers
    agree = sum((a == b).sum().item() for a, b in zip(eager_labels, fused_labels)) / sum(a.numel()
                                                                                         for a in eager_labels)
    assert agree > 0.999, agree
    benchmark.group = "new-sizes:drn_d_22:segment:16"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    info = {"sizes": SIZES, "device": common.device_name(), "threads": torch.get_num_threads(),
            "first_pass_s": {p: t for p, t in times.items()}, "searches": searched, "label_agreement": agree,
            "first_pass_ratio": times["eager-cl"] / times["cpu"],
            "cached_first_pass_ratio": times["eager-cl"] / times["cpu-cached"],
            "warm_ratio": times["eager-cl-warm"] / times["cpu-warm"],
            "goal_first_pass_ratio": GOAL, "choices": cpu_choices.describe_sources()}
    benchmark.extra_info.update(info)
    for provider, seconds in times.items():
        common.add_result("new-sizes:drn_d_22:segment:16", f"{benchmark.name}[{provider}]", provider, [seconds], info)
