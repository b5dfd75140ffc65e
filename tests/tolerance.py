"""The one rule for judging a model-level (or otherwise accumulated) result: against float64, within a budget set by
PyTorch's own error on the same computation in the same precision (the FlashAttention rule).

A fixed tolerance between two float32 computations (e.g. fused vs unfused at 1e-4) holds on the CPU it was tuned
on and fails on another: oneDNN and MKL pick other kernels, summation orders and ISAs (AVX-512 vs AVX2) per CPU,
so both results move. Here each result is compared with the exact value (the model run in float64), and

    err(ours) <= FACTOR * max(err(torch), floor)

where err(torch) is the error of PyTorch's own computation in that precision (the unfused model in float32) on
this machine, and `floor` (FLOOR_ULPS float32 ulps, at the result's scale when relative) keeps a near-exact torch
result from making the budget zero; low-precision errors are far above it. Errors are max-abs, relative to the
exact result's max |value| unless `relative=False` (probabilities, which are O(1) already).
"""
from __future__ import annotations

import torch

FACTOR = 4          # ours may be this many times less accurate than torch's own computation
FLOOR_ULPS = 16     # the floor, in float32 eps (times the result's scale when relative)


def error(result: torch.Tensor, exact: torch.Tensor, *, relative: bool = True, mask=None) -> float:
    """max |result - exact| (over `mask`), divided by max |exact| when relative."""
    result, exact = result.double(), exact.double()
    if mask is not None:
        result, exact = result[mask], exact[mask]
    if exact.numel() == 0:
        return 0.0
    err = (result - exact).abs().max().item()
    return err / max(exact.abs().max().item(), 1e-30) if relative else err


def assert_within_torch_error(ours: torch.Tensor, torch_own: torch.Tensor, exact: torch.Tensor, *,
                              relative: bool = True, mask=None, factor: float = FACTOR, what: str = "result"):
    """err(ours) <= factor * max(err(torch_own), floor), both against `exact` (float64)."""
    assert ours.shape == exact.shape == torch_own.shape, (ours.shape, torch_own.shape, exact.shape)
    floor = FLOOR_ULPS * torch.finfo(torch.float32).eps
    ours_err = error(ours, exact, relative=relative, mask=mask)
    torch_err = error(torch_own, exact, relative=relative, mask=mask)
    budget = factor * max(torch_err, floor)
    assert ours_err <= budget, (f"{what}: error {ours_err:.3g} vs float64 exceeds {factor} x max(torch's own "
                                f"{torch_err:.3g}, floor {floor:.3g})")
    return ours_err, torch_err
