"""Conv weights prepared once for the kernels that run them, kept by the one who owns the weights.

The cpu backend computes with other forms of a conv weight than the (K, C, R, S) tensor: its Winograd path with
U = G g Gᵀ (drn::winograd_weight; ~0.3 s for all of drn_c_26's layers), its oneDNN path with the weight
re-ordered into oneDNN's blocked layout for the conv's geometry and input shape. The public ops never cache
these: a cache keyed on a tensor (identity, data pointer, `_version`) cannot see writes through `.data`, numpy
views or inference tensors, and would compute with stale weights. Called with a weight, the ops transform it on
every call. Whoever runs one weight many times makes a PreparedConv instead and passes it the calls.

A PreparedConv reads its weight when it is made (the Winograd form) and when it first runs an input shape (a
oneDNN copy, at most MAX_ONEDNN kept), and never looks at it again: its owner must give it tensors that nothing
else writes, and make a new PreparedConv whenever the values change. drn.fused.FusedConv does: it keeps the
tensors to itself (its `weight`, `bias` and state_dict() are copies) and re-prepares on load_state_dict, .to()
and assignment. The Triton and CUDA kernels need no prepared form: a channels_last weight already is the (K, R,
S, C) layout they stream (a free view).

Algorithm choice, by measurement (like cudnn.benchmark): at the first call of an input shape, a 3x3 stride-1
conv that Winograd applies to (float32; bfloat16 where the CPU has AVX512-BF16) times its candidates — the
Winograd tiles offered for its dtype (drn::cpu_winograd_tiles: F(4x4,3x3) and F(2x2,3x3) in float32, F(2x2) only in
bfloat16, whose F(4x4) is too inaccurate) and oneDNN's direct convolution — on that input (cropped to at most TIMED_PIXELS output pixels), warm-up then TIMING_ROUNDS
interleaved rounds, and keeps the one with the least median, per (weight shape, input shape, geometry, dtype,
threads, ISA) for the whole process: every later call, and every PreparedConv of the same shape, runs the same
algorithm, so repeats are bit-identical. The choice goes to the kernel as the prepared form it passes (a Winograd
U of that tile, or a oneDNN copy), not through a setting. DRN_CPU_CONV pins it (cpu_conv_setting): "auto" (the
default) measures, "winograd" takes Winograd at DRN_WINOGRAD_TILE, "direct" oneDNN, "aten" neither. Only the
Winograd forms of the tiles kept stay in memory. The search's cost is logged (logger drn_kernels.prepared, INFO)
and kept: PreparedConv.search_seconds, and SEARCHES for the process.
"""
from __future__ import annotations

import copy
import logging
import statistics
import time

import torch
from torch import Tensor

from . import _backends, _checks, ops

WINOGRAD = "winograd"
CANDIDATES = ("winograd4", "winograd2", "onednn")  # every algorithm a search may time (its dtype's subset)
TIMED_PIXELS = 4096   # output pixels (batch x rows x columns) of the input the candidates are timed on, at most
TIMING_ROUNDS = 3     # interleaved timed rounds per candidate, after one warm-up run each

_log = logging.getLogger(__name__)
_CHOICES: dict[tuple, str | None] = {}  # (weight shape, input shape, geometry, dtype, threads, ISA) -> algorithm
SEARCHES: list[dict] = []               # one record per measured choice: key, median seconds per candidate, cost


def cpu_conv_setting() -> tuple[str, int, str]:
    """(DRN_CPU_CONV, DRN_WINOGRAD_TILE, DRN_CPU_ISA) as the algorithm choice reads them (drn_kernels.settings
    validates them). DRN_CPU_CONV: "auto" (default: measure), "winograd" (pinned, at the tile), "direct" (oneDNN
    pinned) or "aten" (no prepared forms)."""
    from . import settings

    return settings.choice("DRN_CPU_CONV"), settings.cpu_options().winograd_tile, settings.choice("DRN_CPU_ISA")


