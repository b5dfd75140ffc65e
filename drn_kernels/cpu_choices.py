"""The cpu backend's algorithm choices (drn_kernels.prepared): what keys them, where they come from, where they last.

A fused model's 3x3 stride-1 convs pick Winograd F(4x4), F(2x2) or oneDNN by timing (drn_kernels.prepared). So that
the same machine gives the same answer run after run, and a new image size does not pay a new search, a choice is

- keyed by what decides it (`key`): the weight's shape, the conv geometry, the dtype and a size bucket — the
  output's pixel count rounded down to a power of two, every size of prepared.BUCKET_PIXELS (1024) or more in one
  bucket (from 32x32 maps on, the tiles' waste at the edges no longer moves the choice), so a pass over image sizes
  never seen searches each layer kind once;
- taken, in this order, from: a pinned table (drn.build(..., fused=True, cpu_choices=TABLE) or
  FusedModel.pin_cpu_choices: one table for evaluations on several machines), this process's table, this machine's
  cache file, and only then measured;
- kept: each measured choice is added to the cache file of this machine signature (`signature`: the CPU, the
  extension library, torch, the thread count, the ISAs our kernels, ATen and oneDNN run), in the folder
  DRN_CHOICE_CACHE names (default: `cpu_choices/` beside the build on first use; "off": no file). The file is
  replaced atomically under a lock, so processes may share it. A corrupt file, or one of another signature, is
  ignored with one warning and never gives a wrong answer: a cached or pinned choice that this machine cannot run
  (say F(4x4) where the bfloat16 GEMM offers F(2x2) only) is measured instead (cache) or refused (pinned).

The key is a string, "k64c64r3s3/s1,1/p2,2/d2,2/float32/px1024", so a table is plain JSON ({key: choice}).
SOURCES counts where this process's choices came from; describe_sources() says it in one line (drn evaluate and
drn segment print it).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading

import torch

from . import settings
from ._checks import conv_output_size

CHOICES = ("winograd4", "winograd2", "onednn")  # every algorithm a choice may name
SOURCE_NAMES = ("pinned", "cache", "measured", "setting")
FORMAT = 1  # the cache file's format version

_log = logging.getLogger(__name__)
_lock = threading.RLock()
_tables: dict[str, dict[str, str]] = {}  # signature digest -> this process's {key: choice}
_files: dict[str, dict[str, str]] = {}   # signature digest -> the cache file's {key: choice}, as read once
_warned: set[str] = set()
SOURCES: collections.Counter = collections.Counter()  # source -> (layer, shape) choices this process took from it
CACHE_FILES: set[str] = set()                          # the cache files this process read or wrote


def bucket(pixels: int, cap: int) -> int:
    """The size bucket of an output of `pixels` pixels: the largest power of two <= min(pixels, cap), at least 1."""
    p = max(1, min(int(pixels), int(cap)))
    return 1 << (p.bit_length() - 1)


def key(weight_shape, x_shape, stride, padding, dilation, dtype: torch.dtype, cap: int) -> str:
    """The choice key of a conv of `weight_shape` (K, C, R, S) on an input of `x_shape` (N, C, H, W)."""
    k, c, r, s = (int(v) for v in weight_shape)
    n, _, h, w = (int(v) for v in x_shape)
    p = conv_output_size(h, r, stride[0], padding[0], dilation[0])
    q = conv_output_size(w, s, stride[1], padding[1], dilation[1])
    geometry = "/".join(f"{name}{a},{b}" for name, (a, b) in (("s", stride), ("p", padding), ("d", dilation)))
    return f"k{k}c{c}r{r}s{s}/{geometry}/{str(dtype).replace('torch.', '')}/px{bucket(n * max(p, 0) * max(q, 0), cap)}"


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> dict:
    """What names this CPU: /proc/cpuinfo's vendor, family, model, stepping, model name and a digest of its flags
    (Linux), else what platform reports."""
    info = {"machine": platform.machine(), "processor": platform.processor()}  # copied by signature()
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    for name in ("vendor_id", "cpu family", "model", "stepping", "model name"):
        info[name] = fields.get(name, "")
    info["flags"] = hashlib.sha256(" ".join(sorted(fields.get("flags", "").split())).encode()).hexdigest()[:16]
    return info


def _library_identity() -> dict:
    from ._build import extension as _extension

    path = _extension.library_path()
    try:
        st = os.stat(path)
        return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except (TypeError, OSError):
        return {"path": path}


def signature() -> dict:
    """Everything besides the layer that decides which algorithm is fastest: a choice measured under another
    signature is not reused."""
    mkldnn = torch.backends.mkldnn
    return {"format": FORMAT, "cpu": dict(_cpu_identity()), "library": _library_identity(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "drn_isa": torch.ops.drn.cpu_isa(),
            "bf16_gemm": bool(torch.ops.drn.cpu_bf16_gemm()), "aten_isa": torch.backends.cpu.get_cpu_capability(),
            "onednn": bool(mkldnn.is_available() and mkldnn.enabled),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")),
            "prefetch": settings.choice("DRN_CPU_PREFETCH")}


def _digest(sig: dict) -> str:
    return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:20]


def cache_folder() -> str | None:
    """The cache files' folder: DRN_CHOICE_CACHE, else cpu_choices/ beside the build on first use; None if off."""
    configured = settings.path("DRN_CHOICE_CACHE")
    if configured is not None:
        return None if configured.lower() == "off" else configured
    from ._build import extension as _extension

    return os.path.join(os.path.dirname(_extension.build_directory(False)), "cpu_choices")


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        _log.warning(message)


