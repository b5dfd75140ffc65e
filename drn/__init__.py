"""drn: the Dilated Residual Network model zoo (DRN-A/B/C/D), exact to the reference implementation (fyu/drn),
with fused inference on drn_kernels.

    drn.list_models() -> names
    drn.build(name, *, task, num_classes, pretrained, fused, backend, dtype, device, cpu_choices) -> nn.Module
    drn.fuse(model, backend="auto", *, device, dtype, cpu_choices) -> inference-only model on drn_kernels ops
    drn.load_checkpoint(model, path_or_state_dict) -> model

The package by job: drn.zoo (the reference models and their weights), drn.fused (the fused assembly on
drn_kernels; imports the zoo), drn.apps (the `drn` command and its jobs), drn.tools (profiler and FLOP counts),
drn.demo (`python -m drn.demo`). This module joins the first two: drn.fused is imported on the first fused build.
"""
from __future__ import annotations

import torch
from torch import nn

from .zoo.checkpoint import load_checkpoint
from .zoo.factory import TASKS
from .zoo.factory import build as _build_unfused
from .zoo.heads import DRNSeg, Localization
from .zoo.registry import PRETRAINED, list_models


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
    if not fused:
        if cpu_choices is not None:
            raise ValueError("cpu_choices pins a fused model's algorithms: it needs fused=True")
        return _build_unfused(name, task=task, num_classes=num_classes, pretrained=pretrained, dtype=dtype,
                              device=device)
    # Fold BatchNorm in float64 from the float32 statistics first, then cast: folding after a cast to fp16/bf16
    # would fold from rounded statistics.
    model = _build_unfused(name, task=task, num_classes=num_classes, pretrained=pretrained)
    return fuse(model, backend=backend, device=device, dtype=dtype, cpu_choices=cpu_choices)


def fuse(model, backend="auto", *, device=None, dtype=None, cpu_choices=None):
    """BatchNorm folded into the convs, channels_last, Conv-BN(-add)-ReLU groups on drn_kernels.conv_bn_act (see
    drn.fused.fuse)."""
    from .fused import fuse as _fuse

    return _fuse(model, backend=backend, device=device, dtype=dtype, cpu_choices=cpu_choices)


__all__ = ["build", "fuse", "list_models", "load_checkpoint", "Localization", "DRNSeg", "PRETRAINED", "TASKS"]
