"""Fused bf16 against fused fp32 on this CPU: `python -m benchmarks.bf16_vs_fp32 [ROUNDS]`.

Both models fused from one seeded unfused model, warmed up, then timed in interleaved rounds (the order alternated
each round), medians; each one's error relative to the float64 model's max |logit| printed beside. Where the CPU
has no native bfloat16 the cpu backend computes bf16 in float32 (docs/cpu-backend.md#bfloat16): the goal there is
a ratio <= 1.0. Emulate an AVX2-only CPU with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 DRN_CPU_ISA=avx2;
DRN_CHOICE_CACHE=off makes each model measure its own algorithm choices.
"""
import statistics
import sys
import time

import torch

import drn
import drn_kernels

CASES = [("drn_d_22", (1, 3, 224, 224)), ("drn_c_26", (1, 3, 224, 224)), ("drn_d_38", (1, 3, 224, 224)),
         ("drn_d_22", (8, 3, 224, 224))]


def main(rounds: int = 15) -> None:
    reason = drn_kernels.available_backends("cpu")["cpu"]
    if reason:
        raise SystemExit(f"the cpu backend is unavailable: {reason}")
    print(f"drn isa {torch.ops.drn.cpu_isa()}, bf16 GEMM {torch.ops.drn.cpu_bf16_gemm()}, oneDNN bf16 "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}, ATen {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    for name, shape in CASES:
        torch.manual_seed(0)
        model = drn.build(name)
        fp32, bf16 = drn.fuse(model, backend="cpu"), drn.fuse(model, backend="cpu", dtype=torch.bfloat16)
        x = torch.randn(*shape)
        calls = {"fp32": lambda: fp32(x), "bf16": lambda xb=x.bfloat16(): bf16(xb)}
        with torch.no_grad():
            outs = {k: (c(), c())[1] for k, c in calls.items()}
            exact = model.double()(x.double())
            errors = {k: ((o.double() - exact).abs().max() / exact.abs().max()).item() for k, o in outs.items()}
            times = {k: [] for k in calls}
            names = list(calls)
            for r in range(rounds):
                for k in names[r % 2:] + names[:r % 2]:
                    start = time.perf_counter()
                    calls[k]()
                    times[k].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{name} {'x'.join(map(str, shape))}: fp32 {med['fp32']:.1f} ms, bf16 {med['bf16']:.1f} ms, "
              f"bf16/fp32 {med['bf16'] / med['fp32']:.2f}; error vs float64 fp32 {errors['fp32']:.1e}, "
              f"bf16 {errors['bf16']:.1e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
