"""Many processes starting the build on first use at once: drn_kernels._build.lock, and the builds under it.

The lock tests hold the lock from small helper processes (the module loaded by path: no torch, no compile). The
slow test starts three builders into one empty build folder at once — `python -m drn_kernels.build --cpu` and a
two-process torchrun `drn evaluate segment --fused` — and checks that one compiled and the others waited.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK_MODULE = os.path.join(ROOT, "drn_kernels", "_build", "lock.py")

# A helper process: holds the lock of the folder argv[1] from the module loaded by path, says what happens.
_PROLOGUE = textwrap.dedent(f"""
    import importlib.util, os, subprocess, sys, time
    spec = importlib.util.spec_from_file_location("lock", {LOCK_MODULE!r})
    lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)
    folder = sys.argv[1]
    def say(text): print("say:", text, flush=True)
""")


def _lock_module():
    spec = importlib.util.spec_from_file_location("_build_lock_under_test", LOCK_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _PROLOGUE + textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _line_with(proc: subprocess.Popen, text: str, timeout: float = 30) -> str:
    """Read proc's output up to the first line containing text (fails after timeout, or at its end)."""
    found: list[str] = []

    def read():
        for line in proc.stdout:
            if text in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, f"no line with {text!r} within {timeout} s"
    return found[0]


WAITER = """
    start = time.time()
    with lock.held(folder, say):
        print("inside", time.time() - start, time.time(), lock.processes_in(folder, int(sys.argv[2])), flush=True)
"""


def test_waiter_proceeds_when_the_holder_lets_go(tmp_path):
    holder = _start("""
        with lock.held(folder, say):
            print("held", flush=True)
            time.sleep(1.5)
            print("releasing", time.time(), flush=True)
    """, tmp_path)
    _line_with(holder, "held")
    waiter = _start(WAITER, tmp_path, os.getpgid(0))
    assert f"waiting for the build by pid {holder.pid} on " in _line_with(waiter, "say:")
    assert waiter.poll() is None  # still waiting
    released = float(_line_with(holder, "releasing").split()[1])
    out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and holder.wait(timeout=30) == 0, out
    assert "waited" in out and "ended without finishing" not in out  # a clean release leaves no record
    entered = float([ln for ln in out.splitlines() if ln.startswith("inside")][0].split()[2])
    assert entered >= released


def test_killed_holder_is_taken_over_after_its_compilers_exit(tmp_path):
    """A holder killed by SIGKILL leaves its 'compiler' (a sleep started in the build folder, as ninja runs the
    compilers there) running: the next holder waits for it, then takes over."""
    holder = _start("""
        with lock.held(folder, say):
            compiler = subprocess.Popen(["sleep", "3"], cwd=folder)
            print("held", compiler.pid, os.getpgid(0), flush=True)
            time.sleep(600)
    """, tmp_path)
    try:
        _, compiler, group = _line_with(holder, "held").split()
        waiter = _start(WAITER, tmp_path, group)
        _line_with(waiter, "waiting for the build by")
        assert (tmp_path / "drn_build.lock").read_text().startswith("{")  # the holder's record
    finally:
        holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, out
    assert f"the build by pid {holder.pid}" in out and "ended without finishing" in out
    assert f"waiting for 1 process(es) of that build still running in the build folder (pid {compiler})" in out
    inside = [ln for ln in out.splitlines() if ln.startswith("inside")][0].split(maxsplit=3)
    assert inside[3] == "[]"  # nothing of the dead build ran any more when the waiter went in
    assert float(inside[1]) > 1.0  # it waited for the 3-second 'compiler'
    assert (tmp_path / "drn_build.lock").read_text() == ""  # the waiter let go cleanly


