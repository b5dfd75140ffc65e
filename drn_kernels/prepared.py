"""Conv weights prepared once for the kernels that run them, kept by the one who owns the weights.

The cpu backend computes with other forms of a conv weight than the (K, C, R, S) tensor: its Winograd path with
U = G g Gᵀ (drn::winograd_weight: too costly to redo on every call), its oneDNN path with the weight
re-ordered into oneDNN's blocked layout for the conv's geometry and input shape. The public ops never cache
these: a cache keyed on a tensor (identity, data pointer, `_version`) cannot see writes through `.data`, numpy
views or inference tensors, and would compute with stale weights. Called with a weight, the ops transform it on
every call. Whoever runs one weight many times makes a PreparedConv instead and passes it the calls.

A PreparedConv reads its weight when it is made (the Winograd form) and when it first runs an input shape (a
oneDNN copy, at most MAX_ONEDNN kept), and never looks at it again: its owner must give it tensors that nothing
else writes, and make a new PreparedConv whenever the values change. drn.fused.FusedConv does: it keeps the
tensors to itself (its `weight`, `bias` and state_dict() are copies) and re-prepares on load_state_dict, .to()
and assignment. The Triton and CUDA kernels need no prepared form: a channels_last weight already is the (K, R,
S, C) layout they stream (a free view). On a CPU without the bfloat16 GEMM, a bfloat16 PreparedConv keeps float32
copies of its weights as what the kernels run (widens_bfloat16): the fused model then computes in float32.

Algorithm choice, by measurement (like cudnn.benchmark): a 3x3 stride-1 conv that Winograd applies to (>= 64
channels in and out; float32 and bfloat16) has candidates — the Winograd tiles offered for its dtype on this CPU
(drn::cpu_winograd_tiles: F(4x4,3x3) and F(2x2,3x3); F(2x2) only where bfloat16 runs a bfloat16 GEMM, whose F(4x4)
is too inaccurate) and oneDNN's direct convolution. Its choice is keyed by what decides it (drn_kernels.cpu_choices:
weight shape, geometry, dtype, a size bucket) and taken from a pinned table, this process's table or this
machine's cache file; only where none has it are the candidates timed — on the call's input cropped to at most
TIMED_PIXELS output pixels, warm-up then up to TIMING_ROUNDS interleaved rounds (one where its fastest is
CLEAR_MARGIN ahead), the least median kept — and the result added to the cache file, so the next process and the
next image size of the bucket run the same algorithm. Every
later call, and every PreparedConv of the same key, runs it, so repeats are bit-identical. The choice goes to the
kernel as the prepared form it passes (a Winograd U of that tile, or a oneDNN copy), not through a setting; under
torch.compile it is decided eagerly while tracing (decide_at_trace), so a compiled model runs the same algorithms
as the eager one. DRN_CPU_CONV overrides it (cpu_conv_setting): "auto" (the default) chooses as above, "winograd"
takes Winograd at DRN_WINOGRAD_TILE, "direct" oneDNN, "aten" neither. Only the Winograd forms of the tiles kept stay
in memory. The search's cost is logged (logger drn_kernels.prepared, INFO) and kept: PreparedConv.search_seconds,
and SEARCHES for the process.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import itertools
import logging
import statistics
import threading
import time
import warnings
import weakref

import torch
from torch import Tensor

from . import _backends, _checks, cpu_choices, ops
from ._checks import conv_output_size

WINOGRAD = "winograd"
CANDIDATES = cpu_choices.CHOICES  # every algorithm a search may time (its dtype's subset)
TIMED_PIXELS = 4096   # output pixels (batch x rows x columns) of the input the candidates are timed on, at most
BUCKET_PIXELS = 1024  # output pixels from which every size shares one choice (drn_kernels.cpu_choices.key)
TIMING_ROUNDS = 3     # interleaved timed rounds per candidate, after one warm-up run each, at most
CLEAR_MARGIN = 1.3    # a first round whose fastest is this much ahead of every other candidate decides alone

_log = logging.getLogger(__name__)
_decide_lock = threading.RLock()  # one decision at a time: concurrent first calls time one search, not several
SEARCHES: list[dict] = []         # one record per measured choice: key, median seconds per candidate, cost
_uids = itertools.count()
_UNKNOWN = object()
_said_widened = False
_LIVE: "weakref.WeakValueDictionary[str, PreparedConv]" = weakref.WeakValueDictionary()  # uid -> conv (tracing)


def cpu_conv_setting() -> tuple[str, int, str]:
    """(DRN_CPU_CONV, DRN_WINOGRAD_TILE, DRN_CPU_ISA) as the algorithm choice reads them (drn_kernels.settings
    validates them). DRN_CPU_CONV: "auto" (default: measure), "winograd" (pinned, at the tile), "direct" (oneDNN
    pinned) or "aten" (no prepared forms)."""
    from . import settings

    return settings.choice("DRN_CPU_CONV"), settings.cpu_options().winograd_tile, settings.choice("DRN_CPU_ISA")


def widens_bfloat16(dtype: torch.dtype) -> bool:
    """True where the cpu backend computes bfloat16 convs of a fused model in float32 throughout: bfloat16 weights
    and a CPU without the bfloat16 GEMM (no AVX512-BF16). There the fused model widens its bfloat16 input once,
    runs every layer in float32 on float32 copies of the weights (the algorithm choices of the float32 model) and
    rounds its features to bfloat16 once: the float32 model's speed, more accurate than bfloat16 layers, twice
    their activation memory. Said once per process (a UserWarning)."""
    global _said_widened
    if dtype != torch.bfloat16 or torch.ops.drn.cpu_bf16_gemm():
        return False
    if not _said_widened:
        _said_widened = True
        warnings.warn("bfloat16 fused models run in float32 on this CPU (no AVX512-BF16): bfloat16 weights, input "
                      "and features, float32 layers in between (drn_kernels.prepared.widens_bfloat16)", stacklevel=2)
    return True


def _timing_input(x: Tensor, padding, dilation) -> Tensor:
    """x, or a crop of it (fewer images, then fewer rows) whose conv output has about TIMED_PIXELS pixels."""
    n, _, h, w = x.shape
    p = conv_output_size(h, 3, 1, padding[0], dilation[0])
    q = conv_output_size(w, 3, 1, padding[1], dilation[1])
    if p <= 0 or q <= 0 or n * p * q <= TIMED_PIXELS:
        return x
    if p * q <= TIMED_PIXELS:
        return x[: TIMED_PIXELS // (p * q)]
    rows = min(p, max(-(-TIMED_PIXELS // q), 8 * dilation[0]))  # whole Winograd tiles of every phase
    return x[:1, :, : rows + h - p]


def median_times(runs: dict, rounds: int = TIMING_ROUNDS) -> dict[str, float]:
    """Median seconds of each callable in `runs`: one warm-up each, then up to `rounds` interleaved rounds — one
    when it already leaves the fastest CLEAR_MARGIN ahead of every other (a clear winner is taken without more rounds;
    a noisy round could still have misled it, which the margin makes unlikely, not impossible)."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for i in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        if i == 0 and _clear_winner({name: t[0] for name, t in times.items()}):
            break
    return {name: statistics.median(t) for name, t in times.items()}


