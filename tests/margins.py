"""The one test helper for judging labels: where may an argmax legitimately flip on rounding?"""
import torch


def clear_top2(logits: torch.Tensor, margin: float, dim: int = 1) -> torch.Tensor:
    """True where the top-2 logits along `dim` differ by more than `margin` (labels must match exactly there);
    all True when there is a single class."""
    if logits.shape[dim] == 1:
        return torch.ones_like(logits.select(dim, 0), dtype=torch.bool)
    top2 = logits.topk(2, dim=dim).values
    return (top2.select(dim, 0) - top2.select(dim, 1)) > margin
