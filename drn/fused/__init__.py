"""drn.fuse: an inference-only copy of a DRN whose Conv-BN(-add)-ReLU groups run drn_kernels.conv_bn_act.

What fusing does, once, when the model is built:
- every eval-mode BatchNorm is folded into the conv before it (drn_kernels.fold_bn: float64 arithmetic from the
  stored statistics, cast back to the weight's dtype), so a conv and its BN become one (weight, bias) pair;
- weights are pre-packed as channels_last contiguous tensors: a channels_last (K, C, R, S) weight is a dense
  (K, R, S, C) array, the layout the Triton and CUDA kernels stream; on the cpu backend each conv also keeps the
  forms its kernels compute with (drn_kernels.prepared.PreparedConv: Winograd-transformed weights made here, oneDNN
  blocked copies at the first call of each input shape), so no call re-transforms a weight;
- a FusedConv owns its weights: `weight`, `bias` and state_dict() give copies, and load_state_dict (in or out of
  inference mode), .to()/.half()/.cuda() and assigning `weight`/`bias` are the ways to change them — each makes the
  prepared forms anew. Nothing can write to the tensors the kernels read behind the module's back, so a prepared
  form can never be stale;
- Conv-BN-ReLU becomes one conv_bn_act(relu=True); the tail of a BasicBlock/Bottleneck (last Conv-BN, residual add,
  ReLU) becomes one conv_bn_act(residual=shortcut, relu=True), the projection shortcut its own
  conv_bn_act(relu=False); activations stay channels_last from the first layer to the head;
- heads: classify = global average pool + fc (a few KFLOPs: plain torch), segment predict() = one
  drn_kernels.class_head(upsample=8) call that never materialises the (N, K, H, W) maps, localize =
  drn_kernels.localize, all with the model's backend. On CPU, predict() of a large input runs in row bands
  (drn.fused.banded; FusedSegmenter.low_memory) so that the backbone never holds more than two whole maps.
The source model is never modified (weights are folded into new tensors). The result is eval-only: train(True)
raises and no parameter requires grad. BatchNorm is folded from its running statistics whatever mode the source
model is in, i.e. the fused model computes what the source computes in eval mode.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import drn_kernels
from drn_kernels import conv_output_size
from drn_kernels.cpu_choices import load_table as load_choice_table
from drn_kernels.prepared import PreparedConv
from drn_kernels.reference import bilinear_up_weight, upsample8

from ..zoo.heads import OUTPUT_STRIDE, DRNSeg, Localization, LocalizeMixin, clip_boxes
from ..zoo.models import DRN, DRN_A, BasicBlock, Bottleneck, global_avg_pool
from . import banded

__all__ = ["fuse", "FusedConv", "FusedModel", "FusedClassifier", "FusedSegmenter", "FusedLocalizer"]


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


def _frozen(t: torch.Tensor, channels_last: bool = False) -> nn.Parameter:
    """A parameter that never requires grad (so it follows .to() and shows in parameters() / state_dict)."""
    t = t.detach().clone()
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return nn.Parameter(t, requires_grad=False)


class FusedConv(InferenceOnly):
    """y = relu?(conv2d(x, weight) + bias + residual?) through drn_kernels.conv_bn_act; weight channels_last.

    `name` is the source model's name of the conv (e.g. "layer3.0.conv2"): profiles and benchmarks report it.
    The weights are the module's own (see the module docstring): `weight` and `bias` read as copies; assign them,
    load_state_dict or .to() to change them, which re-prepares the kernels' forms (drn_kernels.prepared).
    """

    def __init__(self, name: str, weight: torch.Tensor, bias: torch.Tensor, stride, padding, dilation,
                 relu: bool, backend: str):
        super().__init__()
        self.name = name
        self.stride = list(stride)
        self.padding = list(padding)
        self.dilation = list(dilation)
        self.relu = relu
        object.__setattr__(self, "_conv", None)
        object.__setattr__(self, "_pinned", None)  # the model's pinned cpu choice table (FusedModel.pin_cpu_choices)
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

    # state_dict() / load_state_dict() speak plain folded weights, "weight" and "bias", as before.
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


def _fused_conv(name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, relu: bool, backend: str) -> FusedConv:
    _check_conv(name, conv)
    if bn is not None:
        weight, bias = drn_kernels.fold_bn(conv.weight, bn, conv_bias=conv.bias)
    else:
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return FusedConv(name, weight, bias, conv.stride, conv.padding, conv.dilation, relu, backend)


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

    def __init__(self, name: str, block: BasicBlock, backend: str):
        super().__init__()
        self.conv1 = _fused_conv(f"{name}.conv1", block.conv1, block.bn1, True, backend)
        self.conv2 = _fused_conv(f"{name}.conv2", block.conv2, block.bn2, True, backend)
        self.residual = bool(block.residual)
        # DRN-C-58 layer7.0 (residual=False) has a projection that the reference computes and then discards; its
        # result never reaches the output, so the fused model does not carry or run it (outputs are unchanged).
        self.downsample = (_fused_downsample(f"{name}.downsample", block.downsample, backend)
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

    def __init__(self, name: str, block: Bottleneck, backend: str):
        super().__init__()
        self.conv1 = _fused_conv(f"{name}.conv1", block.conv1, block.bn1, True, backend)
        self.conv2 = _fused_conv(f"{name}.conv2", block.conv2, block.bn2, True, backend)
        self.conv3 = _fused_conv(f"{name}.conv3", block.conv3, block.bn3, True, backend)
        self.downsample = (_fused_downsample(f"{name}.downsample", block.downsample, backend)
                           if block.downsample is not None else None)
        self.residual = True

    def convs(self) -> list[FusedConv]:
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.conv3(out, residual=shortcut)


def _fused_downsample(name: str, downsample: nn.Module, backend: str) -> FusedConv:
    if not (isinstance(downsample, nn.Sequential) and len(downsample) == 2
            and isinstance(downsample[1], nn.BatchNorm2d)):
        raise TypeError(f"fuse: {name} must be Sequential(Conv2d, BatchNorm2d), got {downsample}")
    return _fused_conv(f"{name}.0", downsample[0], downsample[1], False, backend)


def _flatten(named_modules) -> list[tuple[str, nn.Module]]:
    """Sequentials opened up into their children, so that a Conv-BN-ReLU split across them is still seen."""
    out = []
    for name, m in named_modules:
        if type(m) is nn.Sequential:
            out += _flatten((f"{name}.{child}", c) for child, c in m.named_children())
        else:
            out.append((name, m))
    return out


def _fuse_sequence(named_modules, backend: str) -> nn.Sequential:
    """The stem and levels of a backbone as a flat Sequential of fused units."""
    items = _flatten(named_modules)
    units = []
    i = 0
    while i < len(items):
        name, m = items[i]
        if isinstance(m, BasicBlock):
            units.append(FusedBasicBlock(name, m, backend))
        elif isinstance(m, Bottleneck):
            units.append(FusedBottleneck(name, m, backend))
        elif isinstance(m, nn.Conv2d):
            bn = relu = None
            if i + 1 < len(items) and isinstance(items[i + 1][1], nn.BatchNorm2d):
                i += 1
                bn = items[i][1]
            if i + 1 < len(items) and isinstance(items[i + 1][1], nn.ReLU):
                i += 1
                relu = items[i][1]
            units.append(_fused_conv(name, m, bn, relu is not None, backend))
        elif isinstance(m, (nn.MaxPool2d, nn.Identity)):
            units.append(copy.deepcopy(m))  # DRN-A's stem max-pool stays a torch op (channels_last in and out)
        else:
            raise TypeError(f"fuse: cannot fuse {name} ({type(m).__name__}) in this position")
        i += 1
    return nn.Sequential(*units)


class FusedModel(InferenceOnly):
    """Common part of the fused models: the fused backbone and the backend every op runs on."""

    def __init__(self, backbone: nn.Sequential, backend: str, out_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.out_dim = out_dim
        self.num_classes = num_classes
        self._backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str):
        self._backend = drn_kernels.check_backend(value)
        for m in self.modules():
            if isinstance(m, FusedConv):
                m.backend = value

    def pin_cpu_choices(self, table) -> None:
        """Run the cpu backend's algorithms a choice table names (a dict {key: choice} or a JSON file of one, as
        cpu_choices() returns or a cache file holds; drn_kernels.cpu_choices) wherever it names a conv's key, on
        every machine: for evaluations whose every bit must match across machines. Keys it does not name are
        chosen as usual. None unpins. Raises ValueError (naming cpu_choices) for a malformed table, and at the call
        for a choice the CPU cannot run for that conv."""
        pinned = None if table is None else load_choice_table(table)
        for m in self.modules():
            if isinstance(m, FusedConv):
                m.pin(pinned)

    def cpu_choices(self) -> dict[str, str]:
        """The cpu backend's algorithm choices this model's convs made so far, as a table pin_cpu_choices (or
        drn.build(..., cpu_choices=...)) takes."""
        table = {}
        for m in self.modules():
            if isinstance(m, FusedConv):
                table.update(m._conv.choices)
        return dict(sorted(table.items()))

    def resolved_backend(self, device=None) -> str:
        """The concrete backend the ops run on for tensors on `device` (default: the model's device)."""
        if device is None:
            device = self.head_weight.device
        return drn_kernels.resolve_backend(self._backend, torch.device(device), "conv_bn_act")

    def _widened(self, x) -> bool:
        """True where the cpu backend computes this bfloat16 model's convs in float32 (drn_kernels.prepared.
        widens_bfloat16): the backbone then runs in float32 from its input to its features, rounded once."""
        conv = next((m._conv for m in self.backbone.modules() if isinstance(m, FusedConv)), None)
        return (conv is not None and conv.widened and isinstance(x, torch.Tensor) and x.dtype == conv.weight.dtype
                and x.device.type == "cpu")

    def features(self, x):
        # channels_last from the first layer on: every conv_bn_act returns channels_last, max-pool keeps it.
        x = x.contiguous(memory_format=torch.channels_last)
        if self._widened(x):
            return self.backbone(x.float()).to(x.dtype)
        return self.backbone(x)


class FusedClassifier(FusedModel):
    """forward(x) -> logits (N, num_classes): fused backbone, global average pool, fc."""

    def __init__(self, backbone, backend, out_dim, fc_weight, fc_bias):
        super().__init__(backbone, backend, out_dim, fc_weight.shape[0])
        self.head_weight = _frozen(fc_weight.reshape(fc_weight.shape[0], -1))
        self.head_bias = _frozen(fc_bias)

    def forward(self, x):
        # Pooling then a (K, C) matmul is ~C*K MACs per image: not worth a kernel. The same avg_pool2d as the
        # unfused model, so the result agrees to rounding.
        pooled = global_avg_pool(self.features(x)).flatten(1)
        return F.linear(pooled, self.head_weight, self.head_bias)


class FusedLocalizer(FusedClassifier):
    """forward(x, threshold=0.5) -> drn.Localization through one drn_kernels.localize call."""

    def forward(self, x, threshold: float = 0.5):
        feats = self.features(x)
        logits, labels, scores, boxes = drn_kernels.localize(feats, self.head_weight, self.head_bias,
                                                             threshold=threshold, stride=OUTPUT_STRIDE,
                                                             backend=self._backend)
        return Localization(logits, labels, scores, clip_boxes(boxes, x.shape[-2], x.shape[-1]))


class FusedSegmenter(FusedModel):
    """predict(x) -> (labels, probs) in one drn_kernels.class_head(upsample=8) call after the fused backbone;
    forward(x) -> (log_probs, logits_low) as DRNSeg (torch ops on the fused backbone's features)."""

    def __init__(self, backbone, backend, out_dim, seg_weight, seg_bias):
        super().__init__(backbone, backend, out_dim, seg_weight.shape[0])
        self.head_weight = _frozen(seg_weight, channels_last=True)
        self.head_bias = _frozen(seg_bias)

    def forward(self, x):
        h, w = x.shape[-2:]
        low = F.conv2d(self.features(x), self.head_weight, self.head_bias)
        up = upsample8(low)[..., :h, :w]
        return F.log_softmax(up, dim=1), low

    @torch.no_grad()
    def logits_low(self, x):
        """(N, K, ceil(H/8), ceil(W/8)): the classifier's logits before the ×8 up-sampling, the backbone in row
        bands where predict() would use them."""
        units = list(self.backbone)
        feats = self._features_low_memory(x, units) if self._low_memory(x, units) else self.features(x)
        return F.conv2d(feats, self.head_weight, self.head_bias)

    # predict() in row bands (drn.fused.banded) to bound memory: None = on CPU for inputs of at least LOW_MEMORY_PIXELS
    # pixels; True / False force it. Band sizes: ~band_bytes per band of a map, stem_band_bytes in the stem.
    low_memory: bool | None = None
    LOW_MEMORY_PIXELS = 1 << 19
    band_bytes = 8 << 20
    stem_band_bytes = 32 << 20

    @torch.no_grad()
    def predict(self, x):
        """(labels (N, H, W) int64, probs (N, H, W) float32): argmax of the ×8 up-sampled prediction."""
        h, w = x.shape[-2:]
        units = list(self.backbone)
        if self._low_memory(x, units):
            labels, probs = self._predict_low_memory(x, units)
        else:
            labels, probs = drn_kernels.class_head(self.features(x), self.head_weight, self.head_bias, upsample=8,
                                                   backend=self._backend)
        if labels.shape[-2:] != (h, w):  # sides not multiples of 8: crop as DRNSeg does (top-left aligned)
            labels, probs = labels[..., :h, :w].contiguous(), probs[..., :h, :w].contiguous()
        return labels, probs

    def _low_memory(self, x, units) -> bool:
        low_memory = self.low_memory
        if low_memory is None:
            low_memory = x.device.type == "cpu" and x.shape[-2] * x.shape[-1] >= self.LOW_MEMORY_PIXELS
        return bool(low_memory) and x.shape[0] > 0 and all(hasattr(u, "run_rows") for u in units)

    def _predict_low_memory(self, x, units):
        """The banded backbone (_features_low_memory), then the head in bands."""
        feats = self._features_low_memory(x, units)
        return banded.banded_class_head([], feats, self.head_weight, self.head_bias,
                                        banded.rows_per_band([], feats, self.band_bytes), self._backend)

    def _features_low_memory(self, x, units):
        """The stem (every unit up to the last strided one) in bands of its output rows, re-computing the rows a
        band's neighbours also read; the output-stride-8 blocks on their own storage (forward_low_memory); the
        trailing plain convs written over their input (banded.conv_over_rows)."""
        if self._widened(x):
            return self._features_low_memory(x.float(), units).to(x.dtype)
        heights = banded.chain_heights(units, x)
        strided = [i for i in range(len(units)) if heights[i + 1] < heights[i]]
        split = strided[-1] + 1 if strided else 0
        stem = units[:split]
        if stem:
            feats = banded.run_banded(stem, x, banded.rows_per_band(stem, x, self.stem_band_bytes))
        else:
            feats = x.contiguous(memory_format=torch.channels_last).clone(memory_format=torch.channels_last)
        for u in units[split:]:
            rows = banded.rows_per_band([u], feats, self.band_bytes)
            if isinstance(u, FusedConv) and u.out_shape(*feats.shape[1:]) == tuple(feats.shape[1:]):
                feats = banded.conv_over_rows(u, feats, max(rows, u.padding[0]))
            elif isinstance(u, _BandedBlock):
                feats = u.forward_low_memory(feats, rows)
            else:
                feats = u(feats)
        return feats


def _named_levels(model: nn.Module) -> list[tuple[str, nn.Module]]:
    names = {id(m): n for n, m in model.named_children()}
    return [(names[id(m)], m) for m in model.stem_and_levels()]


def _check_upsampler(seg: DRNSeg):
    up = seg.up
    k = seg.num_classes
    expected = bilinear_up_weight(k, dtype=up.weight.dtype, device=up.weight.device)
    geometry = (tuple(up.kernel_size), tuple(up.stride), tuple(up.padding), up.groups, up.bias is None,
                tuple(up.output_padding), tuple(up.dilation))
    if geometry != ((16, 16), (8, 8), (4, 4), k, True, (0, 0), (1, 1)):
        raise ValueError(f"fuse: the segmentation up-sampler must be ConvTranspose2d({k}, {k}, 16, stride=8, "
                         f"padding=4, groups={k}, bias=False); got {up}")
    if up.weight.device.type != "meta" and not torch.equal(up.weight.detach(), expected):  # meta: shapes only
        raise ValueError("fuse: the segmentation model's up.weight is not the fixed bilinear kernel "
                         "(drn_kernels.class_head hard-codes it); a learned up-sampler cannot be fused")


def fuse(model: nn.Module, backend: str = "auto", *, device=None, dtype=None, cpu_choices=None) -> FusedModel:
    """An inference-only fused copy of `model` (a drn.build classify, segment or localize model).

    backend: "auto" (triton on CUDA, cpu on CPU, else the reference with a warning) or a named backend; resolved
    per call from the input's device, so the fused model may be moved with .to() afterwards. `model` is untouched.
    device, dtype: where the fused model goes, as .to(device, dtype) after fusing would (BatchNorm is folded in
    float64 from the source's statistics first), but with the kernels' weights prepared only once, there.
    cpu_choices: a table of the cpu backend's algorithm choices to pin (FusedModel.pin_cpu_choices).
    """
    drn_kernels.check_backend(backend)
    pinned = None if cpu_choices is None else load_choice_table(cpu_choices)  # a bad table fails before work
    unprepared = "reference"  # the reference backend prepares nothing: built, moved, then prepared once
    with torch.no_grad():
        if isinstance(model, DRNSeg):
            _check_upsampler(model)
            levels = [(f"base.{i}", m) for i, m in enumerate(model.base)]
            fused = FusedSegmenter(_fuse_sequence(levels, unprepared), unprepared, model.out_dim,
                                   model.seg.weight.detach(), model.seg.bias.detach())
        elif isinstance(model, (DRN, DRN_A)):
            if getattr(model, "fc", None) is None:
                raise ValueError("fuse: the model has no classifier (num_classes=0)")
            cls = FusedLocalizer if isinstance(model, LocalizeMixin) else FusedClassifier
            fc_bias = model.fc.bias.detach() if model.fc.bias is not None else \
                model.fc.weight.new_zeros(model.fc.weight.shape[0])
            fused = cls(_fuse_sequence(_named_levels(model), unprepared), unprepared, model.out_dim,
                        model.fc.weight.detach(), fc_bias)
        elif isinstance(model, FusedModel):
            raise TypeError("fuse: the model is already fused")
        else:
            raise TypeError(f"fuse: expected a model from drn.build (DRN, DRN_A, DRNSeg), got {type(model).__name__}")
    if device is not None or dtype is not None:
        fused.to(device=device, dtype=dtype)
    if pinned is not None:
        fused.pin_cpu_choices(pinned)
    fused.backend = backend
    return fused
