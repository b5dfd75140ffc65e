"""The reference's multi-scale protocol (drn.apps.multiscale, `--ms`): time and peak memory per image of

- unfused:           the unfused model, each scale's whole log-probability map (the exact path; on the CPU the
                     maps are resized by PIL, as the reference does);
- unfused-streamed:  the unfused model through the streamed running sum (low-resolution logits, a few classes
                     at a time): the same backbone, only the multi-scale head differs;
- fused:             the fused model (backend auto) through the streamed running sum — what `--ms --fused` runs.

Timed interleaved (common.interleaved_times: one call of each per round, the order rotated), so a shared
machine's drift hits all alike. Peak memory per call: torch's allocations (common.memory_bytes: the profiler's
events on the CPU, the allocator's statistics on CUDA) plus numpy's (tracemalloc: the PIL-resized maps); PIL's own
image buffers (one class map at a time per thread) are not counted. Each provider's labels are compared with the
unfused ones first (the streamed log-softmax rounds differently: near-ties may differ). --benchmark-only only.

test_multiscale_head: the same at 1024x2048 with the backbone's logits stubbed (the head alone: what item 2's
running sum is about); providers "maps" (the whole maps per scale) and "streamed".
Records: groups "multiscale:<model>:<H>x<W>" and "multiscale-head:<H>x<W>"; extra_info peak_mb (per provider),
agreement (of the labels with the first provider's).
"""
import statistics
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

import drn
from benchmarks import common
from drn.apps import multiscale

pytestmark = pytest.mark.build

CASES = [  # (model, (H, W)): end to end
    ("drn_d_22", (256, 512)),   # the image-synthesis papers' Cityscapes size
    ("drn_d_22", (512, 1024)),
    ("drn_d_22", (1024, 2048)),  # Cityscapes' own size: minutes per call on a 2-core CPU
]
HEAD_SIZES = [(1024, 2048)]  # the multi-scale head alone (the backbone's logits stubbed)


def _image(h, w) -> Image.Image:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 23.0 + c) * np.cos(yy / 17.0 - c) for c in range(3)], -1) * 100 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def _peak_bytes(fn) -> int:
    """torch's peak (common.memory_bytes) plus numpy's peak (tracemalloc) of one call."""
    tracemalloc.start()
    try:
        torch_peak, _ = common.memory_bytes(fn)
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return torch_peak + numpy_peak


def _measure(benchmark, group: str, calls: dict, extra: dict):
    """Warm-up and label check, peak memory, then interleaved rounds (3 where one round is under a minute,
    else 1); records in `group`."""
    labels = {p: f().argmax(0).cpu() for p, f in calls.items()}  # warm-up (algorithm choice) and the check
    first = next(iter(calls))
    agreement = {p: float((labels[p] == labels[first]).double().mean()) for p in calls}
    peaks = {p: _peak_bytes(f) / 2**20 for p, f in calls.items()}
    once = sum(common.interleaved_times(calls, 1)[p][0] for p in calls)
    rounds = 3 if once < 60 else 1
    times = {p: [] for p in calls}
    done = [1]

    def one_round():
        for p, ts in common.interleaved_times(calls, 1, first_round=done[0]).items():
            times[p].extend(ts)
        done[0] += 1

    benchmark.group = group
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    medians = {p: statistics.median(ts) for p, ts in times.items()}
    info = dict(extra, device=common.device_name(), threads=torch.get_num_threads(),
                scales=list(multiscale.REFERENCE_SCALES), medians_ms={p: m * 1e3 for p, m in medians.items()},
                peak_mb=peaks, agreement=agreement, agreement_with=first,
                timer="perf_counter, providers interleaved (order rotated per round)")
    benchmark.extra_info.update(info)
    for p, ts in times.items():
        common.add_result(group, f"{benchmark.name}[{p}]", p, ts, dict(info, peak_mb=peaks[p]))
    assert min(agreement.values()) > 0.999


@pytest.mark.parametrize(("name", "size"), CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_multiscale(benchmark, name, size):
    if getattr(benchmark, "disabled", False):
        pytest.skip("timing only (--benchmark-only): tests/test_multiscale.py checks the protocol")
    h, w = size
    torch.manual_seed(0)
    model = drn.build(name, task="segment", num_classes=19, device=common.DEVICE).eval()
    fused = drn.fuse(model)
    img = _image(h, w)
    calls = {
        "unfused": lambda: multiscale.log_prob_sum(model, img, streamed=False),
        "unfused-streamed": lambda: multiscale.log_prob_sum(model, img, streamed=True),
        "fused": lambda: multiscale.log_prob_sum(fused, img),
    }
    _measure(benchmark, f"multiscale:{name}:{h}x{w}", calls,
             {"model": name, "size": [h, w], "running_sum_mb": 19 * h * w * 4 / 2**20})


@pytest.mark.parametrize("size", HEAD_SIZES, ids=[f"{h}x{w}" for h, w in HEAD_SIZES])
def test_multiscale_head(benchmark, size):
    """The multi-scale head alone at Cityscapes' size: the model's logits_low replaced by fixed random logits of
    the right shape, so what is measured is the up-sampling, log-softmax, PIL resizes and the sum — the whole
    maps per scale (unfused) against the streamed running sum."""
    if getattr(benchmark, "disabled", False):
        pytest.skip("timing only (--benchmark-only)")
    h, w = size
    model = drn.build("drn_d_22", task="segment", num_classes=19, device=common.DEVICE).eval()

    def logits_low(x):  # the same logits for the same scale on every call
        gen = torch.Generator().manual_seed(x.shape[2] * 100003 + x.shape[3])
        return (4 * torch.randn(1, 19, -(-x.shape[2] // 8), -(-x.shape[3] // 8), generator=gen)).to(x.device)

    model.logits_low = logits_low
    img = _image(h, w)
    calls = {"maps": lambda: multiscale.log_prob_sum(model, img, streamed=False),
             "streamed": lambda: multiscale.log_prob_sum(model, img, streamed=True)}
    _measure(benchmark, f"multiscale-head:{h}x{w}", calls,
             {"size": [h, w], "running_sum_mb": 19 * h * w * 4 / 2**20})