def test_no_jit_build_waits_for_a_build_under_way(tmp_path, monkeypatch):
    """DRN_NO_JIT_BUILD=1 loads only: it waits for the build another process runs in the folder, then loads (here
    the holder builds nothing, so there is nothing to load, and the reason says so)."""
    from drn_kernels._build import extension as _extension

    monkeypatch.setenv("DRN_BUILD_DIR", str(tmp_path))
    folder = _extension.build_directory(with_cuda=False, create=True)
    holder = subprocess.Popen([sys.executable, "-c", _PROLOGUE + textwrap.dedent("""
        with lock.held(folder, say):
            print("held", flush=True)
            sys.stdin.readline()
    """), folder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _line_with(holder, "held")
    env = {**os.environ, "DRN_BUILD_DIR": str(tmp_path), "DRN_NO_JIT_BUILD": "1", "DRN_BUILD_CUDA": "0",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    loader = subprocess.Popen([sys.executable, "-c", "from drn_kernels._build import extension as _extension; "
                               "print('loaded:', _extension.load(), _extension.why_unavailable('cpu'))"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert f"waiting for the build by pid {holder.pid}" in _line_with(loader, "waiting", timeout=120)
    finally:
        holder.communicate("\n", timeout=30)
    out, _ = loader.communicate(timeout=120)
    assert loader.returncode == 0, out
    assert "loaded: None" in out and "drn_kernels_C_cpu.so" in out and "DRN_NO_JIT_BUILD=1" in out


def test_threads_of_one_process_take_turns(tmp_path):
    lock = _lock_module()
    inside, most, said = [0], [0], []
    guard = threading.Lock()

    def build():
        with lock.held(str(tmp_path), said.append):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.2)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 1
    # "by pid N", or "by another process" when the waiter read the file in the moment between the holder's flock
    # and its record
    assert any("waiting for the build by" in s for s in said)
    assert not any("ended without finishing" in s for s in said)


def test_junk_lock_file_is_taken_over(tmp_path):
    lock = _lock_module()
    (tmp_path / lock.LOCK_FILE).write_bytes(b"\x00junk\xff")
    said = []
    with lock.held(str(tmp_path), said.append):
        record = json.loads((tmp_path / lock.LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()
    assert len(said) == 1 and "an unknown process" in said[0] and "ended without finishing" in said[0]
    assert (tmp_path / lock.LOCK_FILE).read_text() == ""
    with pytest.raises(ZeroDivisionError):  # a failed build lets go cleanly too
        with lock.held(str(tmp_path), said.append):
            1 / 0
    assert (tmp_path / lock.LOCK_FILE).read_text() == "" and len(said) == 1


def test_shared_lock_of_a_missing_folder_runs_unlocked(tmp_path):
    lock = _lock_module()
    with lock.held(str(tmp_path / "nowhere"), print, shared=True):
        pass
    with pytest.raises(FileNotFoundError):
        with lock.held(str(tmp_path / "nowhere"), print):
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _segmentation_set(root):
    """Two random 40x48 images and labels (some 255) in the reference layout, and seeded weights."""
    import torch
    from PIL import Image

    import drn

    rng = np.random.default_rng(5)
    (root / "img").mkdir()
    (root / "gt").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        label = rng.integers(0, 19, (40, 48)).astype(np.uint8)
        label[rng.random((40, 48)) < 0.1] = 255
        Image.fromarray(label).save(root / "gt" / f"{i}.png")
    (root / "val_images.txt").write_text("img/0.png\nimg/1.png\n")
    (root / "val_labels.txt").write_text("gt/0.png\ngt/1.png\n")
    (root / "info.json").write_text(json.dumps({"mean": [0.4, 0.4, 0.4], "std": [0.25, 0.25, 0.25]}))
    torch.manual_seed(5)
    torch.save(drn.build("drn_d_22", task="segment", num_classes=19).state_dict(), root / "seg.pth")


@pytest.mark.build
@pytest.mark.slow
def test_three_builders_at_once_into_an_empty_folder(tmp_path, cpu_settings, capsys):
    """`python -m drn_kernels.build --cpu` and a two-process torchrun `drn evaluate segment --fused` start at once
    on a build folder nothing was built in: one compiles, the others wait and load its build; the evaluation is
    that of one process (the algorithm pinned, so the answers are bit-identical)."""
    from drn.apps import evaluate

    data, build_dir = tmp_path / "data", tmp_path / "build"
    data.mkdir()
    _segmentation_set(data)
    cpu_settings.set("DRN_CPU_CONV", "winograd")
    args = ["segment", "--data", str(data), "--model", "drn_d_22", "--weights", str(data / "seg.pth"), "--json",
            "--device", "cpu", "--fused"]
    env = {**os.environ, "DRN_BUILD_DIR": str(build_dir), "DRN_BUILD_CUDA": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("DRN_NO_JIT_BUILD", None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port()), "-m", "drn.evaluate", *args]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in ([sys.executable, "-m", "drn_kernels.build", "--cpu"], torchrun)]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    said = "".join(err for _, err in outs)
    assert said.count("drn_kernels: compiling the C++ extension") == 1, said[-3000:]
    assert said.count("drn_kernels: built ") == 1
    assert "drn_kernels: waiting for the build by pid" in said and "ended without finishing" not in said
    assert "falling back" not in said  # no process ran without the kernels (the warning of a failed build)
    (folder,) = [d for d in build_dir.glob("*/drn_kernels_C_cpu")]
    assert (folder / "build.log").is_file() and not (folder / "build.log.partial").exists()
    assert (folder / "drn_build.lock").read_text() == ""
    lines = [ln for ln in outs[1][0].splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    assert evaluate.main(args) == 0  # this process, its own build, the same pinned algorithm
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    drop = lambda d: {k: v for k, v in d.items() if k != "images_per_s"}  # noqa: E731 (a speed, not a result)
    assert drop(json.loads(lines[0])) == drop(one) and one["images"] == 2
