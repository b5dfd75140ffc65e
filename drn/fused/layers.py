"""The fused units: FusedConv (one drn_kernels.conv_bn_act call with weights it owns and keeps prepared) and
the residual blocks made of them (FusedBasicBlock, FusedBottleneck), each a unit of drn.fused.banded's row-band
protocol; InferenceOnly, the eval-only base of every fused module."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import drn_kernels
from drn_kernels import conv_output_size
from drn_kernels.prepared import PreparedConv

from ..zoo.models import BasicBlock, Bottleneck
from . import banded


class InferenceOnly(nn.Module):
    """A module that exists only in eval mode: train(True) raises, eval() is a no-op."""

    def __init__(self):
        super().__init__()
        self.training = False

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{type(self).__name__} is an inference-only fused model (BatchNorm is folded into "
                               f"the convs); train the unfused model (drn.build(..., fused=False)) instead")
        return super().train(False)


class FusedConv(InferenceOnly):
    """y = relu?(conv2d(x, weight) + bias + residual?) through drn_kernels.conv_bn_act; weight channels_last.

    `name` is the source model's name of the conv (e.g. "layer3.0.conv2"): profiles and benchmarks report it.
    The weights are the module's own (see the module docstring): `weight` and `bias` read as copies; assign them,
    load_state_dict or .to() to change them, which re-prepares the kernels' forms (drn_kernels.prepared).
    """

    def __init__(self, name: str, weight: torch.Tensor, bias: torch.Tensor, stride, padding, dilation,
                 relu: bool, backend: str, pinned: dict[str, str] | None = None):
        super().__init__()
        self.name = name
        self.stride = list(stride)
        self.padding = list(padding)
        self.dilation = list(dilation)
        self.relu = relu
        object.__setattr__(self, "_conv", None)
        object.__setattr__(self, "_pinned", pinned)  # the model's pinned cpu choice table (FusedModel.pin_cpu_choices)
        self._own(weight, bias, backend)

    def _own(self, weight: torch.Tensor, bias: torch.Tensor, backend: str, copy_values: bool = True):
        """Take (copies of) weight and bias as the module's weights and prepare them for `backend`."""
        with torch.inference_mode(False), torch.no_grad():  # plain tensors even when loaded in inference mode
            if copy_values:
                weight, bias = weight.detach().clone(), bias.detach().clone()
            weight = weight.contiguous(memory_format=torch.channels_last) if weight.dim() == 4 else weight
            object.__setattr__(self, "_conv", PreparedConv(weight, bias.contiguous(), backend,
                                                           pinned=getattr(self, "_pinned", None)))

    def pin(self, table: dict[str, str] | None):
        """Run the algorithms `table` names (drn_kernels.cpu_choices keys) where it names this conv's key."""
        object.__setattr__(self, "_pinned", table)
        self._own(self._conv.weight, self._conv.bias, self._conv.backend, copy_values=False)

    @property
    def weight(self) -> torch.Tensor:
        """A copy of the folded (K, C, R, S) weight, channels_last."""
        return self._conv.weight.clone()

    @property
    def bias(self) -> torch.Tensor:
        """A copy of the folded (K,) bias."""
        return self._conv.bias.clone()

    @property
    def weight_shape(self) -> torch.Size:
        return self._conv.weight.shape

    @property
    def backend(self) -> str:
        return self._conv.backend

    @backend.setter
    def backend(self, value: str):
        if value != self._conv.backend:
            self._own(self._conv.weight, self._conv.bias, value, copy_values=False)

    def __setattr__(self, name, value):
        if name in ("weight", "bias"):  # assignment (a tensor or a Parameter): the values are copied in
            current = getattr(self._conv, name)
            if not isinstance(value, torch.Tensor) or value.shape != current.shape:
                raise ValueError(f"{self.name}.{name} must be a tensor of shape {tuple(current.shape)}, got "
                                 f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
            value = value.detach().to(device=current.device, dtype=current.dtype)
            weight, bias = (value, self._conv.bias) if name == "weight" else (self._conv.weight, value)
            self._own(weight, bias, self._conv.backend)
            return
        super().__setattr__(name, value)

    # state_dict() / load_state_dict() speak plain folded weights, "weight" and "bias".
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.weight
        destination[prefix + "bias"] = self.bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        values = {}
        for name in ("weight", "bias"):
            key, current = prefix + name, getattr(self._conv, name)
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, torch.Tensor):
                error_msgs.append(f'While copying the parameter named "{key}", expected torch.Tensor or '
                                  f'Tensor-like object from checkpoint but received {type(value)}')
            elif value.shape != current.shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {value.shape} from "
                                  f"checkpoint, the shape in current model is {current.shape}.")
            else:
                values[name] = value.detach().to(device=current.device, dtype=current.dtype)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                                   and k[len(prefix):] not in ("weight", "bias") and "." not in k[len(prefix):])
        if values:
            self._own(values.get("weight", self._conv.weight), values.get("bias", self._conv.bias),
                      self._conv.backend)

    def _apply(self, fn, recurse=True):
        # .to() / .half() / .cuda() / .share_memory(): the weights converted, then prepared anew for their new
        # dtype and device (a no-op conversion returns the same tensors: nothing to redo).
        super()._apply(fn, recurse)
        with torch.no_grad():
            weight, bias = fn(self._conv.weight), fn(self._conv.bias)
        if weight is not self._conv.weight or bias is not self._conv.bias:
            self._own(weight, bias, self._conv.backend, copy_values=False)
        return self

    def forward(self, x, residual=None):
        return self._conv.conv_bn_act(x, stride=self.stride, padding=self.padding, dilation=self.dilation,
                                      residual=residual, relu=self.relu)

    def forward_into_residual(self, x, residual):
        """forward(x, residual) written over `residual` (drn_kernels.ops.conv_bn_act_into_residual)."""
        return self._conv.conv_bn_act_into_residual(x, residual=residual, stride=self.stride, padding=self.padding,
                                                    dilation=self.dilation, relu=self.relu)

    # drn.fused.banded's unit protocol: output shape, rows read by a band of output rows, a band of output rows.
    def out_shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        k, _, r, s = self.weight_shape
        return (k, conv_output_size(h, r, self.stride[0], self.padding[0], self.dilation[0]),
                conv_output_size(w, s, self.stride[1], self.padding[1], self.dilation[1]))

    def _input_rows(self, o0: int, o1: int) -> tuple[int, int]:
        """Input rows [a, b) that output rows [o0, o1) read, padding rows (< 0 or >= h) included."""
        r = self.weight_shape[2]
        a = o0 * self.stride[0] - self.padding[0]
        return a, (o1 - 1) * self.stride[0] - self.padding[0] + self.dilation[0] * (r - 1) + 1

    def rows_needed(self, o0: int, o1: int, h: int) -> tuple[int, int]:
        a, b = self._input_rows(o0, o1)
        return max(a, 0), min(b, h)

    def run_rows(self, src, lo: int, h: int, o0: int, o1: int, residual=None):
        """Output rows [o0, o1) from src = input rows [lo, lo + src.shape[2]) of an h-row map: vertical padding 0
        on exactly the rows read, zero rows added where they reach past the map."""
        a, b = self._input_rows(o0, o1)
        band = banded.pad_rows(src[:, :, max(a, 0) - lo:min(b, h) - lo], max(0, -a), max(0, b - h))
        return self._conv.conv_bn_act(band, stride=self.stride, padding=[0, self.padding[1]], dilation=self.dilation,
                                      residual=residual, relu=self.relu)

    def extra_repr(self):
        k, c, r, s = self.weight_shape
        return (f"{self.name}: {c}->{k} {r}x{s} stride={self.stride} padding={self.padding} "
                f"dilation={self.dilation} relu={self.relu}")


