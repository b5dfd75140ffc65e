"""One group per distinct conv of DRN-C-26, C-42, D-22 and D-38 (batch 1 and 8, 224x224 and 1024x2048) and dtype,
derived by walking the fused models on the meta device; one test per provider in each group, the baseline first.
16-bit dtypes come first on the GPU (the tensor-core paths). Each case checks one poisoned output against the
float64 reference before it is timed (common.run)."""
import pytest
import torch

from benchmarks import common

pytestmark = pytest.mark.build

SHAPES = common.layer_shapes()
_FIRST_QUICK = next((s.id for s in SHAPES if common.is_quick_layer(s)), None)


def _quick(shape, dtype) -> bool:
    # the quick subset (`make test`, `make bench-quick`): the device's first dtype (fp16 on the GPU, fp32 on the
    # CPU) on every quick shape, bf16 on the first one
    return common.is_quick_layer(shape) and (dtype in (common.DTYPES[0], torch.bfloat16) if shape.id == _FIRST_QUICK
                                             else dtype == common.DTYPES[0])


def _params():
    for dtype in common.DTYPES:
        for shape in SHAPES:
            marks = [pytest.mark.quick] if _quick(shape, dtype) else []
            for provider in common.PROVIDERS:
                yield pytest.param(shape, dtype, provider, id=f"{shape.id}-{common.dtype_name(dtype)}-{provider}",
                                   marks=marks)


@pytest.mark.parametrize(("shape", "dtype", "provider"), list(_params()))
def test_layer(benchmark, shape, dtype, provider):
    reason = common.why_unavailable(provider, dtype)
    if reason:
        pytest.skip(reason)
    count = shape.count(torch.empty((), dtype=dtype).element_size())
    sets = common.input_sets(common.layer_set_bytes(shape, dtype))
    runner = common.layer_runner(provider, shape, dtype, sets)
    group = f"layer:{shape.id}:{common.dtype_name(dtype)}"
    def reference():
        return common.group_reference(group, lambda: common.layer_reference(shape, dtype))

    common.run(benchmark, group=group, provider=provider, runner=runner, flops=count.flops, nbytes=count.bytes,
               dtype=dtype, reference=reference,
               extra={"shape": shape.id, "first_seen": shape.first_seen})
