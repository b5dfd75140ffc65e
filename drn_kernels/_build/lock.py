"""One build at a time per build folder: an flock on BUILD_DIR/drn_build.lock, held around the whole build on first
use (the staleness check, the compile, build.log, the load) by every process and thread that builds there.

Many processes may start the same build at once (torchrun's ranks on a machine that has not built yet, `pytest -n`,
two notebooks): the first takes the lock and builds, the others wait on it, then find the library up to date and
load it. flock because the kernel lets go of it when its holder dies (killed, crashed, out of memory): a lock left
by a killed build needs no staleness guess, the next process simply gets it. It also conflicts between two opens
of the file within one process, so two threads wait on each other too.

The holder writes who it is (pid, process group, host, start) into the file and empties it when it lets go, so a
record found by the next holder means that its holder died while building. The compiler processes of such a build
may still be running (ninja and the compilers outlive a SIGKILL or SIGTERM of the Python process that started
them), and two ninjas must not write the same objects: the new holder waits until no process of the dead holder's
process group works in the build folder any more (seen in /proc, so on this host and on Linux only).

Torch-free on purpose (tests load it by path).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows has no flock: builds there run without this lock
    fcntl = None

LOCK_FILE = "drn_build.lock"
POLL_SECONDS = 0.25  # how often a new holder looks whether the dead holder's compilers have finished


def _record() -> bytes:
    return json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()


def _read_record(fd: int) -> dict | None:
    """The holder's record in the lock file: None when empty (nobody, or a holder that let go cleanly)."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"unreadable": raw[:80].decode(errors="replace")}


def describe(record: dict | None) -> str:
    """'pid 123 on host (since 2026-01-01 10:00:00)' for a holder's record."""
    if not record:
        return "another process"
    if "pid" not in record:
        return f"an unknown process (lock file says {record.get('unreadable')!r})"
    return f"pid {record['pid']} on {record.get('host', '?')} (since {record.get('since', '?')})"


def processes_in(build_dir: str, pgid: int) -> list[int]:
    """Live processes of process group `pgid` whose working folder is build_dir (ninja and the compilers it runs
    work there), other than this one; [] where /proc cannot tell."""
    target = os.path.realpath(build_dir)
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{name}/cwd") != target:  # fails for a zombie and for other users' processes
                continue
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            state, _ppid, group = stat[stat.rindex(")") + 2:].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state not in ("Z", "X"):
            found.append(int(name))
    return found


def _wait_for_leftovers(build_dir: str, record: dict, say: Callable[[str], None]) -> None:
    """The dead holder's compilers still running in build_dir (this host only): wait until they have exited."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pgid"), int):
        return
    left = processes_in(build_dir, record["pgid"])
    if not left:
        return
    say(f"waiting for {len(left)} process(es) of that build still running in the build folder "
        f"(pid {', '.join(map(str, left[:8]))})")
    start = time.perf_counter()
    while left:
        time.sleep(POLL_SECONDS)
        left = processes_in(build_dir, record["pgid"])
    say(f"they finished after {time.perf_counter() - start:.0f} s")


@contextlib.contextmanager
def held(build_dir: str, say: Callable[[str], None], shared: bool = False):
    """Hold the build folder's lock while the block runs: exclusive (a build), or shared (only loading a built
    library, DRN_NO_JIT_BUILD=1: it waits for a build under way, never for another loader). Says (one line each)
    when it has to wait, and when it takes over from a build that died. Where the file system refuses locks
    (ENOLCK/ENOTSUP/EOPNOTSUPP, e.g. NFS without a lock daemon) or a shared lock cannot open the file (a read-only
    folder, where nobody can build either), the block runs without one."""
    if fcntl is None:
        yield
        return
    path = os.path.join(build_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if not shared:
            raise
        fd = None
    try:
        if fd is not None and not _lock(fd, path, build_dir, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, say):
            os.close(fd)
            fd = None
        if fd is not None and not shared:
            previous = _read_record(fd)
            if previous:
                say(f"the build by {describe(previous)} in {build_dir} ended without finishing (killed?); "
                    f"taking over")
                _wait_for_leftovers(build_dir, previous, say)
            os.ftruncate(fd, 0)
            os.pwrite(fd, _record(), 0)
        try:
            yield
        except Exception:  # a failed build ended too: only an interrupt (or a kill) leaves the record
            _clear(fd, shared)
            raise
        _clear(fd, shared)
    finally:
        if fd is not None:
            os.close(fd)  # lets go of the lock


def _clear(fd: int | None, shared: bool) -> None:
    """A clean release: the next holder finds no record."""
    if fd is not None and not shared:
        os.ftruncate(fd, 0)


def _lock(fd: int, path: str, build_dir: str, kind: int, say: Callable[[str], None]) -> bool:
    """flock(fd, kind), saying so when it has to wait; False where the file system refuses locks."""
    try:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for the build by {describe(_read_record(fd))} in {build_dir} (lock: {LOCK_FILE})")
            start = time.perf_counter()
            fcntl.flock(fd, kind)
            say(f"waited {time.perf_counter() - start:.0f} s for that build")
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        say(f"no lock: {path} cannot be locked here ({e.strerror})")
        return False
    return True
