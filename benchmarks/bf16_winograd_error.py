"""Why the bfloat16 Winograd convolution runs F(2×2, 3×3) only: each tile size's error, emulated.

The cpu backend's bf16 Winograd (csrc/cpu/winograd/winograd.cpp) computes the transforms in float32 and rounds
V = Bᵀ d B and U = G g Gᵀ to bfloat16, the operands of its `vdpbf16ps` GEMM, which accumulates in float32. This
script emulates that for F(m×n, 3×3) with Toom-Cook matrices built from interpolation points (any m, n, including
rectangular tiles), on DRN-like layers (ReLU inputs, He-initialised weights, bf16-valued), and prints each tile's
max error against the float64 convolution divided by torch's own bfloat16 convolution's error on the same inputs
— the measure the project's kernel tests bound by 4 (tests/tolerance.py: FACTOR) — together with the multiplies
per output it would save.

    python benchmarks/bf16_winograd_error.py [--channels 128 256] [--size 28] [--seeds 2]

Not a benchmark of speed; it runs in float64 on the CPU in seconds.
"""
import argparse
import itertools

import numpy as np
import torch
import torch.nn.functional as F

# (m, points): F(m, 3) from the points (and ∞); those below are the usual choices
TILES_1D = {2: (0, 1, -1), 3: (0, 1, -1, 0.5), 4: (0, 1, -1, 2, -2)}


def toom_cook(m: int, points, r: int = 3):
    """(Aᵀ, G, Bᵀ) of F(m, r) from m + r - 2 finite points and ∞, in float64: y = Aᵀ[(G g) ⊙ (Bᵀ d)] is the
    correlation of d (m + r - 1 samples) with g (r taps). Bᵀ is solved from that identity (exactly determined up to
    rounding; checked)."""
    alpha = m + r - 1
    if len(points) != alpha - 1:
        raise ValueError(f"F({m}, {r}) needs {alpha - 1} finite points, got {len(points)}")
    at = np.zeros((m, alpha))
    g = np.zeros((alpha, r))
    for j, p in enumerate(points):
        at[:, j] = [p ** i for i in range(m)]
        g[j] = [p ** k / np.prod([p - q for q in points if q != p]) for k in range(r)]
    at[m - 1, alpha - 1] = g[alpha - 1, r - 1] = 1.0
    # Σ_j Aᵀ[i, j] G[j, k] Bᵀ[j, l] = [l == i + k] for every i, k, l: linear in Bᵀ
    rows, rhs = [], []
    for i, k, l in itertools.product(range(m), range(r), range(alpha)):
        coef = np.zeros((alpha, alpha))
        coef[:, l] = at[i] * g[:, k]
        rows.append(coef.ravel())
        rhs.append(float(l == i + k))
    sol = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    if np.abs(np.array(rows) @ sol - np.array(rhs)).max() > 1e-9:
        raise ValueError(f"no Bᵀ for F({m}, {r}) with points {points}")
    return (torch.from_numpy(at), torch.from_numpy(g), torch.from_numpy(sol.reshape(alpha, alpha)))


def as_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


def as_f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(t.dtype)


def winograd(x: torch.Tensor, w: torch.Tensor, tile=(2, 2), bf16: bool = True) -> torch.Tensor:
    """conv2d(x, w, padding=1) of x (C, H, W) and w (K, C, 3, 3), both float64, by Winograd F(m×n, 3×3): the
    transforms in float32, V and U rounded to bfloat16 (bf16=True; float64 throughout otherwise), M summed in
    float32, the output rounded to bfloat16 — as the cpu kernel does."""
    (m, n) = tile
    at1, g1, bt1 = toom_cook(m, TILES_1D[m])
    at2, g2, bt2 = toom_cook(n, TILES_1D[n])
    c, h, wd = x.shape
    th, tw = -(-h // m), -(-wd // n)
    xp = F.pad(x, (1, tw * n + 2 - wd - 1, 1, th * m + 2 - h - 1))
    tiles = xp.unfold(1, m + 2, m).unfold(2, n + 2, n)  # (C, th, tw, m + 2, n + 2)
    rnd, acc = (as_bf16, as_f32) if bf16 else (lambda t: t, lambda t: t)
    v = rnd(acc(torch.einsum("ij,cxyjl,ml->cxyim", bt1, tiles, bt2)))
    u = rnd(acc(torch.einsum("ij,kcjl,ml->kcim", g1, w, g2)))
    mm = acc(torch.einsum("cxyim,kcim->kxyim", v, u))
    y = torch.einsum("ij,kxyjl,ml->kxyim", at1, mm, at2)  # (K, th, tw, m, n)
    y = y.permute(0, 1, 3, 2, 4).reshape(w.shape[0], th * m, tw * n)[:, :h, :wd]
    return as_bf16(acc(y)) if bf16 else y


def error_ratio(channels: int, size: int, tile, seed: int) -> float:
    """Max |error| of the emulated bf16 Winograd over torch's bf16 conv's, both against float64."""
    gen = torch.Generator().manual_seed(seed)
    x = as_bf16(torch.randn(channels, size, size, generator=gen, dtype=torch.float64).relu())
    w = as_bf16(torch.randn(channels, channels, 3, 3, generator=gen, dtype=torch.float64) * (2 / (9 * channels)) ** 0.5)
    exact = F.conv2d(x[None], w, padding=1)[0]
    torch_err = (F.conv2d(x[None].bfloat16(), w.bfloat16(), padding=1)[0].double() - exact).abs().max()
    return float((winograd(x, w, tile) - exact).abs().max() / torch_err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print(f"emulated bf16 Winograd on {args.size}x{args.size} maps: max error / torch's bf16 conv's (the kernel tests "
          "allow 4); multiplies per output (direct 9)")
    for tile in [(2, 2), (3, 2), (4, 2), (3, 3), (4, 4)]:
        mults = (tile[0] + 2) * (tile[1] + 2) / (tile[0] * tile[1])
        ratios = [error_ratio(c, args.size, tile, s) for c in args.channels for s in range(args.seeds)]
        print(f"F({tile[0]}x{tile[1]}): {min(ratios):5.2f}-{max(ratios):5.2f}x torch's error, {mults:.2f} multiplies "
              "per output", flush=True)


if __name__ == "__main__":
    main()
