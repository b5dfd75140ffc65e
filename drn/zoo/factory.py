"""The unfused model of every name, task and weight source: what drn.build returns, or fuses when fused=True."""
from __future__ import annotations

import torch
from torch import nn

from . import registry
from .checkpoint import load_checkpoint, pretrained_state_dict
from .heads import DRNSeg, as_localizer

TASKS = ("classify", "segment", "localize")


def build(name: str, *, task: str = "classify", num_classes: int | None = None, pretrained=False,
          dtype: torch.dtype | None = None, device=None) -> nn.Module:
    """The reference model `name` (see drn.list_models()) for `task`, in eval mode: drn.build's unfused model
    (its docstring says what each argument means)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    ctor = registry.constructor(name)
    if task == "segment" and num_classes is None:
        raise ValueError("task='segment' needs num_classes (19 for Cityscapes)")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(pretrained, (bool, str)) and not hasattr(pretrained, "__fspath__"):
        raise TypeError(f"pretrained must be False, True or a checkpoint path, got {type(pretrained).__name__}")

    if task == "segment":
        model = DRNSeg(ctor(num_classes=1000), num_classes)
    else:
        model = ctor(num_classes=1000 if num_classes is None else num_classes)
        if task == "localize":
            as_localizer(model)

    if pretrained is True:
        load_checkpoint(model, pretrained_state_dict(name))
    elif pretrained:
        load_checkpoint(model, pretrained)

    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model
