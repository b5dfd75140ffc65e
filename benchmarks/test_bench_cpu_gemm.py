"""The cpu backend's own GEMM (csrc/cpu/gemm/) on the Winograd products of DRN layers, on each ISA this CPU has
(DRN_CPU_ISA), against MKL's batched sgemm (torch.bmm, the baseline it replaced) — and as a fraction of the FMA
peak measured in the same case (drn.tools.flops.cpu_fma_peak on the same ISA and threads, the best of 5 runs), the figure
that should reach 85% on every x86 vendor. The peak is measured right before and right after the timed rounds and
the larger kept: on a shared VM a core may be busy during one of the two, and the smaller would flatter the GEMM.
extra_info: fraction_of_peak_best (the best round), roofline (the median round: the report's "% roofline").

Shapes (batch = α² transform points, M = tiles of a chunk, K = input channels, N = output channels), with the
V rows padded as the convolution lays them out (gemm.h: padded_row): F(4x4) of a 1/8-resolution 224x224 map
(49 tiles) at 512/256/128/64 channels, a 113-tile chunk at 512 channels (the chunk size of a 1024x2048 map),
and F(2x2) at 256 channels.
"""
import pytest
import torch

import drn_kernels
from benchmarks import common
from drn_kernels.build import load_testing_library
from drn.tools import flops as flops_model

pytestmark = pytest.mark.build

SHAPES = [  # (batch, M, K, N)
    (36, 49, 512, 512), (36, 113, 512, 512), (36, 49, 256, 256), (36, 196, 128, 128), (36, 784, 64, 64),
    (16, 196, 256, 256)]
ISAS = ("avx512", "avx2")
PROVIDERS = ("mkl-bmm", "drn-gemm")


def _params():
    for isa in ISAS:
        for shape in SHAPES:
            for provider in PROVIDERS:
                marks = [pytest.mark.quick] if shape == SHAPES[0] and isa == "avx2" else []
                yield pytest.param(isa, shape, provider, id=f"{isa}-{'x'.join(map(str, shape))}-{provider}",
                                   marks=marks)


@pytest.mark.parametrize(("isa", "shape", "provider"), list(_params()))
def test_gemm(benchmark, cpu_settings, isa, shape, provider):
    reason = drn_kernels.why_unavailable("cpu", torch.device("cpu"))  # loads the extension
    if reason:
        pytest.skip(f"the compiled extension is unavailable: {reason}")
    load_testing_library()  # torch.ops.drn_testing.gemm_pack_b / gemm_packed
    cpu_settings.set("DRN_CPU_ISA", isa)
    if torch.ops.drn.cpu_isa() != isa:  # DRN_CPU_ISA is capped by what the CPU has
        pytest.skip(f"this CPU has no {isa}")
    batch, m, k, n = shape
    g = torch.Generator().manual_seed(m * k + n)
    a = torch.randn(batch, m, k + 16, generator=g)[..., :k]  # padded rows, as the convolution's V chunk
    b = torch.randn(batch, k, n, generator=g)
    if provider == "drn-gemm":
        packed = torch.ops.drn_testing.gemm_pack_b(b)
        def call():
            return torch.ops.drn_testing.gemm_packed(a, packed, n)
    else:
        a_dense = a.contiguous()
        def call():
            return torch.bmm(a_dense, b)
    out = call()
    exact = torch.bmm(a.double(), b.double())
    check = common.check_output(out, exact, torch.bmm(a.contiguous(), b), torch.float32)  # vs torch's own error
    benchmark.group = f"gemm:{isa}:{'x'.join(map(str, shape))}"
    info = benchmark.extra_info
    flops = 2 * batch * m * k * n
    info.update(provider=provider, baseline="mkl-bmm", isa=isa, flops=flops, threads=torch.get_num_threads(),
                output_check=check, device=common.device_name())
    if getattr(benchmark, "disabled", False):
        benchmark(call)
        return
    peak_before = flops_model.cpu_fma_peak(isa)  # on this ISA and these threads
    benchmark.pedantic(call, rounds=15, iterations=1, warmup_rounds=2)
    peak_after = flops_model.cpu_fma_peak(isa)
    peak = max(peak_before, peak_after)
    best, median = benchmark.stats.stats.min, benchmark.stats.stats.median
    info.update(gflops_best=flops / best / 1e9, gflops_median=flops / median / 1e9, fma_peak_gflops=peak / 1e9,
                fma_peak_before_after_gflops=[peak_before / 1e9, peak_after / 1e9],
                fraction_of_peak_best=flops / best / peak, roofline=flops / median / peak)
    common.RESULTS.append({"group": benchmark.group, "name": benchmark.name, "provider": provider, "stats": {
        "median": benchmark.stats.stats.median, "min": best}, "extra_info": dict(info)})
