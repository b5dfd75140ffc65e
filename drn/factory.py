"""drn.build: one entry point for every model, task, weight source and execution mode."""
from __future__ import annotations

import torch
from torch import nn

from . import registry
from .checkpoint import load_checkpoint, pretrained_state_dict
from .heads import DRNSeg, as_localizer

TASKS = ("classify", "segment", "localize")


def build(name: str, *, task: str = "classify", num_classes: int | None = None, pretrained=False,
          fused: bool = False, backend: str = "auto", dtype: torch.dtype | None = None,
          device=None, cpu_choices=None) -> nn.Module:
    """Build a DRN by registry name (see drn.list_models()).

    task: "classify" (forward(x) -> logits), "segment" (forward(x) -> (log_probs, logits_low); needs
    num_classes), "localize" (forward(x, threshold) -> drn.Localization).
    pretrained: False, True (official weights through the torch.hub cache, hash-checked) or a checkpoint path.
    fused: inference-only model running drn_kernels ops (BatchNorm folded, channels_last), see drn.fuse.
    cpu_choices (fused only): a table of the cpu backend's algorithm choices to pin on every machine, a dict or a
    JSON file (FusedModel.cpu_choices() writes one; see drn.fused.FusedModel.pin_cpu_choices).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if cpu_choices is not None and not fused:
        raise ValueError("cpu_choices pins a fused model's algorithms: it needs fused=True")
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
    if fused:
        # Fold BatchNorm in float64 from the float32 statistics first, then cast: folding after a cast to
        # fp16/bf16 would fold from rounded statistics.
        from .fused import fuse

        return fuse(model, backend=backend, device=device, dtype=dtype, cpu_choices=cpu_choices)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model
