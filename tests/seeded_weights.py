"""Deterministic, well-conditioned weights for any state_dict layout (shared by tests and fixture generation).

Keys are filled in sorted order from one seeded generator, so two models with the same keys and shapes get the
same weights: this is how outputs are compared with numbers recorded from the reference implementation.
"""
import math

import torch


def seeded_state_dict(template: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(template):
        t = template[key]
        if key.endswith("num_batches_tracked"):
            out[key] = t.clone()
            continue
        shape = tuple(t.shape)
        if key.endswith("running_var"):
            v = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
        elif key.endswith("running_mean"):
            v = torch.randn(shape, generator=g, dtype=torch.float64) * 0.1
        elif key.startswith("up.") or key.endswith("up.weight"):
            v = t.double().clone()  # the fixed bilinear up-sampler is not a learned weight
        elif len(shape) == 1 and key.endswith("weight"):  # BN gamma
            v = torch.rand(shape, generator=g, dtype=torch.float64) * 0.5 + 0.5
        elif len(shape) == 1:  # BN beta, conv/fc bias
            v = torch.randn(shape, generator=g, dtype=torch.float64) * 0.1
        else:
            fan_in = math.prod(shape[1:])
            v = torch.randn(shape, generator=g, dtype=torch.float64) * math.sqrt(1.0 / fan_in)
        out[key] = v.to(t.dtype)
    return out


def seeded_input(shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
