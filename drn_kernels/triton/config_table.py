"""Triton launch configs without autotuning: a committed table, a time-capped search for what it lacks.

triton.autotune compiles and times every config of a kernel's list the first time it meets a new key; with a
dozen keys per model and 2-6 configs of 1-3 s of compilation each, a model's first call can take minutes. The
launchers (conv_bn_act.py, class_head.py) ask `launch` first:

1. The table: a config per (kernel, key, dtype, arch), where the key is the autotuner's key arguments plus the
   kernel's constexpr flags (what selects a different compiled kernel). The committed rows live in
   tuned_configs.TABLE; `add` puts more rows in this process's table.
2. A time-capped search for a key the table lacks: the configs the autotuner would try (pruned the same way),
   each compiled and timed in order until SEARCH_CAP_S (default 4 s per key) has passed; the best so far wins,
   is added to this process's table and to MEASURED, which
   `python -m drn_kernels.triton.config_table` / `write_measured` turn into rows for tuned_configs.py (the device
   check writes them into its output folder, so one run on a new GPU refreshes the table).
3. Nothing: `launch` returns False and the launcher falls back to triton.autotune (under torch.compile tracing,
   CUDA-graph capture or SEARCH_CAP_S = 0, where nothing may be timed).

Pinning: PIN_FIRST = True launches the first config that passes pruning for every key (no table, no search):
the sanitizer payload sets it so that one small compiled kernel of each kind is checked.
SEARCH_CAP_S and PIN_FIRST are this module's variables (not environment settings): a program sets them.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Callable, Optional

import torch

SEARCH_CAP_S = 4.0   # seconds a search may spend on one key; 0: no search (triton.autotune decides)
PIN_FIRST = False    # True: every key launches its first config that fits, nothing is searched or looked up

_TABLE: dict[tuple, dict] = {}   # row key -> config dict (BLOCK_* plus num_warps, num_stages)
_LOADED = False
MEASURED: list[dict] = []       # rows found by searches in this process, in the order found
CHOSEN: dict[tuple, dict] = {}  # row key -> {"kernel", "key", "config", "source"} of every key launched here


def arch_of(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def row_key(kernel: str, key: dict, dtype: str, arch: str) -> tuple:
    return (kernel, tuple(sorted((str(k), _plain(v)) for k, v in key.items())), dtype, arch)


def _plain(v):
    return v if isinstance(v, (bool, str)) else int(v) if isinstance(v, int) else str(v)


def _load():
    global _LOADED
    if _LOADED:
        return
    from .tuned_configs import TABLE

    for row in TABLE:
        add(row)
    _LOADED = True


def add(row: dict):
    """Put one row ({"kernel", "key", "dtype", "arch", "config"}) into this process's table."""
    _TABLE[row_key(row["kernel"], row["key"], row["dtype"], row["arch"])] = dict(row["config"])


def lookup(kernel: str, key: dict, dtype: str, arch: str) -> Optional[dict]:
    _load()
    return _TABLE.get(row_key(kernel, key, dtype, arch))


def config_dict(cfg) -> dict:
    """A triton.Config as the table stores it."""
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def search(candidates: list, bench: Callable, cap_s: float, clock: Callable[[], float] = time.monotonic):
    """(best, seconds, tried): each candidate's bench(candidate) -> seconds per call (raises when it cannot
    run), in order, until cap_s has passed since the start; at least one candidate is always tried. best is None
    when every one tried raised."""
    start = clock()
    best, best_t, tried = None, math.inf, []
    for cand in candidates:
        if tried and clock() - start >= cap_s:
            break
        try:
            t = bench(cand)
        except Exception as e:  # noqa: BLE001 - out of shared memory / registers: try the next
            tried.append((cand, f"{type(e).__name__}: {str(e)[:120]}"))
            continue
        tried.append((cand, t))
        if t < best_t:
            best, best_t = cand, t
    return best, best_t, tried


def _plain_tensors(values) -> bool:
    """Real tensors (plain or nn.Parameter, as a fused model's weights are; not the fake / functional ones of a
    torch.compile trace): only those can be timed."""
    from torch._subclasses.fake_tensor import is_fake
    from torch._subclasses.functional_tensor import FunctionalTensor

    return all(not is_fake(v) and not isinstance(v, FunctionalTensor) for v in values if isinstance(v, torch.Tensor))


