"""Measuring helpers for benchmarks.device_check: a wall-clock budget, medians, peak memory, poisoned outputs.

On a GPU the medians come from triton.testing.do_bench (CUDA events; it also clears the L2 before every call) and
the callers rotate over input sets larger than the L2; on the CPU (the dry run) a perf_counter loop stands in.
"""
from __future__ import annotations

import math
import statistics
import time

import torch


class BudgetExhausted(Exception):
    """Raised inside a phase when its deadline has passed; the phase is recorded as cut, its data kept."""


class Budget:
    """A wall-clock budget counted from `start` (time.monotonic()); phases ask it for their own deadline."""

    def __init__(self, seconds: float, start: float | None = None):
        self.seconds = float(seconds)
        self.start = time.monotonic() if start is None else start
        self.end = self.start + self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self, until: float | None = None) -> float:
        return (self.end if until is None else until) - time.monotonic()

    def deadline(self, share: float, later_shares: float, later_minimum: float) -> float:
        """This phase's deadline: its share of what is left (shares of the phases still to run, this one included),
        never eating into the minimum time the later phases need."""
        left = self.left()
        own = left * share / max(share + later_shares, 1e-9)
        return time.monotonic() + max(0.0, min(own, left - later_minimum))


def check_deadline(deadline: float, what: str = ""):
    if time.monotonic() > deadline:
        raise BudgetExhausted(f"budget spent{' before ' + what if what else ''}")


def runnable(runners: dict, entries: dict, deadline: float, what: str):
    """(provider, fn, entry) for each provider of `runners` that can run, in order: the deadline is checked before
    each; entries[provider] is the dict its results go into; a runner that is a string (why it cannot run) is
    recorded there as skipped and not yielded."""
    for provider, fn in runners.items():
        check_deadline(deadline, f"{provider} {what}")
        entry = entries[provider] = {}
        if isinstance(fn, str):
            entry["skipped"] = fn
            continue
        yield provider, fn, entry


def median_seconds(fn, device: torch.device, *, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median seconds of one fn() call (fn already warmed up). CPU: calls for about rep_ms, at least one."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3
    times = []
    spent = 0.0
    while not times or (spent < rep_ms / 1e3 and len(times) < 100):  # interpreted providers: one call
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return statistics.median(times)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_first_call(fn, device: torch.device):
    """(result, seconds) of a first call: compilation, autotuning, cuDNN's algorithm search and caches included."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def input_sets(bytes_per_set: int, l2_bytes: int, *, most: int = 64) -> int:
    """How many input sets to rotate over so that one pass over them is at least twice the L2."""
    return max(2, min(most, math.ceil(2 * l2_bytes / max(bytes_per_set, 1))))


class Rotation:
    """fn(i) over i = 0, 1, ..., n-1, 0, ...: each timed call reads another input set."""

    def __init__(self, fn, n: int):
        self.fn, self.n, self.i = fn, n, 0

    def __call__(self):
        self.i = (self.i + 1) % self.n
        return self.fn(self.i)


def peak_memory_bytes(fn, device: torch.device) -> int | None:
    """Bytes allocated above the starting point at the peak of one fn() call (CUDA allocator statistics); None on
    the CPU, where the dry run does not measure memory."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)


def first_tensor(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else next(t for t in out if isinstance(t, torch.Tensor))


def poisoned_call(fn, out_nbytes: int, device: torch.device):
    """(out, poisoned): fn()'s result where the memory its output lands in was filled with NaN first.

    CUDA: the caching allocator is emptied, a NaN block of the output's size is allocated and freed, so the op's
    first allocation of that size gets it; poisoned says whether the output really is that block (an op that first
    allocates a workspace of that size takes it instead). CPU: not poisoned (malloc gives no such guarantee)."""
    if device.type != "cuda":
        return fn(), False
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    bait = torch.full((max(1, math.ceil(out_nbytes / 4)),), float("nan"), device=device)
    address = bait.data_ptr()
    del bait
    out = fn()
    torch.cuda.synchronize(device)
    return out, first_tensor(out).data_ptr() == address


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when out has a NaN/inf where ref is finite."""
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64[torch.isfinite(ref64)]).all():
        return math.inf
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300)).item()