def _clear_winner(seconds: dict[str, float]) -> bool:
    ordered = sorted(seconds.values())
    return len(ordered) < 2 or ordered[1] >= CLEAR_MARGIN * ordered[0]


@torch._dynamo.assume_constant_result
def decide_at_trace(uid: str, n: int, c: int, h: int, w: int, dtype: str, sh: int, sw: int, ph: int, pw: int,
                    dh: int, dw: int) -> str:
    """The algorithm PreparedConv `uid` runs for an (n, c, h, w) input of `dtype` ("" for the op's own path),
    decided eagerly while torch.compile traces (dynamo calls this with constants and keeps the result): the same
    decision an eager call makes (on a random input of that shape when it must time), and the Winograd form of
    the chosen tile made, so the traced call finds it."""
    conv = _LIVE[uid]
    x = torch.randn(n, c, h, w, dtype=getattr(torch, dtype)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        chosen = conv.algorithm(x, (sh, sw), (ph, pw), (dh, dw))
        if chosen is not None and chosen.startswith(WINOGRAD):
            conv.winograd_form(int(chosen[-1]))
    return chosen or ""


class PreparedConv:
    """conv_bn_act with a fixed `weight` (K, C, R, S) and `bias` (K,) on `backend`, the weight's prepared forms
    built here (Winograd) or at the first call of each input shape and geometry (oneDNN)."""

    MAX_ONEDNN = 8   # oneDNN copies kept (one per input shape and conv geometry: whole maps, row bands)
    MAX_SHAPES = 64  # input shapes whose algorithm this object remembers (the choices themselves are per key)

    def __init__(self, weight: Tensor, bias: Tensor, backend: str, pinned: dict[str, str] | None = None):
        self.weight = weight
        self.bias = bias
        self.backend = backend
        self.on_cpu = self._runs_on_cpu_backend()
        # what the kernels run: the weights themselves, or their float32 copies where the cpu backend computes a
        # bfloat16 conv in float32 (widens_bfloat16)
        self.kernel_weight, self.kernel_bias = weight, bias
        if self.on_cpu and widens_bfloat16(weight.dtype):
            self.kernel_weight, self.kernel_bias = weight.float(), bias.float()
        self.pinned = pinned  # a pinned table (drn_kernels.cpu_choices.load_table), shared by a model's convs
        self.winograd: dict[int, Tensor] = {}  # tile -> drn::winograd_weight(weight, tile), the tiles chosen
        self.onednn: dict[tuple, Tensor] = {}  # (input shape, stride, padding, dilation) -> oneDNN-layout copy
        self.onednn_failed = False
        # (input shape, stride, padding, dilation) -> chosen, the most recent MAX_SHAPES
        self.algorithms: collections.OrderedDict[tuple, str | None] = collections.OrderedDict()
        self.choices: dict[str, str] = {}  # choice key -> algorithm, for the keys that had candidates to choose from
        self.search_seconds = 0.0  # time this object spent measuring candidates
        self._register()

    def _register(self):
        self._uid = f"conv{next(_uids)}"
        _LIVE[self._uid] = self

    def _runs_on_cpu_backend(self) -> bool:
        if self.weight.device.type != "cpu" or self.backend not in ("cpu", "auto"):
            return False
        return _backends.why_unavailable("cpu", self.weight.device) is None

    def algorithm(self, x: Tensor, stride, padding, dilation) -> str | None:
        """The algorithm this conv runs for x's shape: "winograd4", "winograd2", "onednn", or None (the op's own
        path: not the cpu backend, or DRN_CPU_CONV=aten); chosen at the first call of the shape (see the module)."""
        # once decided for a shape, kept for this object's life, whatever the thread count later (a forked worker
        # on one thread computes what its parent did); a new decision reads the tables of the current thread count
        shape_key = (tuple(x.shape), tuple(stride), tuple(padding), tuple(dilation), cpu_conv_setting())
        known = self.algorithms.get(shape_key, _UNKNOWN)
        if known is not _UNKNOWN:
            with contextlib.suppress(KeyError):  # another thread may have just evicted it
                self.algorithms.move_to_end(shape_key)
            return known
        with _decide_lock:
            chosen = self._decide(x, stride, padding, dilation)
        self.algorithms[shape_key] = chosen
        while len(self.algorithms) > self.MAX_SHAPES:
            with contextlib.suppress(KeyError):
                self.algorithms.popitem(last=False)
        return chosen

    def choice_key(self, x_shape, stride, padding, dilation) -> str:
        """This conv's key in the choice tables (drn_kernels.cpu_choices.key) for an input of `x_shape`."""
        return cpu_choices.key(self.kernel_weight.shape, x_shape, stride, padding, dilation, self.kernel_weight.dtype,
                               BUCKET_PIXELS)

    def _decide(self, x: Tensor, stride, padding, dilation) -> str | None:
        mode, tile, _ = cpu_conv_setting()
        path = torch.ops.drn.cpu_conv_algorithm(x, self.kernel_weight, list(stride))
        tiles = torch.ops.drn.cpu_winograd_tiles(x, self.kernel_weight, list(stride))  # per DRN_CPU_CONV and dtype
        if path == "aten":
            return None
        if not tiles:
            return "onednn"
        if mode != "auto":
            cpu_choices.SOURCES["setting"] += 1
            return f"winograd{tile if tile in tiles else tiles[0]}"
        offered = [f"winograd{t}" for t in tiles] + ["onednn"]
        k = self.choice_key(x.shape, stride, padding, dilation)
        if self.pinned is not None and k in self.pinned:
            if self.pinned[k] not in offered:
                raise ValueError(f"cpu_choices: {k!r} is pinned to {self.pinned[k]!r}, which this CPU does not "
                                 f"offer for it (offered: {', '.join(offered)})")
            cpu_choices.SOURCES["pinned"] += 1
            self.choices[k] = self.pinned[k]
            return self.pinned[k]
        context = cpu_choices.Context()
        chosen = context.table().get(k)
        if chosen not in offered:
            chosen = context.cached(k)
            if chosen in offered:
                cpu_choices.SOURCES["cache"] += 1
                context.keep(k, chosen, measured=False)
            else:
                chosen = self._measure(x, stride, padding, dilation, k, tiles)
                cpu_choices.SOURCES["measured"] += 1
                context.keep(k, chosen, measured=True)
        self.choices[k] = chosen
        return chosen

    def winograd_form(self, tile: int) -> Tensor:
        """drn::winograd_weight(weight, tile), made once."""
        if tile not in self.winograd:
            self.winograd[tile] = torch.ops.drn.winograd_weight(self.kernel_weight, tile)
        return self.winograd[tile]

    def _measure(self, x: Tensor, stride, padding, dilation, shared, tiles) -> str:
        """The fastest of the Winograd `tiles` and oneDNN for this call (median of interleaved runs on a crop of
        x)."""
        start = time.perf_counter()
        xt = _timing_input(x, padding, dilation)
        forms = {f"winograd{t}": torch.ops.drn.winograd_weight(self.kernel_weight, t) for t in tiles}
        try:
            forms["onednn"] = torch.ops.drn.onednn_weight(self.kernel_weight, list(padding), list(stride),
                                                          list(dilation), list(xt.shape))
        except RuntimeError:
            pass
        runs = {name: (lambda form=form: torch.ops.drn.conv_bn_act_prepared_native(
                    xt, self.kernel_weight, self.kernel_bias, form, stride, padding, dilation, None, True))
                for name, form in forms.items()}
        times = median_times(runs)
        best = min(times, key=times.get)
        if best.startswith(WINOGRAD):
            self.winograd[int(best[-1])] = forms[best]
        seconds = time.perf_counter() - start
        self.search_seconds += seconds
        SEARCHES.append({"key": shared, "timed_shape": tuple(xt.shape), "median_s": times, "chosen": best,
                         "seconds": seconds})
        _log.info("cpu conv %s on %s: %s chosen (medians %s ms; search %.0f ms)", tuple(self.kernel_weight.shape),
                  tuple(x.shape), best, {n: round(t * 1e3, 2) for n, t in times.items()}, seconds * 1e3)
        return best

    def _prepared(self, x: Tensor, stride, padding, dilation) -> Tensor | None:
        """The prepared form for this call, or None (the op then works from the weight itself)."""
        if not self.on_cpu or x.device.type != "cpu" or x.shape[0] == 0 or x.dtype != self.kernel_weight.dtype:
            return None
        if torch.compiler.is_compiling():
            # decided eagerly now (decide_at_trace); no MKLDNN-layout tensor can enter a traced region, so oneDNN
            # gets the dense weight itself, which the kernel takes as "oneDNN, weight re-ordered per call"
            chosen = decide_at_trace(self._uid, *x.shape, str(x.dtype).replace("torch.", ""), *stride, *padding,
                                     *dilation)
            if not chosen:
                return None
            return self.winograd[int(chosen[-1])] if chosen.startswith(WINOGRAD) else self.kernel_weight
        with torch.no_grad():
            chosen = self.algorithm(x, stride, padding, dilation)
            if chosen is None:
                return None
            if chosen.startswith(WINOGRAD):
                return self.winograd_form(int(chosen[-1]))
            return self._onednn_copy(x, stride, padding, dilation)

    def _onednn_copy(self, x: Tensor, stride, padding, dilation) -> Tensor | None:
        key = (tuple(x.shape), tuple(stride), tuple(padding), tuple(dilation))
        packed = self.onednn.get(key)
        if packed is None and not self.onednn_failed:
            try:
                packed = torch.ops.drn.onednn_weight(self.kernel_weight, list(padding), list(stride), list(dilation),
                                                     list(x.shape))
            except RuntimeError:  # no oneDNN kernel for this dtype on this CPU: the op's own fallback runs
                self.onednn_failed = True
                return None
            if len(self.onednn) >= self.MAX_ONEDNN:
                self.onednn.clear()
            self.onednn[key] = packed
        return packed

    @property
    def widened(self) -> bool:
        """True where the kernels compute this bfloat16 conv in float32 (widens_bfloat16): the conv then takes
        float32 input (and residual) and returns float32, besides bfloat16 (widened, computed, rounded once)."""
        return self.kernel_weight is not self.weight

    def widens_model_input(self, x) -> bool:
        """Whether a model made of widened convs like this one runs `x` in float32 from its input on: a CPU tensor,
        which must then have the weights' dtype (the ops' own error otherwise, as where nothing is widened)."""
        if not (self.widened and isinstance(x, Tensor) and x.device.type == "cpu"):
            return False
        _checks.like(self.weight, x, "weight", "x")
        return True

    def _widens(self, x, residual) -> bool:
        """Whether this call's bfloat16 x (and residual) is computed as float32 and rounded back."""
        if not (self.widened and isinstance(x, Tensor) and x.dtype == self.weight.dtype):
            return False
        if isinstance(residual, Tensor):
            _checks.like(residual, x, "residual", "x")  # widened together, or the op's own error
        return True

    def conv_bn_act(self, x: Tensor, *, stride, padding, dilation, residual=None, relu=True) -> Tensor:
        """drn_kernels.conv_bn_act(x, weight, bias, ...) on the prepared forms (the ops' one path)."""
        if self._widens(x, residual):
            wide = residual.float() if isinstance(residual, Tensor) else residual
            return self.conv_bn_act(x.float(), stride=stride, padding=padding, dilation=dilation, residual=wide,
                                    relu=relu).to(x.dtype)
        return ops.run_conv_bn_act(x, self.kernel_weight, self.kernel_bias, stride, padding, dilation, residual,
                                   relu, self.backend, self._prepared)

    def conv_bn_act_into_residual(self, x: Tensor, *, residual: Tensor, stride, padding, dilation,
                                  relu=True) -> Tensor:
        """drn_kernels.ops.conv_bn_act_into_residual on the prepared forms (written over `residual`)."""
        if self._widens(x, residual):
            out = self.conv_bn_act(x, stride=stride, padding=padding, dilation=dilation, residual=residual,
                                   relu=relu)
            return residual.copy_(out)
        return ops.run_conv_bn_act(x, self.kernel_weight, self.kernel_bias, stride, padding, dilation, residual,
                                   relu, self.backend, self._prepared, into_residual=True)

    def tensors(self) -> list[Tensor]:
        """The tensors this object holds (weights, float32 copies, Winograd form): for copying it (drn.tools.flops)."""
        kernel = [self.kernel_weight, self.kernel_bias] if self.widened else []
        return [self.weight, self.bias, *kernel, *self.winograd.values()]

    # oneDNN copies are MKLDNN-layout tensors, which have no storage to copy or pickle: a copy makes them again.
    def __deepcopy__(self, memo):
        new = copy.copy(self)
        new._register()
        new.weight = copy.deepcopy(self.weight, memo)
        new.bias = copy.deepcopy(self.bias, memo)
        new.kernel_weight = copy.deepcopy(self.kernel_weight, memo)
        new.kernel_bias = copy.deepcopy(self.kernel_bias, memo)
        new.onednn = {}
        new.on_cpu = new._runs_on_cpu_backend()
        new.winograd = copy.deepcopy(self.winograd, memo) if new.on_cpu else {}
        new.algorithms = dict(self.algorithms) if new.on_cpu else {}
        return new

    def __getstate__(self):
        state = dict(self.__dict__)
        state["onednn"] = {}
        state.pop("_uid", None)
        return state

    def __setstate__(self, state):
        state.setdefault("pinned", None)
        state.setdefault("kernel_weight", state["weight"])
        state.setdefault("kernel_bias", state["bias"])
        state["algorithms"] = collections.OrderedDict(state.get("algorithms", {}))
        self.__dict__.update(state)
        self._register()
        # Pickled on another machine, maybe: whether the kernels widen is this machine's rule, as at construction;
        # where it differs, the forms and choices made for the other compute dtype go.
        self.on_cpu = self._runs_on_cpu_backend()
        widen = self.on_cpu and widens_bfloat16(self.weight.dtype)
        if widen != self.widened:
            self.kernel_weight, self.kernel_bias = ((self.weight.float(), self.bias.float()) if widen
                                                    else (self.weight, self.bias))
            self.winograd, self.algorithms, self.choices = {}, collections.OrderedDict(), {}