def _check_conv(name: str, conv: nn.Conv2d):
    if type(conv) is not nn.Conv2d:
        raise TypeError(f"fuse: {name} is a {type(conv).__name__}; only nn.Conv2d is supported")
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"fuse: {name} has groups={conv.groups}, padding_mode={conv.padding_mode!r}, "
                         f"padding={conv.padding!r}; conv_bn_act needs groups=1 and explicit zero padding")


@dataclass(frozen=True)
class Placement:
    """Where and for what the fused units are built: their weights moved to `device` and cast to `dtype` (None:
    the source's), then prepared once for `backend` with the pinned cpu choice table `pinned` (or None)."""
    backend: str
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    pinned: dict[str, str] | None = None

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """t (detached) on the placement's device and in its dtype."""
        return t.detach().to(device=self.device, dtype=self.dtype)


def _fused_conv(name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, relu: bool, place: Placement) -> FusedConv:
    _check_conv(name, conv)
    if bn is not None:  # folded in float64 from the source's values, then placed
        weight, bias = drn_kernels.fold_bn(conv.weight, bn, conv_bias=conv.bias)
    else:
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return FusedConv(name, place.put(weight), place.put(bias), conv.stride, conv.padding, conv.dilation, relu,
                     place.backend, place.pinned)


class _BandedBlock(InferenceOnly):
    """drn.fused.banded's unit protocol for a block: the chain of its convs, plus its shortcut."""

    def convs(self) -> list[FusedConv]:
        raise NotImplementedError

    def out_shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        shape = (c, h, w)
        for conv in self.convs():
            shape = conv.out_shape(*shape)
        return shape

    def _heights(self, h: int) -> list[int]:
        heights = [h]
        for conv in self.convs():
            heights.append(conv.out_shape(1, heights[-1], 1)[1])
        return heights

    def rows_needed(self, o0: int, o1: int, h: int) -> tuple[int, int]:
        lo, hi = banded.chain_rows(self.convs(), self._heights(h), o0, o1)[0]
        if self.residual:
            s0, s1 = self.downsample.rows_needed(o0, o1, h) if self.downsample is not None else (o0, o1)
            lo, hi = min(lo, s0), max(hi, s1)
        return lo, hi

    def run_rows(self, src, lo: int, h: int, o0: int, o1: int):
        convs, heights = self.convs(), self._heights(h)
        ranges = banded.chain_rows(convs, heights, o0, o1)
        shortcut = None
        if self.residual:
            shortcut = (self.downsample.run_rows(src, lo, h, o0, o1) if self.downsample is not None
                        else src[:, :, o0 - lo:o1 - lo])
        a, b = ranges[0]
        return banded.run_chain(convs, heights, ranges, src[:, :, a - lo:b - lo], residual=shortcut)

    def forward_low_memory(self, x, rows: int):
        """forward(x), reusing x's storage (the caller's own map, read by nothing else afterwards) or the first
        conv's: the block holds its input and one map of its own instead of three."""
        convs = self.convs()
        *first, last = convs
        t = x
        for conv in first:
            t = conv(t)
        if self.residual and self.downsample is None:   # identity shortcut: the last conv adds x into x
            return last.forward_into_residual(t, x)
        if t is not x and last.out_shape(*t.shape[1:]) == tuple(t.shape[1:]):  # written over the first conv's map
            shortcut = None
            if self.residual:
                def shortcut(o0, o1):
                    return self.downsample.run_rows(x, 0, x.shape[2], o0, o1)
            return banded.conv_over_rows(last, t, max(rows, last.padding[0]), shortcut)
        return last(t, residual=self.downsample(x) if self.residual else None)


