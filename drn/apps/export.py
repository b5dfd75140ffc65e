"""`drn export`: a DRN as ONNX, BatchNorm folded into plain convolutions.

The fused model's drn_kernels ops are custom ops that ONNX cannot express, so the export starts from the unfused
model and folds every eval-mode BatchNorm into the convolution before it (drn_kernels.fold_bn; the conv gains a
bias, the BatchNorm becomes Identity). What remains is Conv/Relu/Add (+ the head), which every ONNX runtime has.

Outputs per task: classify -> logits (N, K); segment -> log_probs (N, K, H, W) and logits_low (N, K, H/8, W/8);
localize -> logits, labels, scores, boxes as drn.Localization, the paper's box written in plain tensor ops (the
localize op itself is a custom op). The exported graph has a fixed H×W (--size) and a dynamic batch.
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings

import torch
from torch import nn

import drn_kernels
from drn_kernels import reference

from ..zoo.heads import OUTPUT_STRIDE, classifier_weights, clip_boxes
from .commands import add_model_args, command_main, positive_int, warn_if_random

_STEM_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    weight, bias = drn_kernels.fold_bn(conv.weight, bn, conv_bias=conv.bias)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                    padding_mode=conv.padding_mode).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with every Conv2d→BatchNorm2d pair folded into one biased Conv2d.

    Pairs are found where the DRN code puts them: consecutive items of an nn.Sequential (stems, downsample
    projections, DRN-D conv levels, the segmentation model's base) and convN/bnN attributes of a block. Raises if
    any BatchNorm is left, so an unknown layout fails loudly instead of exporting a training-mode graph.
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            items = list(module._modules.items())
            for (cname, conv), (bname, bn) in zip(items, items[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[cname] = _folded(conv, bn)
                    module._modules[bname] = nn.Identity()
        for cname, bname in _STEM_PAIRS:
            conv, bn = module._modules.get(cname), module._modules.get(bname)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[cname] = _folded(conv, bn)
                module._modules[bname] = nn.Identity()
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"fold_batchnorm: no convolution found before {left}")
    return model


class ClassifyGraph(nn.Module):
    """features -> mean over the map -> classifier: the model's global average pool written as a mean, because
    avg_pool2d with a kernel taken from the input's shape does not trace to ONNX."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        pooled = self.model.features(x).mean(dim=(2, 3), keepdim=True)
        fc = self.model.fc
        return fc(pooled).flatten(1) if isinstance(fc, nn.Conv2d) else fc(pooled.flatten(1))


class LocalizeGraph(nn.Module):
    """The localization model in plain tensor ops: drn_kernels.reference.localize (per-cell logits of the 1×1
    classifier, their mean as image logits, per-cell argmax/softmax, the top-1 class's box by masked min/max),
    which traces to ONNX."""

    def __init__(self, model: nn.Module, threshold: float):
        super().__init__()
        self.model = model
        self.threshold = float(threshold)

    def forward(self, x):
        weight, bias = classifier_weights(self.model)
        logits, labels, scores, boxes = reference.localize(self.model.features(x), weight, bias, self.threshold,
                                                           OUTPUT_STRIDE)
        return logits, labels, scores, clip_boxes(boxes, x.shape[-2], x.shape[-1])


OUTPUT_NAMES = {"classify": ["logits"], "segment": ["log_probs", "logits_low"],
                "localize": ["logits", "labels", "scores", "boxes"]}


def export_onnx(model: nn.Module, path, *, task: str = "classify", size=(224, 224), threshold: float = 0.5,
                opset: int = 17) -> nn.Module:
    """Write `model` (unfused, built for `task`) as ONNX to `path`; returns the BN-folded module exported."""
    if hasattr(model, "resolved_backend"):
        raise ValueError("export the unfused model: a fused model runs custom ops that ONNX cannot express")
    graph = fold_batchnorm(model)
    if task == "localize":
        graph = LocalizeGraph(graph, threshold)
    elif task == "classify":
        graph = ClassifyGraph(graph)
    names = OUTPUT_NAMES[task]
    x = torch.randn(1, 3, *size, device=next(model.parameters()).device)
    # The TorchScript exporter (dynamo=False): the torch.export-based one needs the onnxscript package, which
    # this project does not depend on. Shapes traced as constants are intended: the graph has a fixed H×W.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=names, dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
                          do_constant_folding=True)
    return graph


def add_arguments(p: argparse.ArgumentParser):
    add_model_args(p)
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--task", default="classify", choices=list(OUTPUT_NAMES), help="classify (default)")
    p.add_argument("--num-classes", type=positive_int, help="classes (default: the checkpoint's)")
    p.add_argument("--size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size of the graph (224 224; 512 1024 for segment)")
    p.add_argument("--threshold", type=float, default=0.5, help="localize: cell score threshold (0.5)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17)")


def run(args) -> int:
    from .predict import load_model

    warn_if_random("drn export", args)
    size = tuple(args.size) if args.size else ((512, 1024) if args.task == "segment" else (224, 224))
    model = load_model(args.model, args.task, num_classes=args.num_classes, weights=args.weights,
                       pretrained=args.pretrained, device="cpu")
    export_onnx(model, args.onnx, task=args.task, size=size, threshold=args.threshold, opset=args.opset)
    print(f"wrote {args.onnx}: {args.model} {args.task}, input (N, 3, {size[0]}, {size[1]}), "
          f"outputs {', '.join(OUTPUT_NAMES[args.task])}")
    return 0


def main(argv=None) -> int:
    return command_main("drn export", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
