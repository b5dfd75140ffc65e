"""End to end: classify (forward) and segment (predict: labels at the input size) per model, dtype and provider.

The CPU goals (docs/performance/cpu.md) are groups here: drn_c_26 / drn_d_22 / drn_d_38 classify at batch 1 and 8 @224
(fused `cpu` fp32 and bf16 vs eager-cl, inductor, onnxruntime and openvino) and drn_d_22 segment predict at
1x3x1024x2048 (fused `cpu` vs eager-cl, inductor, onnxruntime and openvino running the model's predict:
forward, ×8 up-sampling, argmax). Every provider's memory
is in extra_info: "peak_mb", the steady-state peak of one call, and "cache_mb", what its first call leaves
allocated for the next ones (the CPU backend's transformed weights: Winograd keeps 4x the 3x3 weights).
Each case checks one poisoned output (logits; labels and probabilities) against the float64 model first.
The same goal cases, every provider timed interleaved (robust to a shared machine's drift):
test_bench_cpu_goals.py.
"""
import pytest

from benchmarks import common

pytestmark = pytest.mark.build

CASES = [  # (model, task, input shape, quick)
    ("drn_c_26", "classify", (1, 3, 224, 224), True),
    ("drn_d_22", "classify", (1, 3, 224, 224), True),
    ("drn_d_22", "segment", (1, 3, 256, 512), True),
    ("drn_d_22", "segment", (1, 3, 1024, 2048), False),
    ("drn_c_42", "classify", (1, 3, 224, 224), False),
    ("drn_d_38", "classify", (1, 3, 224, 224), False),
    ("drn_c_26", "classify", (8, 3, 224, 224), False),
    ("drn_d_22", "classify", (8, 3, 224, 224), False),
    ("drn_d_38", "classify", (8, 3, 224, 224), False),
    ("drn_d_38", "segment", (1, 3, 1024, 2048), False),
]


def _params():
    for dtype in common.DTYPES:
        for name, task, shape, quick in CASES:
            for provider in common.PROVIDERS:
                sid = "x".join(map(str, shape))
                marks = [pytest.mark.quick] if quick and dtype == common.DTYPES[0] else []  # fp16 GPU, fp32 CPU
                yield pytest.param(name, task, shape, dtype, provider,
                                   id=f"{name}-{task}-{sid}-{common.dtype_name(dtype)}-{provider}", marks=marks)


@pytest.mark.parametrize(("name", "task", "shape", "dtype", "provider"), list(_params()))
def test_model(benchmark, name, task, shape, dtype, provider):
    reason = common.why_unavailable(provider, dtype)
    if reason:
        pytest.skip(reason)
    flops, nbytes = common.model_counts(name, task, shape, dtype)
    sets = common.input_sets(common.model_set_bytes(shape, dtype))
    runner = common.model_runner(provider, name, task, shape, dtype, sets)
    group = f"model:{name}:{task}:{'x'.join(map(str, shape))}:{common.dtype_name(dtype)}"
    def reference():
        return common.group_reference(group, lambda: common.model_reference(name, task, shape, dtype))

    common.run(benchmark, group=group, provider=provider, runner=runner, flops=flops, nbytes=nbytes, dtype=dtype,
               reference=reference,
               memory=provider not in common.EXPORTED,  # their arenas are not torch's
               extra={"model": name, "task": task, "shape": list(shape)})
