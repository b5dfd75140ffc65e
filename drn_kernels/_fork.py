"""A process forked from one that imported drn_kernels runs torch with one intra-op thread.

GNU OpenMP, torch's CPU thread pool in the Linux builds, does not survive fork: once the parent has run a
parallel region on more than one thread, a forked child's first parallel region waits forever for pool threads
that fork did not copy (it blocks on a futex at 0 CPU seconds). Eager torch ops hang there as well as a fused
model's CPU kernels, which run on torch's threads. With one thread no parallel region starts, so the child runs.
DataLoader workers drop to one thread for this reason; this hook does the same for every os.fork: a
multiprocessing "fork" child or Pool worker, a preforking server's worker, a DataLoader worker.

A child that wants more threads is started with "spawn" or "forkserver" (a fresh interpreter), or calls
torch.set_num_threads(n) itself where it knows the parent never ran a parallel region. Installed once when
drn_kernels is imported.
"""
from __future__ import annotations

import os

_installed = False


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def install() -> None:
    """Register the hook (once per process; where os.register_at_fork exists)."""
    global _installed
    if not _installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_one_thread)
        _installed = True
