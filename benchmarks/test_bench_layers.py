"""One group per distinct conv of DRN-C-26, C-42, D-22 and D-38 (batch 1 and 8, 224x224 and 1024x2048), derived
by walking the fused models on the meta device; one test per provider in each group, the baseline first."""
import pytest

from benchmarks import common

SHAPES = common.layer_shapes()


def _params():
    for shape in SHAPES:
        marks = [pytest.mark.quick] if common.is_quick_layer(shape) else []
        for provider in common.PROVIDERS:
            yield pytest.param(shape, provider, id=f"{shape.id}-{provider}", marks=marks)


@pytest.mark.parametrize(("shape", "provider"), list(_params()))
def test_layer(benchmark, shape, provider):
    reason = common.why_unavailable(provider)
    if reason:
        pytest.skip(reason)
    count = shape.count()
    fn = common.layer_runner(provider, shape)
    common.run(benchmark, group=f"layer:{shape.id}", provider=provider, fn=fn, flops=count.flops,
               nbytes=count.bytes, extra={"shape": shape.id, "first_seen": shape.first_seen})
