"""Dilated Residual Networks (Yu, Koltun, Funkhouser, CVPR 2017): DRN-A, DRN-B, DRN-C and DRN-D backbones.

Module names, parameter shapes and arithmetic follow the reference implementation (github.com/fyu/drn, drn.py)
so that its checkpoints load with strict=True and give the same outputs, quirks included:
- DRN-A: the first block of layer3 and of layer4 is not dilated (only the following blocks are).
- DRN-C-58: layer7.0 has a downsample projection (2048 -> 512) that is computed but never added (residual=False).
- DRN-C levels 7-8 are BasicBlocks without residual; DRN-D uses plain Conv-BN-ReLU layers in levels 1, 2, 7, 8.
The one deliberate difference: global average pooling instead of AvgPool2d(28), so any input size works
(identical at 224×224, where the final map is 28×28).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BatchNorm = nn.BatchNorm2d


def conv3x3(in_planes, out_planes, stride=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation,
                     bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 Conv-BN groups; dilation = (first conv's, second conv's)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=(1, 1), residual=True):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation[0])
        self.bn1 = BatchNorm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = BatchNorm(planes)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # The reference evaluates the projection even when residual=False (DRN-C-58 layer7.0); so do we, so that
        # hooks and profiles see the same work. Its result is unused then.
        shortcut = self.downsample(x) if self.downsample is not None else x
        if self.residual:
            out = out + shortcut
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided, dilated by dilation[1]), 1×1 expand ×4, residual add."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=(1, 1), residual=True):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = BatchNorm(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation[1])
        self.bn2 = BatchNorm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = BatchNorm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        # The reference Bottleneck ignores `residual` and always adds; kept for a uniform constructor.
        self.residual = True

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + shortcut)


def _init_weights(model: nn.Module):
    # He initialisation as the reference (normal with std sqrt(2 / (k*k*out_channels))), BN to identity.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
        elif isinstance(m, BatchNorm):
            m.weight.data.fill_(1)
            m.bias.data.zero_()


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # avg_pool2d over the whole map is the reference's AvgPool2d(28) op at 224x224 (bit-identical there).
    return F.avg_pool2d(x, kernel_size=tuple(x.shape[-2:]))


class DRN(nn.Module):
    """DRN-B/C/D: eight levels at strides 1, 2, 4, 8, 8, 8, 8, 8 with dilations 1, 1, 1, 1, 2, 4, 2, 1.

    arch "C": conv1/bn1/relu stem, BasicBlock levels 1-2, levels 7-8 BasicBlocks without residual.
    arch "B": as "C" with the residual of levels 7-8 kept (paper Figure 5(b)).
    arch "D": layer0 (Conv-BN-ReLU), plain Conv-BN-ReLU layers in levels 1, 2, 7, 8.
    """

    def __init__(self, block, layers, num_classes=1000, channels=(16, 32, 64, 128, 256, 512, 512, 512),
                 arch="D"):
        super().__init__()
        if arch not in ("B", "C", "D"):
            raise ValueError(f"arch must be 'B', 'C' or 'D', got {arch!r}")
        self.inplanes = channels[0]
        self.out_dim = channels[-1]
        self.arch = arch
        self.num_classes = num_classes

        if arch in ("B", "C"):
            self.conv1 = nn.Conv2d(3, channels[0], kernel_size=7, stride=1, padding=3, bias=False)
            self.bn1 = BatchNorm(channels[0])
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = self._make_layer(BasicBlock, channels[0], layers[0], stride=1)
            self.layer2 = self._make_layer(BasicBlock, channels[1], layers[1], stride=2)
        else:
            self.layer0 = nn.Sequential(
                nn.Conv2d(3, channels[0], kernel_size=7, stride=1, padding=3, bias=False),
                BatchNorm(channels[0]),
                nn.ReLU(inplace=True))
            self.layer1 = self._make_conv_layers(channels[0], layers[0], stride=1)
            self.layer2 = self._make_conv_layers(channels[1], layers[1], stride=2)

        self.layer3 = self._make_layer(block, channels[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, channels[3], layers[3], stride=2)
        self.layer5 = self._make_layer(block, channels[4], layers[4], dilation=2, new_level=False)
        self.layer6 = self._make_layer(block, channels[5], layers[5], dilation=4, new_level=False)
        if arch in ("B", "C"):
            keep = arch == "B"
            self.layer7 = self._make_layer(BasicBlock, channels[6], layers[6], dilation=2, new_level=False,
                                           residual=keep)
            self.layer8 = self._make_layer(BasicBlock, channels[7], layers[7], dilation=1, new_level=False,
                                           residual=keep)
        else:
            self.layer7 = self._make_conv_layers(channels[6], layers[6], dilation=2)
            self.layer8 = self._make_conv_layers(channels[7], layers[7], dilation=1)

        if num_classes > 0:
            self.fc = nn.Conv2d(self.out_dim, num_classes, kernel_size=1, bias=True)
        _init_weights(self)

    def _make_layer(self, block, planes, blocks, stride=1, dilation=1, new_level=True, residual=True):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                BatchNorm(planes * block.expansion))
        # The first block of a level that starts a new dilation uses half of it in its first conv.
        first = (1, 1) if dilation == 1 else (dilation // 2 if new_level else dilation, dilation)
        modules = [block(self.inplanes, planes, stride, downsample, dilation=first, residual=residual)]
        self.inplanes = planes * block.expansion
        modules += [block(self.inplanes, planes, dilation=(dilation, dilation), residual=residual)
                    for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def _make_conv_layers(self, channels, convs, stride=1, dilation=1):
        modules = []
        for i in range(convs):
            modules += [nn.Conv2d(self.inplanes, channels, kernel_size=3, stride=stride if i == 0 else 1,
                                  padding=dilation, dilation=dilation, bias=False),
                        BatchNorm(channels),
                        nn.ReLU(inplace=True)]
            self.inplanes = channels
        return nn.Sequential(*modules)

    def stem_and_levels(self) -> list[nn.Module]:
        """The feature extractor in order; for arch B/C the stem is three modules (conv1, bn1, relu)."""
        stem = [self.conv1, self.bn1, self.relu] if self.arch in ("B", "C") else [self.layer0]
        return stem + [getattr(self, f"layer{i}") for i in range(1, 9)]

    def features(self, x):
        for m in self.stem_and_levels():
            x = m(x)
        return x

    def forward(self, x):
        x = self.fc(global_avg_pool(self.features(x)))
        return x.flatten(1)


class DRN_A(nn.Module):
    """DRN-A: a ResNet whose levels 4 and 5 keep stride 8 and dilate by 2 and 4 instead."""

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.out_dim = 512 * block.expansion
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], dilation=2)
        self.layer4 = self._make_layer(block, 512, layers[3], dilation=4)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_weights(self)

    def _make_layer(self, block, planes, blocks, stride=1, dilation=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                BatchNorm(planes * block.expansion))
        # Reference quirk: the first block of every level is undilated.
        modules = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        modules += [block(self.inplanes, planes, dilation=(dilation, dilation)) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def stem_and_levels(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu, self.maxpool, self.layer1, self.layer2, self.layer3, self.layer4]

    def features(self, x):
        for m in self.stem_and_levels():
            x = m(x)
        return x

    def forward(self, x):
        return self.fc(global_avg_pool(self.features(x)).flatten(1))
