"""A pytest plugin (`-p benchmarks.pytest_test_timeout --per-test-timeout S`): each test may run S seconds.

The lent GPU has no package registry, so pytest-timeout may be missing: this is the part of it the device check
needs. A test past its time gets a TimeoutError raised in it (SIGALRM: between Python bytecodes, so a test stuck
inside one long kernel call is failed when that call returns); a test still running at twice its time (a hung
kernel) ends the process with exit status 4 after printing its name, and the caller's cap on the whole run
covers the rest.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import pytest


def pytest_addoption(parser):
    parser.addoption("--per-test-timeout", type=float, default=None, metavar="S",
                     help="fail a test that runs longer than S seconds; end pytest when one runs 2 x S")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = item.config.getoption("--per-test-timeout")
    limit = limit if limit and limit > 0 else None
    if limit is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran past its {limit:g} s (--per-test-timeout)")

    def hung():
        print(f"\nTIMEOUT (hung) {item.nodeid}: still running at {2 * limit:g} s; ending pytest", file=sys.stderr,
              flush=True)
        os._exit(4)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    killer = threading.Timer(2 * limit, hung)
    killer.daemon = True
    killer.start()
    try:
        yield
    finally:
        killer.cancel()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
