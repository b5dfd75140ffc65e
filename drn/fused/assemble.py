"""drn.fuse: a zoo model (drn.zoo) taken apart into fused units (drn.fused.layers) and put together again as a
fused model (drn.fused.models), its BatchNorms folded; the source model is checked and never modified."""
from __future__ import annotations

import copy

import torch
from torch import nn

import drn_kernels
from drn_kernels.cpu_choices import load_table as load_choice_table
from drn_kernels.reference import bilinear_up_weight

from ..zoo.heads import DRNSeg, LocalizeMixin
from ..zoo.models import DRN, DRN_A, BasicBlock, Bottleneck
from .layers import FusedBasicBlock, FusedBottleneck, Placement, _fused_conv
from .models import FusedClassifier, FusedLocalizer, FusedModel, FusedSegmenter


def _flatten(named_modules) -> list[tuple[str, nn.Module]]:
    """Sequentials opened up into their children, so that a Conv-BN-ReLU split across them is still seen."""
    out = []
    for name, m in named_modules:
        if type(m) is nn.Sequential:
            out += _flatten((f"{name}.{child}", c) for child, c in m.named_children())
        else:
            out.append((name, m))
    return out


def _fuse_sequence(named_modules, place: Placement) -> nn.Sequential:
    """The stem and levels of a backbone as a flat Sequential of fused units."""
    items = _flatten(named_modules)
    units = []
    i = 0
    while i < len(items):
        name, m = items[i]
        if isinstance(m, BasicBlock):
            units.append(FusedBasicBlock(name, m, place))
        elif isinstance(m, Bottleneck):
            units.append(FusedBottleneck(name, m, place))
        elif isinstance(m, nn.Conv2d):
            bn = relu = None
            if i + 1 < len(items) and isinstance(items[i + 1][1], nn.BatchNorm2d):
                i += 1
                bn = items[i][1]
            if i + 1 < len(items) and isinstance(items[i + 1][1], nn.ReLU):
                i += 1
                relu = items[i][1]
            units.append(_fused_conv(name, m, bn, relu is not None, place))
        elif isinstance(m, (nn.MaxPool2d, nn.Identity)):
            units.append(copy.deepcopy(m))  # DRN-A's stem max-pool stays a torch op (channels_last in and out)
        else:
            raise TypeError(f"fuse: cannot fuse {name} ({type(m).__name__}) in this position")
        i += 1
    return nn.Sequential(*units)


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
    float64 from the source's statistics first): each layer is built there, on its backend, and its kernels'
    weights prepared once.
    cpu_choices: a table of the cpu backend's algorithm choices to pin (FusedModel.pin_cpu_choices).
    """
    drn_kernels.check_backend(backend)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"fuse: dtype must be a floating-point torch.dtype, got {dtype!r}")
    pinned = None if cpu_choices is None else load_choice_table(cpu_choices)  # a bad table fails before work
    try:
        device = None if device is None else torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"fuse: device must be a torch.device or a device name, got {device!r}") from e
    place = Placement(backend, device, dtype, pinned)
    with torch.no_grad():
        if isinstance(model, DRNSeg):
            _check_upsampler(model)
            levels = [(f"base.{i}", m) for i, m in enumerate(model.base)]
            return FusedSegmenter(_fuse_sequence(levels, place), backend, model.out_dim,
                                  place.put(model.seg.weight), place.put(model.seg.bias))
        if isinstance(model, (DRN, DRN_A)):
            if getattr(model, "fc", None) is None:
                raise ValueError("fuse: the model has no classifier (num_classes=0)")
            cls = FusedLocalizer if isinstance(model, LocalizeMixin) else FusedClassifier
            fc = model.fc
            fc_bias = fc.bias if fc.bias is not None else fc.weight.new_zeros(fc.weight.shape[0])
            return cls(_fuse_sequence(_named_levels(model), place), backend, model.out_dim, place.put(fc.weight),
                       place.put(fc_bias))
    if isinstance(model, FusedModel):
        raise TypeError("fuse: the model is already fused")
    raise TypeError(f"fuse: expected a model from drn.build (DRN, DRN_A, DRNSeg), got {type(model).__name__}")
