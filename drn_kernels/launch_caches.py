"""The per-signature caches of the launch path, switchable for measuring what they save (benchmarks/launch_cost.py).

Three caches make a repeated call cheap on the host: the input checks passed per call signature
(_checks._PASSED), the Triton launcher's facts per size/stride signature (triton.conv_bn_act._FACTS) and the Triton
op modules imported once (_backends._TRITON_IMPORTED). disabled() swaps each for one that keeps nothing, so every
call takes the uncached path; the answers are the same either way.
"""
from __future__ import annotations

import contextlib

from . import _backends, _checks


class _Forgetful(dict):
    """A cache that never keeps anything: every call takes the uncached path."""

    def __setitem__(self, key, value):
        pass

    def add(self, item):
        pass


@contextlib.contextmanager
def disabled():
    """Within the block, the launch path's caches keep nothing; restored after."""
    from .triton import conv_bn_act as conv_mod

    saved = _checks._PASSED, conv_mod._FACTS, _backends._TRITON_IMPORTED
    _checks._PASSED, conv_mod._FACTS, _backends._TRITON_IMPORTED = _Forgetful(), _Forgetful(), _Forgetful()
    try:
        yield
    finally:
        _checks._PASSED, conv_mod._FACTS, _backends._TRITON_IMPORTED = saved
