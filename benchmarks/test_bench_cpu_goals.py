"""The CPU goals (fused fp32 >= 1.5x, fused bf16 >= 2.5x the fastest fp32 peer), timed interleaved: per case, the
fused `cpu` model (fp32 and bf16) and every fp32 peer a CPU user would pick instead (eager channels_last, Inductor
with freezing, ONNX Runtime, OpenVINO) are built side by side, warmed up and checked against the float64 model,
then timed in rounds: each round calls every provider once, the order rotated per round (common.interleaved_times).
A shared VM's speed drifts by up to 2x over minutes (its neighbours; two vCPUs landing on one core): timed one after
another, as test_bench_models.py times them, a provider that ran in a slow minute looks slow; interleaved, the
drift hits every provider alike and the ratios hold.

Records: one per provider, in groups "goal:<model>:<task>:<shape>:<dtype>" (the fp32 peers and fused fp32 in
:float32, fused bf16 in :bfloat16); benchmarks/report.py's cpu_goals prefers them to the model groups. The goals:
fused fp32 >= 1.5x the fastest fp32 peer; fused bf16 >= 2.5x that same peer where the CPU computes bfloat16
natively (AVX512-BF16 or oneDNN's bfloat16 kernels), elsewhere fused bf16 (float32 compute, bfloat16 storage) no
slower than fused fp32 (extra_info bf16_vs_fp32 <= 1.0). CPU only; --benchmark-only only.
"""
import statistics

import pytest
import torch

from benchmarks import common

pytestmark = pytest.mark.build

GOAL_CASES = [  # (model, task, input shape): the cases the CPU goals are judged on
    ("drn_c_26", "classify", (1, 3, 224, 224)),
    ("drn_d_22", "classify", (1, 3, 224, 224)),
    ("drn_d_38", "classify", (1, 3, 224, 224)),
    ("drn_c_26", "classify", (8, 3, 224, 224)),
    ("drn_d_22", "classify", (8, 3, 224, 224)),
    ("drn_d_38", "classify", (8, 3, 224, 224)),
    ("drn_d_22", "segment", (1, 3, 1024, 2048)),
    ("drn_d_38", "segment", (1, 3, 1024, 2048)),
]
PEERS = ("eager-cl", "inductor", "onnxruntime", "openvino")
BUDGET_S = 60.0  # timed seconds per case, in 5..15 rounds
FUSED_BF16 = "cpu-bf16"


@pytest.mark.parametrize(("name", "task", "shape"), GOAL_CASES,
                         ids=[f"{n}-{t}-{'x'.join(map(str, s))}" for n, t, s in GOAL_CASES])
def test_cpu_goal(benchmark, name, task, shape):
    common.require_cpu_timing(benchmark, "benchmarks/test_bench_models.py")
    sid = "x".join(map(str, shape))
    # (provider, dtype) -> runner; the peers that are not installed are left out (and named in extra_info)
    wanted = [(p, torch.float32) for p in PEERS] + [("cpu", torch.float32), ("cpu", torch.bfloat16)]
    missing = {p: common.why_unavailable(p, d) for p, d in wanted if common.why_unavailable(p, d)}
    runners = {(p, d): common.model_runner(p, name, task, shape, d) for p, d in wanted if p not in missing}
    checks = {}
    for dtype in (torch.float32, torch.bfloat16):
        reference = common.model_reference(name, task, shape, dtype)
        for (p, d), runner in runners.items():
            if d == dtype:  # warm-up (Inductor compiles, the fused model chooses its algorithms), then the check
                with torch.no_grad():
                    runner.calls[0]()
                checks[p if d == torch.float32 else FUSED_BF16] = common.check_case(
                    runner, lambda: reference, d, poison=p != "inductor")
        del reference
    calls = {(p if d == torch.float32 else FUSED_BF16): r.calls[0] for (p, d), r in runners.items()}
    compiled = {p: r.compiled for (p, d), r in runners.items() if r.compiled is not None}
    once = sum(common.interleaved_times(calls, 1)[p][0] for p in calls)
    rounds = max(5, min(15, int(BUDGET_S / max(once, 1e-6))))
    before = {p: c.calls for p, c in compiled.items()}
    times = {p: [] for p in calls}
    done = [0]  # rounds so far: pytest-benchmark times whole rounds, one per call

    def one_round():
        for p, ts in common.interleaved_times(calls, 1, first_round=done[0]).items():
            times[p].extend(ts)
        done[0] += 1

    benchmark.group = f"goal-rounds:{name}:{task}:{sid}"
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    for p, c in compiled.items():
        assert c.calls - before[p] >= rounds, f"{p}: the compiled graph did not run in every round"

    medians = {p: statistics.median(ts) for p, ts in times.items()}
    peers = {p: medians[p] for p in PEERS if p in medians}
    fastest = min(peers, key=peers.get) if peers else None
    info = {"model": name, "task": task, "shape": list(shape), "device": common.device_name(),
            "timer": "perf_counter, providers interleaved (order rotated per round)", "rounds": rounds,
            "medians_ms": {p: m * 1e3 for p, m in medians.items()}, "fastest_fp32_peer": fastest,
            "unavailable": missing, "threads": torch.get_num_threads()}
    if fastest is not None:
        info["fp32_ratio"] = peers[fastest] / medians["cpu"]
        if FUSED_BF16 in medians:
            info["bf16_ratio"] = peers[fastest] / medians[FUSED_BF16]
    if FUSED_BF16 in medians and "cpu" in medians:
        info["bf16_vs_fp32"] = medians[FUSED_BF16] / medians["cpu"]  # goal <= 1.0 where bf16 is not native
        info["bf16_native"] = bool(torch.ops.drn.cpu_bf16_gemm() or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    benchmark.extra_info.update(info)
    for p, ts in times.items():
        dtype = "bfloat16" if p == FUSED_BF16 else "float32"
        common.add_result(f"goal:{name}:{task}:{sid}:{dtype}", f"{benchmark.name}[{p}]",
                          "cpu" if p == FUSED_BF16 else p, ts,
                          dict(info, dtype=dtype, baseline=common.BASELINE, output_check=checks.get(p, {})))
