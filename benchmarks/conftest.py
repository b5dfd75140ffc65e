"""Benchmark session set-up: options, markers, the default (small) collection, thread count, and the results JSON.

`pytest benchmarks --benchmark-disable` (what `make test` runs) runs every collected benchmark once as a plain
test: only the `quick` subset is collected then, unless --bench-full or --benchmark-only is given.
--bench-threads N sets torch's intra-op threads (the CPU goals are stated at 2); --ceilings FILE names the device
check's JSON of measured copy/matmul ceilings for the roofline columns (default: the newest in benchmarks/results/
of the same device).
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
from tests.helpers import cpu_settings  # noqa: F401  (the fixture, as in tests/)


def positive_integer(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"a positive integer, got {text!r}")
    return int(text)


def pytest_addoption(parser):
    group = parser.getgroup("drn benchmarks")
    group.addoption("--bench-threads", type=positive_integer, default=None, metavar="N",
                    help="torch's intra-op threads in the benchmarks (the CPU goals are stated at 2)")
    group.addoption("--bench-full", action="store_true",
                    help="collect every benchmark under plain pytest, not only the quick ones")
    group.addoption("--ceilings", default=None, metavar="FILE",
                    help="JSON file of measured copy/matmul ceilings for the roofline columns (default: "
                         "benchmarks/results/*.json of the same device)")


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the quick benchmark subset (runs on a 2-core CPU in minutes)")
    if config.getoption("--bench-threads") is not None:
        torch.set_num_threads(config.getoption("--bench-threads"))
    from benchmarks import common

    common.CEILINGS_FILE = config.getoption("--ceilings")


def _full(config) -> bool:
    return config.getoption("--bench-full") or bool(config.getoption("benchmark_only", False))


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
