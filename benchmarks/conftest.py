"""Benchmark session set-up: markers, the default (small) collection, thread count, and the results JSON.

`pytest benchmarks --benchmark-disable` (what `make test` runs) runs every collected benchmark once as a plain
test: only the `quick` subset is collected then, unless DRN_BENCH_FULL=1 or --benchmark-only is given.
DRN_BENCH_THREADS sets torch's intra-op threads (the CPU goals are stated at 2).
Timed sessions write benchmarks/results/<device>.json (the pytest-benchmark layout's common subset: group, name,
stats, extra_info; records of earlier sessions that this one did not re-measure are kept) unless --benchmark-json
names a file; benchmarks/report.py reads either.
"""
import json
import pathlib
import platform

import pytest
import torch

from benchmarks.harness import RESULTS_DIR
from drn_kernels import settings

if settings.positive_int("DRN_BENCH_THREADS") is not None:
    torch.set_num_threads(settings.positive_int("DRN_BENCH_THREADS"))


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the quick benchmark subset (runs on a 2-core CPU in minutes)")


def _full(config) -> bool:
    return settings.flag("DRN_BENCH_FULL") or bool(config.getoption("benchmark_only", False))


def pytest_collection_modifyitems(config, items):
    if _full(config):
        return
    keep, drop = [], []
    for item in items:
        (keep if "quick" in item.keywords or not _is_benchmark(item) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _is_benchmark(item) -> bool:
    return "benchmark" in getattr(item, "fixturenames", ())


def pytest_sessionfinish(session, exitstatus):
    from benchmarks import common

    if not common.RESULTS or session.config.getoption("benchmark_json", None):
        return
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{common.device_name()}.json"
    machine = {"device": common.device_name(), "torch": torch.__version__, "python": platform.python_version(),
               "threads": torch.get_num_threads(), "node": platform.node()}
    path.write_text(json.dumps({"machine_info": machine, "benchmarks": merged(path, common.RESULTS)}, indent=1))
    print(f"\nbenchmark results written to {path}")


def merged(path: pathlib.Path, new: list) -> list:
    """This session's records, after the earlier records of the same file that it did not re-measure (same group
    and name): running one benchmark file does not erase the machine's other results."""
    try:
        old = json.loads(path.read_text()).get("benchmarks", [])
    except (OSError, ValueError, AttributeError):
        old = []
    fresh = {(r.get("group"), r.get("name")) for r in new}
    return [r for r in old if isinstance(r, dict) and (r.get("group"), r.get("name")) not in fresh] + list(new)