def _timing_input(x: Tensor, padding, dilation) -> Tensor:
    """x, or a crop of it (fewer images, then fewer rows) whose conv output has about TIMED_PIXELS pixels."""
    n, _, h, w = x.shape
    p = h + 2 * padding[0] - 2 * dilation[0]
    q = w + 2 * padding[1] - 2 * dilation[1]
    if p <= 0 or q <= 0 or n * p * q <= TIMED_PIXELS:
        return x
    if p * q <= TIMED_PIXELS:
        return x[: TIMED_PIXELS // (p * q)]
    rows = min(p, max(-(-TIMED_PIXELS // q), 8 * dilation[0]))  # whole Winograd tiles of every phase
    return x[:1, :, : rows + h - p]


def median_times(runs: dict, rounds: int = TIMING_ROUNDS) -> dict[str, float]:
    """Median seconds of each callable in `runs`: one warm-up each, then `rounds` interleaved rounds."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


class PreparedConv:
    """conv_bn_act with a fixed `weight` (K, C, R, S) and `bias` (K,) on `backend`, the weight's prepared forms
    built here (Winograd) or at the first call of each input shape and geometry (oneDNN)."""

    MAX_ONEDNN = 8  # oneDNN copies kept (one per input shape and conv geometry: whole maps, row bands)

    def __init__(self, weight: Tensor, bias: Tensor, backend: str):
        self.weight = weight
        self.bias = bias
        self.backend = backend
        self.winograd: dict[int, Tensor] = {}  # tile -> drn::winograd_weight(weight, tile), the tiles chosen
        self.onednn: dict[tuple, Tensor] = {}  # (input shape, stride, padding, dilation) -> oneDNN-layout copy
        self.onednn_failed = False
        self.algorithms: dict[tuple, str | None] = {}  # (input shape, stride, padding, dilation) -> chosen
        self.search_seconds = 0.0  # time this object spent measuring candidates
        self.on_cpu = self._runs_on_cpu_backend()

    def _runs_on_cpu_backend(self) -> bool:
        if self.weight.device.type != "cpu" or self.backend not in ("cpu", "auto"):
            return False
        return _backends.why_unavailable("cpu", self.weight.device) is None

    def algorithm(self, x: Tensor, stride, padding, dilation) -> str | None:
        """The algorithm this conv runs for x's shape: "winograd4", "winograd2", "onednn", or None (the op's own
        path: not the cpu backend, or DRN_CPU_CONV=aten); chosen at the first call of the shape (see the module)."""
        key = (tuple(x.shape), tuple(stride), tuple(padding), tuple(dilation))
        if key in self.algorithms:
            return self.algorithms[key]
        mode, tile, isa = cpu_conv_setting()
        shared = (tuple(self.weight.shape), key, self.weight.dtype, torch.get_num_threads(), isa, mode, tile)
        if shared not in _CHOICES:
            path = torch.ops.drn.cpu_conv_algorithm(x, self.weight, list(stride))
            tiles = torch.ops.drn.cpu_winograd_tiles(x, self.weight, list(stride))  # per DRN_CPU_CONV and dtype
            if path == "aten":
                _CHOICES[shared] = None
            elif not tiles:
                _CHOICES[shared] = "onednn"
            elif mode != "auto":
                _CHOICES[shared] = f"winograd{tile if tile in tiles else tiles[0]}"
            else:
                _CHOICES[shared] = self._measure(x, stride, padding, dilation, shared, tiles)
        self.algorithms[key] = _CHOICES[shared]
        return self.algorithms[key]

    def _measure(self, x: Tensor, stride, padding, dilation, shared, tiles) -> str:
        """The fastest of the Winograd `tiles` and oneDNN for this call (median of interleaved runs on a crop of
        x)."""
        start = time.perf_counter()
        xt = _timing_input(x, padding, dilation)
        forms = {f"winograd{t}": torch.ops.drn.winograd_weight(self.weight, t) for t in tiles}
        try:
            forms["onednn"] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.contiguous(), list(padding), list(stride), list(dilation), 1, list(xt.shape))
        except RuntimeError:
            pass
        runs = {name: (lambda form=form: torch.ops.drn.conv_bn_act_prepared_native(
            xt, self.weight, self.bias, form, stride, padding, dilation, None, True)) for name, form in forms.items()}
        times = median_times(runs)
        best = min(times, key=times.get)
        if best.startswith(WINOGRAD):
            self.winograd[int(best[-1])] = forms[best]
        seconds = time.perf_counter() - start
        self.search_seconds += seconds
        SEARCHES.append({"key": shared, "timed_shape": tuple(xt.shape), "median_s": times, "chosen": best,
                         "seconds": seconds})
        _log.info("cpu conv %s on %s: %s chosen (medians %s ms; search %.0f ms)", tuple(self.weight.shape),
                  tuple(x.shape), best, {n: round(t * 1e3, 2) for n, t in times.items()}, seconds * 1e3)
        return best

    def _prepared(self, x: Tensor, stride, padding, dilation) -> Tensor | None:
        """The prepared form for this call, or None (the op then works from the weight itself)."""
        if not self.on_cpu or x.device.type != "cpu" or x.shape[0] == 0 or x.dtype != self.weight.dtype:
            return None
        if torch.compiler.is_compiling():  # no timing, and no MKLDNN-layout tensors, inside a traced region
            chosen = self.algorithms.get((tuple(x.shape), tuple(stride), tuple(padding), tuple(dilation)))
            return self.winograd.get(int(chosen[-1])) if chosen and chosen.startswith(WINOGRAD) else None
        with torch.no_grad():
            chosen = self.algorithm(x, stride, padding, dilation)
            if chosen is None:
                return None
            if chosen.startswith(WINOGRAD):
                tile = int(chosen[-1])
                if tile not in self.winograd:
                    self.winograd[tile] = torch.ops.drn.winograd_weight(self.weight, tile)
                return self.winograd[tile]
            return self._onednn_copy(x, stride, padding, dilation)

    def _onednn_copy(self, x: Tensor, stride, padding, dilation) -> Tensor | None:
        key = (tuple(x.shape), tuple(stride), tuple(padding), tuple(dilation))
        packed = self.onednn.get(key)
        if packed is None and not self.onednn_failed:
            try:
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight.contiguous(), list(padding), list(stride), list(dilation), 1, list(x.shape))
            except RuntimeError:  # no oneDNN kernel for this dtype on this CPU: the op's own fallback runs
                self.onednn_failed = True
                return None
            if len(self.onednn) >= self.MAX_ONEDNN:
                self.onednn.clear()
            self.onednn[key] = packed
        return packed

    def conv_bn_act(self, x: Tensor, *, stride, padding, dilation, residual=None, relu=True) -> Tensor:
        """drn_kernels.conv_bn_act(x, weight, bias, ...) on the prepared forms."""
        stride, padding, dilation = (_checks.pair(v, n) for v, n in
                                     ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
        prepared = self._prepared(x, stride, padding, dilation)
        if prepared is None:
            return ops.conv_bn_act(x, self.weight, self.bias, stride=stride, padding=padding, dilation=dilation,
                                   residual=residual, relu=relu, backend=self.backend)
        _checks.check_conv_bn_act(x, self.weight, self.bias, stride, padding, dilation, residual, relu, "cpu")
        return torch.ops.drn.conv_bn_act_prepared_native(x, self.weight, self.bias, prepared, stride, padding,
                                                         dilation, residual, relu)

    def conv_bn_act_into_residual(self, x: Tensor, *, residual: Tensor, stride, padding, dilation,
                                  relu=True) -> Tensor:
        """drn_kernels.ops.conv_bn_act_into_residual on the prepared forms (written over `residual`)."""
        stride, padding, dilation = (_checks.pair(v, n) for v, n in
                                     ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
        return ops.conv_bn_act_into_residual(x, self.weight, self.bias, residual=residual, stride=stride,
                                             padding=padding, dilation=dilation, relu=relu, backend=self.backend,
                                             prepared=self._prepared(x, stride, padding, dilation))

    def tensors(self) -> list[Tensor]:
        """The tensors this object holds (weight, bias, Winograd form): for copying it (drn.flops' meta copy)."""
        return [self.weight, self.bias, *self.winograd.values()]

    # oneDNN copies are MKLDNN-layout tensors, which have no storage to copy or pickle: a copy makes them again.
    def __deepcopy__(self, memo):
        new = copy.copy(self)
        new.weight = copy.deepcopy(self.weight, memo)
        new.bias = copy.deepcopy(self.bias, memo)
        new.onednn = {}
        new.on_cpu = new._runs_on_cpu_backend()
        new.winograd = copy.deepcopy(self.winograd, memo) if new.on_cpu else {}
        new.algorithms = dict(self.algorithms) if new.on_cpu else {}
        return new

    def __getstate__(self):
        state = dict(self.__dict__)
        state["onednn"] = {}
        return state
