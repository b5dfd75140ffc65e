"""drn.fuse: an inference-only copy of a DRN whose Conv-BN(-add)-ReLU groups run drn_kernels.conv_bn_act.

What fusing does, once, when the model is built:
- every eval-mode BatchNorm is folded into the conv before it (drn_kernels.fold_bn: float64 arithmetic from the
  stored statistics, cast back to the weight's dtype), so a conv and its BN become one (weight, bias) pair;
- weights are pre-packed as channels_last contiguous tensors: a channels_last (K, C, R, S) weight is a dense
  (K, R, S, C) array, the layout the Triton and CUDA kernels stream; on the cpu backend each conv also keeps the
  forms its kernels compute with (drn_kernels.prepared.PreparedConv: Winograd-transformed weights made here, oneDNN
  blocked copies at the first call of each input shape), so no call re-transforms a weight;
- a FusedConv owns its weights: `weight`, `bias` and state_dict() give copies, and load_state_dict (in or out of
  inference mode), .to()/.half()/.cuda() and assigning `weight`/`bias` are the ways to change them — each makes the
  prepared forms anew. Nothing can write to the tensors the kernels read behind the module's back, so a prepared
  form can never be stale;
- Conv-BN-ReLU becomes one conv_bn_act(relu=True); the tail of a BasicBlock/Bottleneck (last Conv-BN, residual add,
  ReLU) becomes one conv_bn_act(residual=shortcut, relu=True), the projection shortcut its own
  conv_bn_act(relu=False); activations stay channels_last from the first layer to the head;
- heads: classify = global average pool + fc (a few KFLOPs: plain torch), segment predict() = one
  drn_kernels.class_head(upsample=8) call that never materialises the (N, K, H, W) maps, localize =
  drn_kernels.localize, all with the model's backend. On CPU, predict() of a large input runs in row bands
  (drn.fused.banded; FusedSegmenter.low_memory) so that the backbone never holds more than two whole maps.
The source model is never modified (weights are folded into new tensors). The result is eval-only: train(True)
raises and no parameter requires grad. BatchNorm is folded from its running statistics whatever mode the source
model is in, i.e. the fused model computes what the source computes in eval mode.
"""
from .assemble import fuse
from .layers import FusedConv
from .models import FusedClassifier, FusedLocalizer, FusedModel, FusedSegmenter

__all__ = ["fuse", "FusedConv", "FusedModel", "FusedClassifier", "FusedSegmenter", "FusedLocalizer"]
