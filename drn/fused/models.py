"""The fused models: FusedModel (the fused backbone and its backend) and its heads, FusedClassifier,
FusedLocalizer and FusedSegmenter (whose predict runs in row bands on CPU for large inputs: drn.fused.banded)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import drn_kernels
from drn_kernels.cpu_choices import load_table as load_choice_table
from drn_kernels.reference import upsample8

from ..zoo.heads import OUTPUT_STRIDE, Localization, clip_boxes
from ..zoo.models import global_avg_pool
from . import banded
from .layers import FusedConv, InferenceOnly, _BandedBlock


def _frozen(t: torch.Tensor, channels_last: bool = False) -> nn.Parameter:
    """A parameter that never requires grad (so it follows .to() and shows in parameters() / state_dict)."""
    t = t.detach().clone()
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return nn.Parameter(t, requires_grad=False)


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
        widens_bfloat16): the backbone then runs in float32 from its input to its features, rounded once. Its
        input must still have the model's dtype (the ops' own error otherwise, as where nothing is widened)."""
        conv = next((m._conv for m in self.backbone.modules() if isinstance(m, FusedConv)), None)
        return conv is not None and conv.widens_model_input(x)

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
            return self._banded_features(x.float(), units).to(x.dtype)
        return self._banded_features(x, units)

    def _banded_features(self, x, units):
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
