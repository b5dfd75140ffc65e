"""drn: the Dilated Residual Network model zoo (DRN-A/B/C/D), exact to the reference implementation (fyu/drn),
with fused inference on drn_kernels.

    drn.list_models() -> names
    drn.build(name, *, task, num_classes, pretrained, fused, backend, dtype, device, cpu_choices) -> nn.Module
    drn.fuse(model, backend="auto", *, device, dtype, cpu_choices) -> inference-only model on drn_kernels ops
    drn.load_checkpoint(model, path_or_state_dict) -> model
"""
from .checkpoint import load_checkpoint
from .factory import TASKS, build
from .heads import DRNSeg, Localization
from .registry import PRETRAINED, list_models


def fuse(model, backend="auto", *, device=None, dtype=None, cpu_choices=None):
    """BatchNorm folded into the convs, channels_last, Conv-BN(-add)-ReLU groups on drn_kernels.conv_bn_act (see
    drn.fused.fuse)."""
    from .fused import fuse as _fuse

    return _fuse(model, backend=backend, device=device, dtype=dtype, cpu_choices=cpu_choices)


__all__ = ["build", "fuse", "list_models", "load_checkpoint", "Localization", "DRNSeg", "PRETRAINED", "TASKS"]
