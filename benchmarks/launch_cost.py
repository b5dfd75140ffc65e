"""Host work per conv_bn_act call, without a GPU: `python -m benchmarks.launch_cost [--rounds N]`.

What a call costs the CPU before (or instead of) any kernel runs, in microseconds per conv:
  cpu public - op   drn_kernels.conv_bn_act(backend="cpu") minus torch.ops.drn.conv_bn_act_native called
                    directly on the same 1x16x1x1 input (the Python layer: argument checks, backend choice, dispatch)
  triton launch     drn_kernels.conv_bn_act(backend="triton") on CPU tensors (TRITON_INTERPRET=1) with the kernel
                    launch itself replaced by a no-op: checks, backend choice, the custom op's dispatch and the
                    launcher's Python (output allocation, weight view, launch facts, grid)
  fused model       a fused drn_d_22 (backend "triton", launches replaced by no-ops) forward at 1x3x64x64,
                    divided by its number of conv_bn_act calls
each with the per-signature caches (drn_kernels.launch_caches: checks, launch facts, the Triton op import) on, and
off (every call checked and derived in full, as before they existed), alternated round by round in one process;
medians. On a GPU the Triton launcher's own host work (triton's JIT dispatch, ~20-40 us) comes on top of
"triton launch"; CUDA graphs remove all of it (docs/launch-cost.md).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton (and so drn_kernels.triton) is imported

import torch  # noqa: E402

import drn_kernels  # noqa: E402
from drn_kernels import launch_caches  # noqa: E402


@contextlib.contextmanager
def caches(on: bool):
    """The launch path's per-signature caches on (as shipped) or off (drn_kernels.launch_caches.disabled)."""
    with launch_caches.disabled() if not on else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def launches_stubbed():
    """The Triton kernel launch replaced by a no-op (outputs stay uninitialised): only host work remains."""
    from drn_kernels.triton import conv_bn_act as conv_mod

    class Stub:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    real = conv_mod.launcher
    conv_mod.launcher = lambda kernel: Stub()
    try:
        yield
    finally:
        conv_mod.launcher = real


def _per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def measure(rounds: int = 7, calls: int = 2000) -> dict[str, dict[str, float]]:
    """{case: {"cached": us, "uncached": us}} (medians of `rounds` alternated rounds)."""
    import drn

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(16, generator=g)
    cases = {}
    if drn_kernels.available_backends(x.device)["cpu"] is None:
        drn_kernels.conv_bn_act(x, w, b, backend="cpu")  # loads the extension
        native = torch.ops.drn.conv_bn_act_native.default
        cases["cpu public"] = lambda: drn_kernels.conv_bn_act(x, w, b, backend="cpu")
        cases["cpu op"] = lambda: native(x, w, b, [1, 1], [0, 0], [1, 1], None, True)
    xs = torch.randn(1, 16, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    w3 = torch.randn(16, 16, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    cases["triton launch"] = lambda: drn_kernels.conv_bn_act(xs, w3, b, padding=1, backend="triton")
    model = drn.fuse(drn.build("drn_d_22", num_classes=5), backend="triton")
    convs = sum(1 for m in model.modules() if type(m).__name__ == "FusedConv")
    image = torch.randn(1, 3, 64, 64, generator=g)
    cases["fused model"] = lambda: model(image)
    times = {name: {"cached": [], "uncached": []} for name in cases}
    with torch.inference_mode(), launches_stubbed():
        for _ in range(rounds):
            for on in (True, False):
                with caches(on):
                    for name, fn in cases.items():
                        n = max(1, calls // 200) if name == "fused model" else calls
                        fn()
                        us = _per_call_us(fn, n) / (convs if name == "fused model" else 1)
                        times[name]["cached" if on else "uncached"].append(us)
    out = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    if "cpu op" in out:
        out["cpu public - op"] = {k: out["cpu public"][k] - out["cpu op"][k] for k in ("cached", "uncached")}
    out["fused model"]["convs"] = convs
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.launch_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    results = measure(args.rounds, args.calls)
    print(f"host us per conv_bn_act call ({torch.get_num_threads()} thread, medians of {args.rounds} rounds)")
    for name, r in results.items():
        extra = f"  ({r['convs']} convs)" if "convs" in r else ""
        print(f"  {name:<16} cached {r['cached']:7.1f}   uncached {r['uncached']:7.1f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
