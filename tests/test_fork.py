"""Forking after the parent used a fused model (drn_kernels._fork): the children run, on one torch thread.

Without the hook this hangs on Linux builds of torch (GNU OpenMP): the parent runs models on 2 threads, then a
forked child's first parallel region waits forever for pool threads fork did not copy. The script runs in its own
process group, killed whole at the timeout, so a hang fails the test instead of leaving sleeping children behind.
"""
import pytest
import os
import signal
import subprocess
import sys
import textwrap

pytestmark = pytest.mark.build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp
    import torch
    import drn

    torch.set_num_threads(2)
    torch.manual_seed(0)
    fused = drn.build("drn_d_22", fused=True).eval()
    eager = drn.build("drn_d_22").eval()
    x = torch.randn(2, 3, 48, 56)
    with torch.no_grad():
        want_fused, want_eager = fused(x), eager(x)  # the OpenMP pool runs 2 threads in the parent

    def run(_):
        with torch.no_grad():
            return torch.get_num_threads(), fused(x), eager(x)

    class Calls(torch.utils.data.Dataset):  # a DataLoader worker that runs the model itself
        def __len__(self):
            return 2

        def __getitem__(self, i):
            with torch.no_grad():
                return fused(x)

    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(run, range(2))
    for threads, got_fused, got_eager in results:
        assert threads == 1, threads
        assert torch.equal(got_fused, want_fused)  # the same algorithms (chosen in the parent) on fewer threads
        torch.testing.assert_close(got_eager, want_eager)
    loader = torch.utils.data.DataLoader(Calls(), batch_size=None, num_workers=2, multiprocessing_context="fork")
    for got in loader:
        assert torch.equal(got, want_fused)
    assert torch.get_num_threads() == 2  # the parent keeps its threads
    print("forks ok")
""")


def test_fork_after_using_a_fused_model():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the forked children hung (killed after 180 s)\n{err[-3000:]}") from None
    assert proc.returncode == 0 and "forks ok" in out, err[-3000:]
