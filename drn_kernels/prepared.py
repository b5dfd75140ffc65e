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
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from . import _backends, _checks, ops

WINOGRAD = "winograd"


class PreparedConv:
    """conv_bn_act with a fixed `weight` (K, C, R, S) and `bias` (K,) on `backend`, the weight's prepared forms
    built here (Winograd) or at the first call of each input shape and geometry (oneDNN)."""

    MAX_ONEDNN = 8  # oneDNN copies kept (one per input shape and conv geometry: whole maps, row bands)

    def __init__(self, weight: Tensor, bias: Tensor, backend: str):
        self.weight = weight
        self.bias = bias
        self.backend = backend
        self.winograd: Tensor | None = None   # drn::winograd_weight(weight), for stride-1 calls
        self.onednn: dict[tuple, Tensor] = {}  # (input shape, stride, padding, dilation) -> oneDNN-layout copy
        self.onednn_failed = False
        self.on_cpu = self._runs_on_cpu_backend()
        if self.on_cpu and weight.dtype == torch.float32:
            algorithm = torch.ops.drn.cpu_conv_algorithm(weight.new_empty((1, weight.shape[1], 1, 1)), weight, [1, 1])
            if algorithm == WINOGRAD:
                with torch.no_grad():
                    self.winograd = torch.ops.drn.winograd_weight(weight)

    def _runs_on_cpu_backend(self) -> bool:
        if self.weight.device.type != "cpu" or self.backend not in ("cpu", "auto"):
            return False
        return _backends.why_unavailable("cpu", self.weight.device) is None

    def _prepared(self, x: Tensor, stride, padding, dilation) -> Tensor | None:
        """The prepared form for this call, or None (the op then works from the weight itself)."""
        if not self.on_cpu or x.device.type != "cpu" or x.shape[0] == 0 or x.dtype != self.weight.dtype:
            return None
        if self.winograd is not None and list(stride) == [1, 1]:
            return self.winograd
        if torch.compiler.is_compiling():
            return None  # oneDNN copies are MKLDNN-layout tensors: not made or passed inside a traced region
        key = (tuple(x.shape), tuple(stride), tuple(padding), tuple(dilation))
        packed = self.onednn.get(key)
        if packed is None and not self.onednn_failed:
            algorithm = torch.ops.drn.cpu_conv_algorithm(x, self.weight, list(stride))
            if algorithm != "onednn":
                return None
            try:
                with torch.no_grad():
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
        return [t for t in (self.weight, self.bias, self.winograd) if t is not None]

    # oneDNN copies are MKLDNN-layout tensors, which have no storage to copy or pickle: a copy makes them again.
    def __deepcopy__(self, memo):
        new = copy.copy(self)
        new.weight = copy.deepcopy(self.weight, memo)
        new.bias = copy.deepcopy(self.bias, memo)
        new.onednn = {}
        new.on_cpu = new._runs_on_cpu_backend()
        new.winograd = copy.deepcopy(self.winograd, memo) if new.on_cpu else None
        return new

    def __getstate__(self):
        state = dict(self.__dict__)
        state["onednn"] = {}
        return state