def launch(kernel: str, tuner, launcher, args: tuple, flags: dict, grid: Callable[[dict], tuple]) -> bool:
    """Launch `tuner.fn` (the jitted kernel behind the triton.autotune object `tuner`) with a config from the table,
    the pinned first config, or a capped search; False (nothing launched) when none applies and the caller should
    launch the autotuner. `launcher` wraps a kernel for launching (drn_kernels.triton.launcher); `grid(cfg)` is the
    launch grid for a config dict."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or tensors[0].device.type != "cuda":
        return False
    device = tensors[0].device
    timeable = (_plain_tensors(tensors) and not torch.compiler.is_compiling()
                and not torch.cuda.is_current_stream_capturing())
    return choose_and_launch(kernel, tuner, launcher, args, flags, grid, dtype_name(tensors[0].dtype),
                             arch_of(device), _median_seconds if timeable else None,
                             lambda: torch.cuda.get_device_name(device))


def _median_seconds(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median") / 1e3


def choose_and_launch(kernel: str, tuner, launcher, args: tuple, flags: dict, grid, dtype: str, arch: str,
                      time_call: Optional[Callable[[Callable], float]], device_name: Callable[[], str]) -> bool:
    """launch's decision for tensors of `dtype` on `arch`: pinned, table, or (when time_call, which returns the
    median seconds of a zero-argument call, is given) the capped search."""
    named = dict(zip(tuner.arg_names, args))
    key = {k: named[k] for k in tuner.keys if k in named}
    key.update({k: v for k, v in flags.items()})

    def run(cfg: dict, source: str = ""):
        if source:
            CHOSEN.setdefault(row_key(kernel, key, dtype, arch),
                              {"kernel": kernel, "key": dict(key), "config": dict(cfg), "source": source})
        meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
        launcher(tuner.fn)[grid(meta)](*args, **flags, **meta, num_warps=cfg["num_warps"],
                                       num_stages=cfg["num_stages"])

    if PIN_FIRST:
        run(config_dict(_pruned(tuner, named, flags)[0]), "pinned first")
        return True
    cfg = lookup(kernel, key, dtype, arch)
    if cfg is not None:
        run(cfg, "table")
        return True
    if time_call is None or not float(SEARCH_CAP_S) > 0:
        return False

    def bench(cfg: dict) -> float:
        run(cfg)  # compiles; raises when the config does not fit this GPU
        return time_call(lambda: run(cfg))

    t0 = time.monotonic()
    best, best_t, tried = search([config_dict(c) for c in _pruned(tuner, named, flags)], bench, float(SEARCH_CAP_S))
    if best is None:
        return False
    row = {"kernel": kernel, "key": {k: _plain(v) for k, v in key.items()}, "dtype": dtype, "arch": arch,
           "config": best, "ms": round(best_t * 1e3, 5), "tried": len(tried),
           "search_s": round(time.monotonic() - t0, 2), "device": device_name()}
    add(row)
    MEASURED.append(row)
    run(best, f"search ({len(tried)} tried in {row['search_s']} s)")  # the caller's result comes from the winner
    return True


def _pruned(tuner, named: dict, flags: dict) -> list:
    configs = list(tuner.configs)
    prune = getattr(tuner, "early_config_prune", None)
    if prune is not None:
        configs = prune(configs, {**named, **flags}) or configs
    return configs


def write_measured(path) -> int:
    """Write MEASURED as JSON rows for tuned_configs.TABLE; returns how many."""
    with open(path, "w") as f:
        json.dump(MEASURED, f, indent=1)
    return len(MEASURED)


def table_source(rows: list) -> str:
    """tuned_configs.py's TABLE literal for `rows` (the committed rows merged with measured ones, measured first)."""
    seen, merged = set(), []
    for row in rows:
        k = row_key(row["kernel"], row["key"], row["dtype"], row["arch"])
        if k not in seen:
            seen.add(k)
            merged.append({f: row[f] for f in ("kernel", "key", "dtype", "arch", "config", "ms", "device")
                           if f in row})
    body = ",\n".join("    " + repr(r) for r in merged)
    return "TABLE = [\n" + body + (",\n" if merged else "") + "]\n"


def main(argv=None) -> int:
    """python -m drn_kernels.triton.config_table WINNERS.json...: print tuned_configs.TABLE with those rows merged
    in (the newest measurement of a key first), to replace the literal in tuned_configs.py."""
    from .tuned_configs import TABLE

    files = list(argv if argv is not None else sys.argv[1:])
    if not files:
        print(main.__doc__, file=sys.stderr)
        return 2
    rows = []
    for name in reversed(files):
        rows += json.loads(open(name).read())
    print(table_source(rows + list(TABLE)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