def _read_file(path: str, sig: dict) -> dict[str, str]:
    """The choices in the cache file at `path` when it is one of signature `sig`; {} (one warning) when it is
    corrupt or of another signature; {} when absent."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        _warn_once(path, f"drn_kernels: ignoring the algorithm-choice cache {path}: unreadable ({e}); the choices "
                         "are measured again")
        return {}
    if not isinstance(data, dict) or data.get("signature") != sig or not isinstance(data.get("choices"), dict):
        _warn_once(path, f"drn_kernels: ignoring the algorithm-choice cache {path}: it is not one of this machine, "
                         "build and settings; the choices are measured again")
        return {}
    return {k: v for k, v in data["choices"].items() if isinstance(k, str) and v in CHOICES}


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive lock on path + '.lock' (fcntl; none where fcntl is missing): the kernel drops it with the
    process, so a killed writer leaves no stale lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(path: str, sig: dict, new: dict[str, str]) -> None:
    """Add `new` to the cache file at `path` (merged with what other processes wrote since), atomically."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with _file_lock(path):
        merged = _read_file(path, sig)
        merged.update(new)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".choices-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"signature": sig, "choices": dict(sorted(merged.items()))}, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class Context:
    """This machine's signature and its tables, fixed for one decision (threads may change between calls)."""

    def __init__(self):
        self.sig = signature()
        self.digest = _digest(self.sig)
        folder = cache_folder()
        self.path = os.path.join(folder, f"{self.digest}.json") if folder else None

    def table(self) -> dict[str, str]:
        return _tables.setdefault(self.digest, {})

    def cached(self, k: str) -> str | None:
        if self.path is None:
            return None
        with _lock:
            if self.digest not in _files:
                _files[self.digest] = _read_file(self.path, self.sig)
                CACHE_FILES.add(self.path)
            return _files[self.digest].get(k)

    def keep(self, k: str, choice: str, measured: bool) -> None:
        """Record `choice` for key `k` in this process, and in the cache file when it was measured here."""
        with _lock:
            self.table()[k] = choice
            if measured and self.path is not None:
                _files.setdefault(self.digest, {})[k] = choice
                try:
                    _write(self.path, self.sig, {k: choice})
                    CACHE_FILES.add(self.path)
                except OSError as e:
                    _warn_once(self.path, f"drn_kernels: cannot write the algorithm-choice cache {self.path} ({e}); "
                                          "choices are kept for this process only")


def load_table(table) -> dict[str, str]:
    """A pinned table from a dict {key: choice}, a cache file's dict, or the path of a JSON file of either; raises
    ValueError (naming cpu_choices) for anything else."""
    source = table
    if isinstance(table, (str, os.PathLike)):
        try:
            with open(table) as f:
                table = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"cpu_choices: cannot read {os.fspath(source)!r} as a JSON choice table: {e}") from None
    if isinstance(table, dict) and isinstance(table.get("choices"), dict):
        table = table["choices"]
    if not isinstance(table, dict):
        raise ValueError(f"cpu_choices must be a dict {{key: choice}} or a JSON file of one, got "
                         f"{type(table).__name__}")
    bad = {k: v for k, v in table.items() if not isinstance(k, str) or v not in CHOICES}
    if bad:
        k, v = next(iter(bad.items()))
        raise ValueError(f"cpu_choices: {k!r}: {v!r} is not one of {', '.join(CHOICES)}")
    return dict(table)


def describe_sources() -> str:
    """One line: where this process's cpu algorithm choices came from (drn evaluate / drn segment print it)."""
    counts = ", ".join(f"{SOURCES[s]} {s}" for s in SOURCE_NAMES if SOURCES[s])
    files = f" (cache: {', '.join(sorted(CACHE_FILES))})" if CACHE_FILES else ""
    return f"cpu algorithm choices: {counts or 'none made'}{files}"