class FusedBasicBlock(_BandedBlock):
    """relu(conv2(conv1(x)) + shortcut): two conv_bn_act calls, the second fusing the add and ReLU."""

    def __init__(self, name: str, block: BasicBlock, place: Placement):
        super().__init__()
        self.conv1 = _fused_conv(f"{name}.conv1", block.conv1, block.bn1, True, place)
        self.conv2 = _fused_conv(f"{name}.conv2", block.conv2, block.bn2, True, place)
        self.residual = bool(block.residual)
        # DRN-C-58 layer7.0 (residual=False) has a projection that the reference computes and then discards; its
        # result never reaches the output, so the fused model does not carry or run it (outputs are unchanged).
        self.downsample = (_fused_downsample(f"{name}.downsample", block.downsample, place)
                           if self.residual and block.downsample is not None else None)

    def convs(self) -> list[FusedConv]:
        return [self.conv1, self.conv2]

    def forward(self, x):
        out = self.conv1(x)
        if not self.residual:
            return self.conv2(out)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.conv2(out, residual=shortcut)


class FusedBottleneck(_BandedBlock):
    """relu(conv3(conv2(conv1(x))) + shortcut): three conv_bn_act calls, the last fusing the add and ReLU."""

    def __init__(self, name: str, block: Bottleneck, place: Placement):
        super().__init__()
        self.conv1 = _fused_conv(f"{name}.conv1", block.conv1, block.bn1, True, place)
        self.conv2 = _fused_conv(f"{name}.conv2", block.conv2, block.bn2, True, place)
        self.conv3 = _fused_conv(f"{name}.conv3", block.conv3, block.bn3, True, place)
        self.downsample = (_fused_downsample(f"{name}.downsample", block.downsample, place)
                           if block.downsample is not None else None)
        self.residual = True

    def convs(self) -> list[FusedConv]:
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.conv3(out, residual=shortcut)


def _fused_downsample(name: str, downsample: nn.Module, place: Placement) -> FusedConv:
    if not (isinstance(downsample, nn.Sequential) and len(downsample) == 2
            and isinstance(downsample[1], nn.BatchNorm2d)):
        raise TypeError(f"fuse: {name} must be Sequential(Conv2d, BatchNorm2d), got {downsample}")
    return _fused_conv(f"{name}.0", downsample[0], downsample[1], False, place)
