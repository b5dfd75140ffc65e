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

from . import hub
from .heads import DRNSeg

CLASSIFIER_KEYS = {"fc.weight", "fc.bias", "seg.weight", "seg.bias"}


def _torch_load(path) -> object:
    """torch.load(path) (weights only), with an error naming the file and what is wrong with it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # missing, unreadable, a directory: the OS error names the file
    except Exception as e:  # noqa: BLE001 — torch.load's errors on junk files are many and say little
        size = os.path.getsize(path)
        what = "the file is empty" if size == 0 else \
            f"not a PyTorch checkpoint ({size} bytes; torch.load says {type(e).__name__}: {e})"
        raise ValueError(f"cannot read checkpoint {os.fspath(path)}: {what}") from e


def read_state_dict(path_or_state_dict) -> dict:
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        obj = _torch_load(path_or_state_dict)
        source = f"checkpoint {os.fspath(path_or_state_dict)}"
    else:
        obj = path_or_state_dict
        source = "checkpoint"
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} must be a state_dict (name -> tensor) or a dict holding one under "
                         f"'state_dict', got {type(obj).__name__}")
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
    return out


def _new_classifier_keys(sd: dict, target: dict) -> list[str]:
    """The classifier keys (fc.*, seg.*) to leave at the model's fresh initialisation because the checkpoint's
    classifier has another number of classes; raises when a classifier tensor is mis-shaped in any other way
    (e.g. another number of input channels): that is a wrong checkpoint, not a new classifier."""
    keys = sorted(CLASSIFIER_KEYS & sd.keys() & target.keys())
    differing = [k for k in keys if sd[k].shape != target[k].shape]
    if not differing:
        return []
    wrong = [k for k in differing if sd[k].dim() != target[k].dim() or sd[k].shape[1:] != target[k].shape[1:]
             or sd[k].shape[0] == target[k].shape[0]]
    classes = {sd[k].shape[0] for k in keys if sd[k].dim() >= 1}
    if wrong or len(classes) != 1:
        shapes = "; ".join(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}" for k in keys)
        raise ValueError(f"checkpoint classifier is mis-shaped for this model (not just another number of "
                         f"classes): {shapes}")
    warnings.warn(f"checkpoint classifier has {classes.pop()} classes, the model {target[differing[0]].shape[0]}: "
                  f"{', '.join(differing)} re-initialised", UserWarning, stacklevel=3)
    return differing


def load_checkpoint(model: nn.Module, path_or_state_dict, *, strict: bool = True) -> nn.Module:
    """Load weights into `model` (see the module docstring for what is accepted). Returns the model."""
    sd = read_state_dict(path_or_state_dict)
    target = model.state_dict()
    from_classifier = isinstance(model, DRNSeg) and not any(k.startswith("base.") for k in sd)
    if from_classifier:
        sd = _backbone_keys_to_base(model, sd, target)
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = value  # checkpoints from before PyTorch 0.4.1 lack it; it does not affect eval
    if isinstance(model, DRNSeg) and "up.weight" not in sd:
        sd["up.weight"] = target["up.weight"]  # the fixed bilinear up-sampler, not a learned weight

    for k in _new_classifier_keys(sd, target):
        sd[k] = target[k]
    missing = sorted(target.keys() - sd.keys())
    unexpected = sorted(sd.keys() - target.keys())
    misshaped = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                       for k in target.keys() & sd.keys() if sd[k].shape != target[k].shape)
    if strict and (missing or unexpected or misshaped):
        how = (" (read as an image-classification checkpoint: its backbone keys renamed to base.<level>, its fc "
               "dropped)" if from_classifier else "")
        raise ValueError(f"checkpoint does not fit {type(model).__name__}{how}: missing keys {missing}; "
                         f"unexpected keys {unexpected}; mis-shaped {misshaped}")
    model.load_state_dict(sd, strict=strict)
    if from_classifier:  # said only once it has happened
        warnings.warn("loaded an image-classification checkpoint into a segmentation model: base.* come from it, "
                      "seg.* keep their fresh initialisation", UserWarning, stacklevel=2)
    return model


def pretrained_state_dict(name: str, progress: bool = True) -> dict:
    """Official weights of `name` through the torch.hub cache (drn.zoo.hub: the mirror first where one is set;
    the hash prefix in the file name is checked)."""
    entry = hub.find(name)
    if entry.weights.note:
        warnings.warn(f"{name}: {entry.weights.note}", UserWarning, stacklevel=3)
    return hub.state_dict(entry, progress=progress)
