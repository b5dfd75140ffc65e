"""Loading checkpoints: official weights through the torch.hub cache, local files, and training checkpoints.

Accepted: plain state_dicts; DataParallel's `module.` prefix; {'state_dict': ..., 'epoch': ..., ...} training
checkpoints; checkpoints saved before BatchNorm had num_batches_tracked; an ImageNet classifier checkpoint loaded
into a segmentation model (its backbone becomes base.*, its fc is not used); and a classifier of another size than
the model's (fc / seg keep their fresh initialisation, with a warning). Everything else that does not fit raises,
listing the missing, unexpected and mis-shaped keys: no weight is ever dropped silently.
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from .heads import DRNSeg
from .registry import PRETRAINED

CLASSIFIER_KEYS = {"fc.weight", "fc.bias", "seg.weight", "seg.bias"}


def read_state_dict(path_or_state_dict) -> dict:
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        obj = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        obj = path_or_state_dict
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("checkpoint must be a state_dict (name -> tensor) or a dict holding one under "
                         "'state_dict'")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _backbone_keys_to_base(model: DRNSeg, sd: dict, target: dict) -> dict:
    """Rename a classifier checkpoint's backbone keys to the segmentation model's base.<index> keys."""
    index = {name: i for i, name in enumerate(model.base_names)}
    out = {}
    for key, value in sd.items():
        head, _, rest = key.partition(".")
        if head in index:
            out[f"base.{index[head]}.{rest}"] = value
        elif key in ("fc.weight", "fc.bias"):
            continue  # the ImageNet classifier has no place in a segmentation model
        else:
            out[key] = value
    for key in ("seg.weight", "seg.bias"):
        out[key] = target[key]
    warnings.warn("loaded an image-classification checkpoint into a segmentation model: base.* come from it, "
                  "seg.* keep their fresh initialisation", UserWarning, stacklevel=3)
    return out


def load_checkpoint(model: nn.Module, path_or_state_dict, *, strict: bool = True) -> nn.Module:
    """Load weights into `model` (see the module docstring for what is accepted). Returns the model."""
    sd = read_state_dict(path_or_state_dict)
    target = model.state_dict()
    if isinstance(model, DRNSeg) and not any(k.startswith("base.") for k in sd):
        sd = _backbone_keys_to_base(model, sd, target)
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = value  # checkpoints from before PyTorch 0.4.1 lack it; it does not affect eval
    if isinstance(model, DRNSeg) and "up.weight" not in sd:
        sd["up.weight"] = target["up.weight"]  # the fixed bilinear up-sampler, not a learned weight

    reinit = [k for k in CLASSIFIER_KEYS & sd.keys() & target.keys() if sd[k].shape != target[k].shape]
    if reinit:
        got = sd[sorted(reinit)[0]].shape[0]
        warnings.warn(f"checkpoint classifier has {got} classes, the model {target[sorted(reinit)[0]].shape[0]}: "
                      f"{', '.join(sorted(reinit))} re-initialised", UserWarning, stacklevel=2)
        for k in reinit:
            sd[k] = target[k]
    missing = sorted(target.keys() - sd.keys())
    unexpected = sorted(sd.keys() - target.keys())
    misshaped = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                       for k in target.keys() & sd.keys() if sd[k].shape != target[k].shape)
    if strict and (missing or unexpected or misshaped):
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: missing keys {missing}; "
                         f"unexpected keys {unexpected}; mis-shaped {misshaped}")
    model.load_state_dict(sd, strict=strict)
    return model


def pretrained_state_dict(name: str, progress: bool = True) -> dict:
    """Official weights of `name` through the torch.hub cache; the hash prefix in the file name is checked."""
    if name not in PRETRAINED:
        raise ValueError(f"no released weights for {name!r}; models with weights: {sorted(PRETRAINED)}")
    info = PRETRAINED[name]
    if info.note:
        warnings.warn(f"{name}: {info.note}", UserWarning, stacklevel=3)
    try:
        return torch.hub.load_state_dict_from_url(info.url, map_location="cpu", progress=progress, check_hash=True,
                                                  weights_only=True)
    except OSError as e:  # URLError, a refused connection, no DNS: one line saying where the file can go
        place = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(info.url))
        raise FileNotFoundError(f"cannot download the {name} weights {info.url} ({getattr(e, 'reason', e)}); "
                                f"download it elsewhere and place it at {place}") from None
