"""The one device check (`make gpu-check`): what is worth knowing from a lent GPU, in order of value, inside one
10-minute command.

    python -m benchmarks.device_check [--budget S] [--out DIR] [--dry-run] [--rehearse]

Runs under whatever Python already has torch (no venv, no install). Builds drn_kernels._C for sm_90a (MAX_JOBS =
the machine's cores) in the background from the start; the steps that need it come after the ones that do not.
The plan (docs/gpu-check.md has it with the expected seconds of every step) is a list of steps in order of value,
so a run cut at any point has returned the most valuable numbers so far:

  device          device facts; ceilings: a device-to-device copy (GB/s) and fp16 / bf16 matrix products (TFLOP/s)
  smoke_triton    a smoke subset of the Triton GPU tests (small cases per kernel x dtype, int64 offsets forced),
                  TEST_TIMEOUT_S per test
  head            the 19-class head at 1024x2048: eager up -> log_softmax -> max against class_head(upsample=8,
                  label_dtype=uint8); time, peak memory and the working memory beyond the outputs
  layers_dilated  the 512-channel layers at d = 1, 2, 4 (batch 8 @28x28) x {cudnn, cudnn-fused, triton}
  layers_big      4 layers of DRN-D-38 at 1x1024x2048, same providers
  build           waits for drn_kernels._C (the CUDA provider); the rest of the plan goes on without it if it failed
  smoke_cuda      the CUDA kernels' smoke subset
  cuda_catch_up   the cuda provider on the head and the layers above
  model_drn_c_42  classify batch 8 @224, fp16: eager cuDNN, fused-cuda, fused-triton, both fused ones again as one
                  CUDA graph (launch overhead apart: host time per conv)
  model_drn_d_38  segment predict 1x1024x2048, the same
  sanitizers      compute-sanitizer memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1) over every CUDA kernel and one
                  pinned-config call of each Triton kernel; racecheck and synccheck over the same kernels at
                  1-4 blocks; a machine where the tool cannot run is recorded as such
  layers_rest     the other 9 layers of DRN-C-42 / DRN-D-38 with all four providers
  inductor        the models under Inductor (benchmarks.common's provider: max-autotune without CUDA graphs,
                  freezing), in a subprocess, only with time left

Triton configs come from drn_kernels.triton.config_table (a committed table, else a search capped at
COST["triton_key"] seconds per key: config_table.SEARCH_CAP_S); the winners of this run's searches are written to
triton_configs-<tag>.json so the table can be refreshed from it. Files (at most 8):
device_check-<tag>.{json,md,log,png}, triton_configs-<tag>.json and build-<tag>.log (the compiler's output: ptxas -v,
registers and spills), into $OUT when set, else benchmarks/results/.

The speed goals (per layer >= 1.15x cudnn and >= 1.0x cudnn-fused, dilated layers at the d=1 rate, whole model
>= 1.3x eager, head >= 10x faster and >= 50x less working memory) are reported as ratios, never asserted.

--dry-run does all of it on the CPU with tiny shapes: the Triton interpreter, cuda-sim and the reference backend
stand in for the GPU providers, and the plan is also replayed against the cost model (COST) at the lent GPU's
budget: which steps a 480 s run returns (tests/test_device_check.py asserts it under `make test`). --rehearse
prints only that replay.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

if __name__ == "__main__" and "--dry-run" in sys.argv:
    # the dry run interprets the Triton kernels: TRITON_INTERPRET must be set before triton is imported, which
    # importing drn_kernels (through the harness below) does
    os.environ["TRITON_INTERPRET"] = "1"

from benchmarks.device_report import (GOALS, LAYER_PROVIDERS, SANITIZER_TOOLS, goal_ratios,  # noqa: F401
                                      layer_cases, markdown, model_cases, plot, rehearsal_lines, summary_lines)
from benchmarks.harness import RESULTS_DIR, LayerShape, conv3x3

PROCESS_START = time.monotonic()
ROOT = pathlib.Path(__file__).resolve().parent.parent
GPU_ARCH = "9.0a"        # Hopper only (H100/H200): one arch keeps the build inside the budget
PLAN_ARCH = "sm_90"      # the arch whose committed Triton configs the plan counts on
DEFAULT_BUDGET = 480.0   # seconds: fits a 10-minute command with room for the build and the watchdog
DRY_BUDGET = 300.0       # a cap: the dry run itself takes a minute or two on 2 idle cores
WATCHDOG_GRACE = 20.0    # past the budget, the watchdog writes what there is and exits
MAX_FILES = 8            # what comes back from $OUT


# ---- the fixed layer set ---------------------------------------------------------------------------------------

C42 = "drn_c_42/classify/8x3x224x224"
D38 = "drn_d_38/classify/8x3x224x224"
D38_SEG = "drn_d_38/segment/1x3x1024x2048"
# The 512-channel layers at 28x28, d = 1, 2, 4: "are dilated layers as fast as d=1" needs all three.
DILATED = (
    conv3x3(f"{D38}:layer8.0", 8, 512, 28, 28, 512, 1, 1, False),
    conv3x3(f"{D38}:layer7.0", 8, 512, 28, 28, 512, 1, 2, False),
    conv3x3(f"{C42}:layer6.1.conv1", 8, 512, 28, 28, 512, 1, 4, False),
)
BIG = (
    conv3x3(f"{D38_SEG}:base.6.1.conv1", 1, 512, 128, 256, 512, 1, 4, False),
    conv3x3(f"{D38_SEG}:base.5.0.conv2", 1, 256, 128, 256, 256, 1, 2, True),
    conv3x3(f"{D38_SEG}:base.3.0.conv2", 1, 64, 256, 512, 64, 1, 1, True),
    conv3x3(f"{D38_SEG}:base.1.0", 1, 16, 1024, 2048, 16, 1, 1, False),
)
REST = (
    conv3x3(f"{C42}:layer6.0.conv2", 8, 512, 28, 28, 512, 1, 4, True),
    conv3x3(f"{C42}:layer5.0.conv2", 8, 256, 28, 28, 256, 1, 2, True),
    conv3x3(f"{C42}:layer4.0.conv2", 8, 128, 28, 28, 128, 1, 1, True),
    conv3x3(f"{C42}:layer6.0.conv1", 8, 256, 28, 28, 512, 1, 4, False),
    conv3x3(f"{C42}:layer5.0.conv1", 8, 128, 28, 28, 256, 1, 2, False),
    conv3x3(f"{C42}:layer4.0.conv1", 8, 64, 56, 56, 128, 2, 1, False),
    conv3x3(f"{C42}:layer3.0.conv2", 8, 64, 56, 56, 64, 1, 1, True),
    conv3x3(f"{C42}:layer2.0.conv2", 8, 32, 112, 112, 32, 1, 1, True),
    conv3x3(f"{C42}:layer1.0.conv2", 8, 16, 224, 224, 16, 1, 1, True),
)
LAYER_GROUPS = {"layers_dilated": DILATED, "layers_big": BIG, "layers_rest": REST}
LAYERS = DILATED + BIG + REST  # tests/test_device_check.py checks every row against the models' own layer list
# the dry run: a few of each group, shrunk (same stride, dilation and residual) so the interpreter and cuda-sim
# are quick
DRY_GROUPS = {"layers_dilated": DILATED, "layers_big": BIG[1:2], "layers_rest": REST[5:6]}


def dry_layer(layer: LayerShape) -> LayerShape:
    return conv3x3(layer.first_seen, 1, max(4, layer.c // 64), 11, 13, max(4, layer.k // 64), layer.stride,
                   layer.dilation, layer.residual)


MODELS = (("drn_c_42", "classify", (8, 3, 224, 224)), ("drn_d_38", "segment", (1, 3, 1024, 2048)))
DRY_MODELS = (("drn_c_42", "classify", (2, 3, 24, 24)), ("drn_d_38", "segment", (1, 3, 32, 48)))
HEAD = (1, 512, 128, 256, 19)      # features (N, C, h, w) of drn_d_38 at 1024x2048, 19 classes
DRY_HEAD = (1, 8, 6, 5, 19)

# GPU providers and what stands in for each on the CPU (--dry-run); the names benchmarks.common.layer_runner knows
STAND_INS = {"cudnn": "eager conv->BN->ReLU on the CPU", "cudnn-fused": "backend 'reference' (folded weights)",
             "triton": "the Triton interpreter", "cuda": "backend 'cuda-sim' (the CUDA sources on the host)"}
RUNNER_NAME = {"cudnn": "cudnn", "cudnn-fused": "cudnn-fused", "triton": "triton", "cuda": "cuda"}
DRY_RUNNER_NAME = {"cudnn": "eager-cl", "cudnn-fused": "reference", "triton": "triton", "cuda": "cuda-sim"}
KERNEL_BACKEND = {"triton": "triton", "cuda": "cuda"}
DRY_KERNEL_BACKEND = {"triton": "triton", "cuda": "cuda-sim", "reference": "reference"}

# The smoke subset of the GPU tests: (files, -k expression). Triton's first: it needs no build.
SMOKE = {
    "triton": (["tests/test_triton_conv_bn_act.py", "tests/test_triton_class_head.py",
                "tests/test_triton_config_table.py"],
               "(test_parity_gpu and odd and res_relu) or (test_parity_gpu and stem7_s2 and plain) or "
               "test_forced_int64_gpu or (test_class_head_parity_gpu and (K7_up8 or K1000_up1)) or "
               "test_localize_parity_gpu or test_conv_through_the_table_gpu"),
    "cuda": (["tests/test_cuda_gpu.py"],
             "(test_conv_bn_act and (odd or stem7x7_s2)) or (test_class_head and up1) or test_localize or nchw"),
}
TEST_TIMEOUT_S = 20.0


# ---- the cost model ------------------------------------------------------------------------------------------------

# Expected seconds on one H100 / H200 (estimates from the sizes involved until a run measures them: the run's
# JSON records every step's measured seconds beside these; docs/gpu-check.md explains each). The plan's order
# and each step's cap (SLACK x expected) come from this table, and the dry run replays the plan against it.
COST = {
    "startup": 20.0,          # interpreter, import torch / triton / drn, the CUDA context
    "build": 150.0,           # drn_kernels._C, CPU + CUDA for sm_90a, MAX_JOBS = 16, in the background
    "device": 8.0,            # facts, a 2 GiB copy, two 8192^3 products
    "smoke_triton": 45.0,     # pytest start-up + ~20 tests, each compiling its kernels
    "smoke_cuda": 25.0,       # ~18 tests, no compilation
    "triton_key": 3.0,        # one key the table lacks: the capped search (config_table.SEARCH_CAP_S)
    "triton_known": 1.5,      # one key the table has: compile its one config
    "layer_provider": 1.2,    # one layer x one provider: first call, poisoned call vs float64, do_bench
    "head_provider": 2.0,     # one head provider: the same, and peak memory
    "model_provider": 4.0,    # one model x provider: first call (cuDNN's search), check, 300 ms timing, memory
    "model_graph": 3.0,       # capturing one model as a CUDA graph, its check and timing
    "memcheck": 45.0,         # compute-sanitizer memcheck over the payload (every kernel, Triton compiled)
    "racecheck": 30.0,
    "synccheck": 20.0,
    "inductor_model": 180.0,  # one model under Inductor max-autotune: mostly compilation
}
SLACK = 1.5      # a step may run to SLACK x its expected seconds (+ STEP_GRACE) before it is cut
STEP_GRACE = 5.0
START_FLOOR = 10.0  # a step starts only with this much budget left (or enough for all of it)
# what the lent window must return: tests/test_device_check.py asserts a 480 s replay does
MUST_RETURN = ("head", "layers_dilated", "layers_big", "build", "cuda_catch_up", "model_drn_c_42",
               "model_drn_d_38")


def size_bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def triton_key(layer: LayerShape) -> tuple:
    """What sets a Triton conv's tuning apart (its autotune key and flags, as far as the shape decides them)."""
    p, q = layer.out_hw
    return (layer.c, layer.k, layer.r, layer.s, layer.stride, layer.dilation, size_bucket(layer.n * p * q),
            layer.residual, layer.relu)


def key_cost(keys, cost: dict, arch: str = PLAN_ARCH) -> float:
    """Seconds Triton's first calls of these conv keys take: compile only where the committed table has the key
    for this arch, else the capped search."""
    from drn_kernels.triton import tuned_configs

    known = {(r["key"].get("C"), r["key"].get("K"), r["key"].get("R"), r["key"].get("S"), r["key"].get("stride_h"),
              r["key"].get("dil_h"), r["key"].get("M_BUCKET"), r["key"].get("HAS_RES"), r["key"].get("RELU"))
             for r in tuned_configs.TABLE if r["kernel"] == "conv_bn_act" and r["arch"] == arch
             and r["dtype"] == "float16"}
    return sum(cost["triton_known"] if k in known else cost["triton_key"] for k in keys)


@functools.lru_cache(maxsize=None)
def model_layers(name: str, task: str, shape: tuple) -> tuple[LayerShape, ...]:
    """The conv_bn_act calls of the fused model (drn.tools.flops' walk of a meta-device model: no weights, no time)."""
    import torch

    from drn.tools.flops import count_layers
    from drn.tools.profile import build_meta_model

    meta = build_meta_model(name, task, 19 if task == "segment" else None, fused=True)
    out = []
    for row in count_layers(meta, tuple(shape), torch.float32):
        if row.kind != "conv" or row.name in ("seg", "up"):
            continue
        out.append(LayerShape(row.in_shape[0], row.in_shape[1], row.in_shape[2], row.in_shape[3], row.out_shape[1],
                              row.kernel[0], row.kernel[1], row.stride[0], row.padding[0], row.dilation[0],
                              row.residual, row.relu, f"{name}:{row.name}"))
    return tuple(out)


# ---- the plan ------------------------------------------------------------------------------------------------------

@dataclass
class Step:
    key: str
    title: str
    body: Callable            # body(run, rec, deadline)
    expected_s: float         # from COST (the build step: until the build is expected to be done)
    needs_build: bool = False  # skipped when the build failed
    detail: dict = field(default_factory=dict)


def plan(dry: bool, cost: dict = COST, *, inductor: bool = True) -> list[Step]:
    """The steps in order of value, each with its expected seconds on the lent GPU."""
    groups = DRY_GROUPS if dry else LAYER_GROUPS
    seen: set = set()

    def new_keys(layers):
        keys = [triton_key(layer) for layer in layers if triton_key(layer) not in seen]
        seen.update(keys)
        return list(dict.fromkeys(keys))

    def layers_cost(layers, providers):
        return len(layers) * len(providers) * cost["layer_provider"] + (
            key_cost(new_keys(layers), cost) if "triton" in providers else 0.0)

    early = ("cudnn", "cudnn-fused", "triton")
    steps = [
        Step("device", "device facts and ceilings", step_device, cost["device"]),
        Step("smoke_triton", "GPU tests, Triton smoke subset", lambda r, rec, d: step_smoke(r, rec, d, "triton"),
             cost["smoke_triton"]),
        Step("head", "segmentation head, 19 classes at 1024x2048", lambda r, rec, d: step_head(r, rec, d, early[2:]),
             3 * cost["head_provider"] + 2 * cost["triton_key"]),
        Step("layers_dilated", "512-channel layers at d = 1, 2, 4",
             lambda r, rec, d: step_layers(r, rec, d, "layers_dilated", early),
             layers_cost(groups["layers_dilated"], early)),
        Step("layers_big", "DRN-D-38 layers at 1x1024x2048", lambda r, rec, d: step_layers(r, rec, d, "layers_big",
                                                                                          early),
             layers_cost(groups["layers_big"], early)),
        Step("build", "drn_kernels._C (the CUDA provider)", step_build, cost["startup"] + cost["build"]),
        Step("smoke_cuda", "GPU tests, CUDA smoke subset", lambda r, rec, d: step_smoke(r, rec, d, "cuda"),
             cost["smoke_cuda"], needs_build=True),
        Step("cuda_catch_up", "the cuda provider on the head and the layers above", step_cuda_catch_up,
             (1 + len(groups["layers_dilated"]) + len(groups["layers_big"])) * cost["layer_provider"],
             needs_build=True),
    ]
    for name, task, shape in (DRY_MODELS if dry else MODELS):
        keys = new_keys(model_layers(name, task, shape)) if not dry else []
        steps.append(Step(f"model_{name}", f"{name} {task} {'x'.join(map(str, shape))}",
                          lambda r, rec, d, m=(name, task, shape): step_model(r, rec, d, *m),
                          3 * cost["model_provider"] + 2 * cost["model_graph"] + key_cost(keys, cost),
                          detail={"new_triton_keys": len(keys)}))
    steps += [
        Step("sanitizers", "compute-sanitizer memcheck, racecheck, synccheck", step_sanitizers,
             cost["memcheck"] + cost["racecheck"] + cost["synccheck"], needs_build=True),
        Step("layers_rest", "the other layers of DRN-C-42", lambda r, rec, d: step_layers(r, rec, d, "layers_rest",
                                                                                        LAYER_PROVIDERS),
             layers_cost(groups["layers_rest"], LAYER_PROVIDERS)),
    ]
    if inductor:
        steps.append(Step("inductor", "whole models under Inductor", step_inductor,
                          len(MODELS) * cost["inductor_model"]))
    return steps


# ---- the driver: one policy for the run and for its rehearsal -------------------------------------------------------

class BudgetExhausted(Exception):
    """Raised inside a step when its deadline has passed; the step is recorded as cut, its data kept."""


class Budget:
    """A wall-clock budget counted from `start` on `clock` (time.monotonic, or the rehearsal's virtual clock)."""

    def __init__(self, seconds: float, start: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.seconds = float(seconds)
        self.start = clock() if start is None else start
        self.end = self.start + self.seconds

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self, until: float | None = None) -> float:
        return (self.end if until is None else until) - self.clock()


def check_deadline(deadline: float, what: str = ""):
    if time.monotonic() > deadline:
        raise BudgetExhausted(f"budget spent{' before ' + what if what else ''}")


def step_window(step: Step, budget: Budget, capped: bool) -> tuple[str | None, float]:
    """(why the step is skipped or None, its deadline): it starts with START_FLOOR seconds left or enough for all
    of it, and may run to SLACK x its expected seconds (capped runs; the dry run's CPU stand-ins are not the GPU's
    speed, so there only the budget caps a step; the build step: see below)."""
    left = budget.left()
    if left < min(step.expected_s, START_FLOOR) or left <= 0:
        return f"budget: {left:.0f} s left, the step expects {step.expected_s:.0f}", 0.0
    # the build is waited for up to --build-timeout (step_build), not cut at its estimate: killing it would lose
    # the CUDA provider for the rest of the run
    allowed = min(left, SLACK * step.expected_s + STEP_GRACE) if capped and step.key != "build" else left
    return None, budget.clock() + allowed


class VirtualClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def rehearse(budget: float = DEFAULT_BUDGET, cost: dict = COST, *, factor: float = 1.0,
             build_ok: bool = True, steps: list[Step] | None = None) -> list[dict]:
    """The plan replayed on a virtual clock: each step takes factor x its expected seconds (the build step: until
    the background build is done), cut at its window's deadline. [{key, status, start_s, end_s}] in order."""
    clock = VirtualClock(0.0)
    b = Budget(budget, start=0.0, clock=clock)
    clock.t = cost["startup"]
    build_done_at = cost["startup"] + cost["build"] * factor
    out = []
    for step in steps if steps is not None else plan(False, cost):
        if step.needs_build and not build_ok:
            out.append({"key": step.key, "status": "skipped", "reason": "build failed"})
            continue
        why, deadline = step_window(step, b, capped=True)
        if why:
            out.append({"key": step.key, "status": "skipped", "reason": why})
            continue
        start = clock.t
        want = max(0.0, build_done_at - start) if step.key == "build" else step.expected_s * factor
        clock.t = min(start + want, deadline)
        out.append({"key": step.key, "status": "done" if start + want <= deadline else "cut",
                    "start_s": round(start, 1), "end_s": round(clock.t, 1)})
    return out



# ---- the run's state: results, files, log -----------------------------------------------------------------------

class Run:
    def __init__(self, args, out_dir: pathlib.Path, tag: str):
        self.args = args
        self.dry = args.dry_run
        self.budget = Budget(args.budget, start=PROCESS_START)
        self.out_dir = out_dir
        self.tag = tag
        self.lock = threading.RLock()
        self.log_lines: list[str] = []
        self.results = {"schema": "drn-kernels device check 2", "dry_run": self.dry, "budget_s": args.budget,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "env": {},
                        "cost_model": COST, "build": {"status": "not started"}, "steps": {}, "goals": {}}
        self.device = None
        self.dtype = None
        self.build = None  # (process, log file, start) while the background build runs

    def path(self, ext: str, stem: str = "device_check") -> pathlib.Path:
        return self.out_dir / f"{stem}-{self.tag}.{ext}"

    def log(self, text: str, echo: bool = True):
        with self.lock:
            self.log_lines.append(text)
        if echo:
            print(text, flush=True)

    def write(self, png: bool = False):
        """JSON + Markdown + log + the Triton winners now (cheap, after every case); the PNG at the end of a step."""
        with self.lock:
            self.results["elapsed_s"] = round(self.budget.elapsed(), 2)
            self.results["goals"] = goal_ratios(self.results)
            for _ in range(3):  # another thread may be adding to the dicts (the watchdog writes from its own)
                try:
                    text = json.dumps(self.results, indent=1, default=str)
                    break
                except RuntimeError:
                    time.sleep(0.01)
            else:
                return
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.path("json").write_text(text)
            self.path("md").write_text(markdown(self.results))
            self.path("log").write_text("\n".join(self.log_lines) + "\n")
            write_triton_winners(self)
            if png:
                try:
                    plot(self.results, self.path("png"))
                except Exception as e:  # noqa: BLE001 - matplotlib missing or broken: the data is in the JSON
                    self.log(f"device_check: no PNG ({type(e).__name__}: {e})")


def write_triton_winners(run: Run):
    """triton_configs-<tag>.json: the configs this run's capped searches chose (rows for tuned_configs.TABLE)."""
    if "drn_kernels.triton.config_table" not in sys.modules:
        return
    from drn_kernels.triton import config_table

    if config_table.MEASURED or run.path("json", "triton_configs").exists():
        config_table.write_measured(run.path("json", "triton_configs"))


def run_step(run: Run, step: Step):
    """Run one step in its window; record done / cut / skipped / failed and its seconds; write the files."""
    rec = {"title": step.title, "expected_s": round(step.expected_s, 1), **step.detail}
    run.results["steps"][step.key] = rec
    if run.args.only and step.key not in run.args.only:
        rec.update(status="skipped", reason="not selected (--only)")
        return rec
    if step.needs_build and run.results["build"].get("status") not in ("done", "running"):
        rec.update(status="skipped", reason=f"the build: {run.results['build'].get('status')}")
        run.log(f"== step {step.key}: skipped ({rec['reason']})")
        return rec
    if run.dry and step.key == "inductor":
        rec.update(status="skipped", reason="dry run: Inductor's max-autotune would compile for minutes on the CPU")
        return rec
    if step.key == "build":
        step.expected_s = max(1.0, PROCESS_START + COST["startup"] + COST["build"] - time.monotonic())
    why, deadline = step_window(step, run.budget, capped=not run.dry)
    if why:
        rec.update(status="skipped", reason=why)
        run.log(f"== step {step.key}: skipped ({why})")
        run.write()
        return rec
    rec.update(status="running", started_s=round(run.budget.elapsed(), 1),
               allowance_s=round(deadline - time.monotonic(), 1))
    run.log(f"== step {step.key} ({step.title}): expected {step.expected_s:.0f} s, {rec['allowance_s']:.0f} s "
            f"allowed, {run.budget.left():.0f} s of the budget left")
    t0 = time.monotonic()
    try:
        step.body(run, rec, deadline)
        rec["status"] = "cut" if rec.get("cut") else "done"
    except BudgetExhausted as e:
        rec.update(status="cut", cut=str(e))
    except Exception as e:  # noqa: BLE001 - a broken step must not cost the later ones
        rec.update(status="failed", error=f"{type(e).__name__}: {e}")
        run.log(traceback.format_exc())
    rec["seconds"] = round(time.monotonic() - t0, 1)
    run.log(f"== step {step.key}: {rec['status']} in {rec['seconds']:.0f} s (expected {step.expected_s:.0f})")
    run.write(png=True)
    return rec


# -- build ------------------------------------------------------------------------------------------------------------

def start_build(run: Run):
    """python -m drn_kernels.build in the background (sm_90a, MAX_JOBS = cores on a GPU; the cached build as it
    is in the dry run). The main process then only loads what it built (DRN_NO_JIT_BUILD=1)."""
    env = dict(os.environ)
    if not run.dry:
        env["TORCH_CUDA_ARCH_LIST"] = GPU_ARCH
        env["MAX_JOBS"] = str(os.cpu_count() or 1)
        os.environ["TORCH_CUDA_ARCH_LIST"] = GPU_ARCH  # the same flags when the main process loads it
    cmd = [sys.executable, "-m", "drn_kernels.build", "--quiet"]
    run.results["build"] = {"status": "running", "command": " ".join(cmd[1:]),
                            "arch": env.get("TORCH_CUDA_ARCH_LIST", "(default)"), "max_jobs": env.get("MAX_JOBS")}
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - read back in step_build
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from drn_kernels import build

    build.forbid_jit_build()  # this process only loads what the build makes
    CHILD_ENV["DRN_NO_JIT_BUILD"] = "1"  # and so do the subprocesses it starts (pytest, the sanitizer, Inductor)
    run.build = (proc, log, time.monotonic())


def step_build(run: Run, rec: dict, deadline: float):
    """Wait for the background build (within the step's window and --build-timeout); copy the compiler's output
    (build.log: ptxas -v, registers and spills per kernel) next to the results."""
    if run.build is None:
        rec["note"] = run.results["build"]["status"]
        return
    proc, log, t0 = run.build
    b = run.results["build"]
    timeout = min(run.args.build_timeout - (time.monotonic() - t0), deadline - time.monotonic())
    try:
        rc = proc.wait(timeout=max(0.0, timeout))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc = None
    run.build = None
    b["seconds"] = round(time.monotonic() - t0, 1)
    log.seek(0)
    text = log.read()
    log.close()
    run.log("-- build output (tail):\n" + "\n".join(text.strip().splitlines()[-15:]), echo=False)
    if rc == 0:
        b["status"] = "done"
        run.log(f"build: drn_kernels._C built in {b['seconds']:.0f} s ({b['arch']}, MAX_JOBS={b['max_jobs']})")
    else:
        b["status"] = "timeout" if rc is None else "failed"
        b["error"] = "\n".join(text.strip().splitlines()[-6:])
        run.log(f"build: FAILED ({b['status']}, {b['seconds']:.0f} s): going on with Triton only; "
                f"the CUDA provider is skipped\n{b['error']}")
    b["cuda_backend"] = why_unavailable("cuda-sim" if run.dry else "cuda", run.device) or "available"
    b["build_log"] = copy_build_log(run)


def copy_build_log(run: Run) -> str | None:
    """The build folder's build.log (the compiler's output of the last compile) as build-<tag>.log."""
    try:
        from drn_kernels import build

        src = pathlib.Path(build.log_path())
    except Exception as e:  # noqa: BLE001 - no build folder: nothing to copy
        return f"not copied ({type(e).__name__}: {e})"
    if not src.exists():
        return f"not copied ({src} does not exist: the build was cached)"
    shutil.copyfile(src, run.path("log", "build"))
    return run.path("log", "build").name


def why_unavailable(backend: str, device) -> str | None:
    """None when drn_kernels' `backend` runs on `device` now, else why (asks about that backend alone, so the
    dry run never builds drn_kernels._C for a provider it does not use)."""
    import drn_kernels

    return drn_kernels.why_unavailable(backend, device)


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


CHILD_ENV: dict[str, str] = {}  # settings for the subprocesses, on top of this process's environment


def run_capped(cmd, *, timeout: float, env=None):
    """(returncode or None when cut at `timeout`, combined output) of a subprocess and all its children."""
    env = {**(env if env is not None else os.environ), **CHILD_ENV}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        return None, out or ""


# -- device ---------------------------------------------------------------------------------------------------------

def step_device(run: Run, rec: dict, deadline: float):
    import torch

    from benchmarks.harness import median_seconds

    dev = run.device
    facts = {}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        facts.update(name=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                     memory_gib=round(props.total_memory / 2**30, 1),
                     l2_mb=round(getattr(props, "L2_cache_size", 0) / 1e6, 1), cudnn=torch.backends.cudnn.version())
        smi = shutil.which("nvidia-smi")
        if smi:
            code, out = run_capped([smi, "--query-gpu=driver_version,clocks.sm,clocks.max.sm,clocks.mem,"
                                    "temperature.gpu,power.draw", "--format=csv,noheader"], timeout=15)
            facts["nvidia_smi"] = out.strip() if code == 0 else f"failed: {out.strip()[-200:]}"
        copy_elems, n_mm = 2**30, 8192  # 2 GiB of fp16 copied; 8192^3 products
    else:
        facts.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
        copy_elems, n_mm = 2**23, 256
    rec["facts"] = facts
    run.log(f"device: {facts}")
    ceilings = {}
    src = torch.randn(copy_elems, device=dev, dtype=torch.float16)
    dst = torch.empty_like(src)
    t = median_seconds(lambda: dst.copy_(src), dev)
    ceilings["copy_gb_per_s"] = 2 * src.numel() * src.element_size() / t / 1e9
    del src, dst
    for dtype in (torch.float16, torch.bfloat16):
        check_deadline(deadline, "the matrix products")
        a = torch.randn(n_mm, n_mm, device=dev, dtype=dtype)
        b = torch.randn(n_mm, n_mm, device=dev, dtype=dtype)
        t = median_seconds(lambda: a @ b, dev)
        ceilings[f"matmul_{str(dtype)[6:]}_tflops"] = 2 * n_mm**3 / t / 1e12
        del a, b
    rec["ceilings"] = {k: float(f"{v:.4g}") for k, v in ceilings.items()}
    rec["sizes"] = {"copy_bytes": copy_elems * 2, "matmul_n": n_mm}
    run.log(f"ceilings: {rec['ceilings']}")


# -- GPU-test smoke subsets -----------------------------------------------------------------------------------------

PYTEST_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def step_smoke(run: Run, rec: dict, deadline: float, which: str):
    """One smoke subset of the @gpu tests in a subprocess (partial counts survive a cut), TEST_TIMEOUT_S per test
    (benchmarks/pytest_test_timeout.py: a GPU machine's own Python may lack pytest-timeout)."""
    files, expr = SMOKE[which]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-k", expr, "-v", "-p", "no:cacheprovider",
           "-p", "benchmarks.pytest_test_timeout", f"--per-test-timeout={TEST_TIMEOUT_S:g}", "-rfE", *files]
    code, out = run_capped(cmd, timeout=deadline - time.monotonic())
    counts: dict[str, int] = {}
    failed = []
    for line in out.splitlines():
        m = PYTEST_LINE.match(line.strip())
        if m:
            counts[m.group(2)] = counts.get(m.group(2), 0) + 1
            if m.group(2) in ("FAILED", "ERROR"):
                failed.append(m.group(1))
    hung = [ln.split()[2] for ln in out.splitlines() if ln.startswith("TIMEOUT (hung)")]
    tail = out.strip().splitlines()[-3:]
    rec["pytest"] = {"command": " ".join(cmd[1:]), "returncode": code, "cut": code is None, "counts": counts,
                     "failed": failed[:30], "hung": hung, "summary": tail[-1] if tail else ""}
    if code is None:
        rec["cut"] = "pytest cut at the step's deadline"
    run.log(f"-- pytest smoke ({which}) output:\n" + out[-20000:], echo=False)
    run.log(f"smoke {which}: {counts or 'no test ran'}{' (cut)' if code is None else ''}"
            f"{'; failed: ' + ', '.join(failed[:5]) if failed else ''}{'; hung: ' + hung[0] if hung else ''}")


# -- the segmentation head --------------------------------------------------------------------------------------------

def _head_inputs(run: Run):
    import torch

    from drn_kernels import reference

    dev, dtype = run.device, run.dtype
    n, c, h, w, k = DRY_HEAD if run.dry else HEAD
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, c, h, w, generator=g).to(dev, dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(k, c, 1, 1, generator=g) / math.sqrt(c) * 4).to(dev, dtype)
    bias = (torch.randn(k, generator=g) * 0.1).to(dev, dtype)
    ref_labels, _ = reference.class_head(x.double(), weight.double(), bias.double(), 8)
    return x, weight, bias, ref_labels


def head_runners(run: Run, x, weight, bias, providers) -> dict:
    import torch
    import torch.nn.functional as F

    import drn_kernels
    from drn_kernels import reference

    k = weight.shape[0]
    up = reference.bilinear_up_weight(k, dtype=x.dtype, device=x.device)

    def eager():  # DRNSeg.predict's head: 1x1 conv, bilinear ConvTranspose2d x8, log_softmax, max
        logits = F.conv_transpose2d(F.conv2d(x, weight, bias), up, stride=8, padding=4, groups=k)
        best, labels = F.log_softmax(logits, dim=1).max(dim=1)
        return labels, best.float().exp()

    backends = DRY_KERNEL_BACKEND if run.dry else KERNEL_BACKEND
    out = {}
    for provider in providers:
        if provider == "eager":
            out["eager"] = eager
            continue
        be = backends[provider]
        out[f"fused-{provider}"] = why_unavailable(be, x.device) or (
            lambda be=be: drn_kernels.class_head(x, weight, bias, upsample=8, label_dtype=torch.uint8, backend=be))
    return out


def step_head(run: Run, rec: dict, deadline: float, kernels=("triton",)):
    """Eager then the fused head (one-byte labels): time, the peak memory of a call, and its working memory
    beyond the outputs it returns (what a fused kernel can save; the outputs any head must return)."""
    x, weight, bias, ref_labels = _head_inputs(run)
    n, c, h, w = x.shape
    rec.setdefault("shape", {"n": n, "c": c, "h": h, "w": w, "classes": weight.shape[0], "out": [h * 8, w * 8],
                             "fused_label_dtype": "uint8", "eager_label_dtype": "int64"})
    rec.setdefault("providers", {})
    providers = ("eager",) + tuple(kernels) if "eager" not in rec["providers"] else tuple(kernels)
    measure_head(run, rec, head_runners(run, x, weight, bias, providers), ref_labels, deadline)


def measure_head(run: Run, rec: dict, runners: dict, ref_labels, deadline: float):
    import torch

    from benchmarks.harness import median_seconds, memory_bytes, poisoned_outputs, tensors_bytes, timed_first_call

    dev = run.device
    for provider, fn in runners.items():
        check_deadline(deadline, f"head {provider}")
        entry = rec["providers"][provider] = {}
        if isinstance(fn, str):
            entry["skipped"] = fn
            continue
        try:
            with torch.inference_mode():
                _, first = timed_first_call(fn, dev)
                with poisoned_outputs():
                    labels, probs = fn()
                entry.update(first_call_s=round(first, 3), label_dtype=str(labels.dtype)[6:],
                             label_agreement=(labels.long().cpu() == ref_labels.cpu()).double().mean().item(),
                             probs_finite=bool(torch.isfinite(probs).all()))
                del labels, probs
                entry["median_ms"] = median_seconds(fn, dev) * 1e3
                if dev.type == "cuda":
                    peak, outputs = memory_bytes(fn, dev, keep=tensors_bytes)
                    entry.update(peak_mb=peak / 2**20, outputs_mb=outputs / 2**20,
                                 working_mb=(peak - outputs) / 2**20)
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        run.log(f"  head {provider}: {entry}")
        run.write()
    eager = rec["providers"].get("eager", {})
    for provider, entry in rec["providers"].items():
        if provider != "eager" and entry.get("median_ms") and eager.get("median_ms"):
            entry["speedup"] = eager["median_ms"] / entry["median_ms"]
            if entry.get("working_mb") and eager.get("working_mb"):
                entry["working_memory_ratio"] = eager["working_mb"] / entry["working_mb"]
                entry["peak_memory_ratio"] = eager["peak_mb"] / entry["peak_mb"]


# -- layers ------------------------------------------------------------------------------------------------------------

def run_layers(run: Run, group: str) -> list[LayerShape]:
    return [dry_layer(layer) for layer in DRY_GROUPS[group]] if run.dry else list(LAYER_GROUPS[group])


def step_layers(run: Run, rec: dict, deadline: float, group: str, providers):
    rec.update(dtype=str(run.dtype)[6:], providers={p: (STAND_INS[p] if run.dry else p) for p in providers},
               cases=[])
    for layer in run_layers(run, group):
        check_deadline(deadline, f"layer {layer.id}")
        case = {"layer": layer.id, "source": layer.first_seen, "providers": {}}
        rec["cases"].append(case)
        measure_layer(run, case, layer, providers, deadline)


def measure_layer(run: Run, case: dict, layer: LayerShape, providers, deadline: float):
    """Each provider on the layer (benchmarks.common's runners and reference: the pytest suites time the same):
    first call, one poisoned call against float64, the median over rotating input sets; into case["providers"]."""
    import torch

    from benchmarks import common
    from benchmarks.harness import (Rotation, input_sets, median_seconds, poisoned_outputs, relative_error,
                                    timed_first_call)

    dev, dtype = run.device, run.dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    counts = layer.count(itemsize)
    case.update(flops=counts.flops, min_bytes=counts.bytes)
    sets = input_sets(common.layer_set_bytes(layer, dtype), dev)
    case["input_sets"] = sets
    ref = common.layer_reference(layer, dtype)[0]  # float64, on input set 0
    names = DRY_RUNNER_NAME if run.dry else RUNNER_NAME
    ceilings = run.results["steps"].get("device", {}).get("ceilings", {})
    peak_flops, peak_bw = ceilings.get("matmul_float16_tflops"), ceilings.get("copy_gb_per_s")
    for provider in providers:
        check_deadline(deadline, f"{provider} on {layer.id}")
        entry = case["providers"][provider] = {}
        backend = names[provider]
        if backend not in ("cudnn", "cudnn-fused", "eager-cl"):
            reason = why_unavailable(backend, dev)
            if reason is not None:
                entry["skipped"] = reason
                continue
        try:
            chosen = _triton_choices()
            with torch.inference_mode():
                runner = common.layer_runner(backend, layer, dtype, sets)
                first_out, first = timed_first_call(runner.calls[0], dev)
                del first_out
                with poisoned_outputs():
                    y = runner.calls[0]()
                err = relative_error(y, ref)
                del y
                t = median_seconds(Rotation(lambda i: runner.calls[i](), sets), dev)
            del runner
        except Exception as e:  # noqa: BLE001 - one provider failing must not stop the others
            entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            run.log(f"  {layer.id} {provider}: ERROR {entry['error']}")
            continue
        entry.update(median_ms=t * 1e3, first_call_s=round(first, 3), rel_err=err,
                     tflops=counts.flops / t / 1e12, gb_per_s=counts.bytes / t / 1e9)
        if provider == "triton":
            entry["triton_configs"] = _triton_choices(since=chosen)
        if peak_flops and peak_bw:
            attainable = min(peak_flops * 1e12, counts.flops / counts.bytes * peak_bw * 1e9)
            entry["fraction_of_ceiling"] = counts.flops / t / attainable
    eager_err = case["providers"].get("cudnn", {}).get("rel_err")
    for provider, entry in case["providers"].items():
        if "rel_err" in entry:
            limit = (2 * eager_err if eager_err is not None and math.isfinite(eager_err) else 0) + (
                1e-3 if itemsize == 2 else 5e-4)  # fp32: TF32 dots (as cuDNN's default) land near 3e-4
            entry["ok"] = bool(math.isfinite(entry["rel_err"]) and
                               (entry["rel_err"] <= limit if provider != "cudnn" else entry["rel_err"] < 1e-2))
    base = case["providers"].get("cudnn", {}).get("median_ms")
    fused = case["providers"].get("cudnn-fused", {}).get("median_ms")
    for provider in ("triton", "cuda"):
        t = case["providers"].get(provider, {}).get("median_ms")
        if t:
            case["providers"][provider]["vs_cudnn"] = base / t if base else None
            case["providers"][provider]["vs_cudnn_fused"] = fused / t if fused else None
    run.log("  " + layer.id + ": " + ", ".join(
        f"{pr} {e['median_ms']:.3f} ms{'' if e.get('ok') else ' WRONG'}" if "median_ms" in e
        else f"{pr} -" for pr, e in case["providers"].items()))
    run.write()


def _triton_choices(since=None):
    """The Triton configs config_table launched so far (keys), or those launched after `since` (entries)."""
    if "drn_kernels.triton.config_table" not in sys.modules:
        return set() if since is None else []
    from drn_kernels.triton import config_table

    if since is None:
        return set(config_table.CHOSEN)
    return [dict(v, config=str(v["config"])) for k, v in config_table.CHOSEN.items() if k not in since]


def step_cuda_catch_up(run: Run, rec: dict, deadline: float):
    """The cuda provider where the steps before the build could not run it: the head, then the layers."""
    head = run.results["steps"].get("head", {})
    if head.get("providers"):
        x, weight, bias, ref_labels = _head_inputs(run)
        measure_head(run, head, head_runners(run, x, weight, bias, ("cuda",)), ref_labels, deadline)
        rec["head"] = head["providers"].get("fused-cuda")
    done = []
    for group in ("layers_dilated", "layers_big"):
        cases = {c["layer"]: c for c in run.results["steps"].get(group, {}).get("cases", [])}
        for layer in run_layers(run, group):
            if layer.id in cases:
                check_deadline(deadline, f"cuda on {layer.id}")
                measure_layer(run, cases[layer.id], layer, ("cuda",), deadline)
                done.append(layer.id)
    rec["layers"] = done


# -- whole models ---------------------------------------------------------------------------------------------------

DRY_MODEL = "1 block per level, 4-8 channels"


def _model(name: str, task: str, dry: bool = False):
    """The model (random weights, seed 0); in the dry run a DRN of the same architecture (C or D) with one block
    per level and 4-8 channels, so that the interpreter and cuda-sim get through it in seconds."""
    import torch

    import drn
    from drn.zoo.models import DRN, BasicBlock

    torch.manual_seed(0)
    if not dry:
        return drn.build(name, task=task, num_classes=19 if task == "segment" else None).eval()
    backbone = DRN(BasicBlock, [1] * 8, num_classes=10, channels=(4, 4, 8, 8, 8, 8, 8, 8),
                   arch="C" if name.startswith("drn_c") else "D")
    return (drn.DRNSeg(backbone, 19) if task == "segment" else backbone).eval()


def _compare_model(task: str, out, ref) -> dict:
    from benchmarks.harness import relative_error

    if task == "segment":
        labels, ref_labels = out[0], ref[0]
        return {"label_agreement": (labels.cpu() == ref_labels.cpu()).double().mean().item()}
    return {"rel_err": relative_error(out, ref),
            "top1_agreement": (out.argmax(1).cpu() == ref.argmax(1).cpu()).double().mean().item()}


def cuda_graphed(call):
    """call() captured as one CUDA graph (after a warm-up on a side stream, as torch.cuda.graphs asks): a
    zero-argument replay that returns the captured outputs. Host work per launch disappears; the kernels stay."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()

    def replay():
        graph.replay()
        return out

    return replay


MODEL_PROVIDERS = ("eager", "fused-cuda", "fused-triton")  # the CUDA kernels first: no compilation


def step_model(run: Run, rec: dict, deadline: float, name: str, task: str, shape):
    """eager (cuDNN, channels_last), fused-cuda, fused-triton as called (benchmarks.common's model runners and
    reference), then both fused models as one CUDA graph: latency, peak memory, and the host time per conv (as
    called - graphed, over the convs)."""
    import torch

    import drn
    from benchmarks import common
    from benchmarks.harness import median_seconds, memory_bytes, timed_first_call
    from drn.fused import FusedConv

    dev, dtype = run.device, run.dtype
    base = _model(name, task, run.dry)
    names = {"eager": "eager-cl" if run.dry else "cudnn",
             "fused-cuda": DRY_KERNEL_BACKEND["cuda"] if run.dry else "cuda", "fused-triton": "triton"}
    with torch.inference_mode():
        ref = common.model_reference(name, task, shape, dtype, model=base)[0]
    case = rec["case"] = {"model": name, "task": task, "input": list(shape), "dtype": str(dtype)[6:],
                          "providers": {},
                          "convs": sum(isinstance(m, FusedConv) for m in drn.fuse(base, backend="reference").modules())}
    if run.dry:
        case["dry_run_model"] = f"a DRN-{name[4].upper()} with {DRY_MODEL}"
    calls = {}
    for provider in MODEL_PROVIDERS + tuple(f"{p}+graph" for p in MODEL_PROVIDERS[1:]):
        check_deadline(deadline, f"{name} {provider}")
        entry = case["providers"][provider] = {}
        graphed = provider.endswith("+graph")
        backend = names[provider.removesuffix("+graph")]
        reason = None if backend in ("cudnn", "eager-cl") else why_unavailable(backend, dev)
        if graphed and dev.type != "cuda":
            reason = "CUDA graphs need a GPU"
        elif graphed and provider.removesuffix("+graph") not in calls:
            reason = f"{provider.removesuffix('+graph')} did not run"
        if reason is not None:
            entry["skipped"] = reason
            continue
        try:
            with torch.inference_mode():
                if graphed:
                    t0 = time.perf_counter()
                    call = cuda_graphed(calls[provider.removesuffix("+graph")])
                    entry["capture_s"] = round(time.perf_counter() - t0, 3)
                    out = call()
                    torch.cuda.synchronize()
                    entry.update(**_compare_model(task, out, ref))
                else:
                    call = common.model_runner(backend, name, task, shape, dtype, model=base).calls[0]
                    out, first = timed_first_call(call, dev)
                    entry.update(first_call_s=round(first, 3), **_compare_model(task, out, ref))
                    calls[provider] = call
                del out
                entry["median_ms"] = median_seconds(call, dev, rep_ms=300) * 1e3
                if dev.type == "cuda" and not graphed:
                    entry["peak_mb"] = memory_bytes(call, dev)[0] / 2**20
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        run.log(f"  {name} {task} {provider}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                           for k, v in entry.items()))
        run.write()
    eager_t = case["providers"]["eager"].get("median_ms")
    for provider, entry in case["providers"].items():
        if eager_t and entry.get("median_ms"):
            entry["vs_eager"] = eager_t / entry["median_ms"]
        graphed_t = case["providers"].get(f"{provider}+graph", {}).get("median_ms")
        if graphed_t and entry.get("median_ms") and case["convs"]:
            entry["host_us_per_conv"] = (entry["median_ms"] - graphed_t) * 1e3 / case["convs"]


# -- sanitizers -----------------------------------------------------------------------------------------------------

def _sanitizer() -> str | None:
    return shutil.which("compute-sanitizer") or next(
        (p for p in [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")]
         if os.path.exists(p)), None)


def step_sanitizers(run: Run, rec: dict, deadline: float):
    """compute-sanitizer over a payload process: memcheck over every kernel (PYTORCH_NO_CUDA_MEMORY_CACHING=1, so
    each tensor is its own allocation and a read past its end is seen), racecheck and synccheck over the small
    payload (each kernel at 1-4 blocks: the tools are slow per thread). Triton kernels run with their first
    config that fits (the payload pins it): one compiled kernel of each kind. A machine where the tool does
    not run is recorded so. The dry run: the payloads on cuda-sim and the Triton interpreter, without a tool."""
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    if run.dry:  # no tool: the small payload once, on the stand-ins
        rec["tool"] = "none (dry run: the payload without a checker)"
        entry = rec["payload"] = {}
        code, out = run_capped([sys.executable, "-m", "benchmarks.device_check", "--sanitizer-payload",
                                "cuda-sim,triton:small"], timeout=deadline - time.monotonic(), env=env)
        entry.update(returncode=code, cut=code is None, payload_ok="PAYLOAD OK" in out,
                     tail=out.strip().splitlines()[-4:])
        for name in SANITIZER_TOOLS:
            rec[name] = {"skipped": "dry run: no compute-sanitizer"}
        run.log("-- sanitizer payload output:\n" + out[-10000:], echo=False)
        run.log(f"sanitizer payload: returncode {code}, {'OK' if entry['payload_ok'] else 'NOT OK'}")
        return
    tool = _sanitizer()
    rec["tool"] = tool or "not found"
    for name, size in (("memcheck", "full"), ("racecheck", "small"), ("synccheck", "small")):
        entry = rec[name] = {}
        left = deadline - time.monotonic()
        if tool is None:
            entry["skipped"] = "compute-sanitizer not found (PATH, $CUDA_HOME/bin)"
            continue
        if left < 5:
            entry["skipped"] = f"budget: {left:.0f} s left"
            continue
        cmd = [tool, "--tool", name, "--error-exitcode", "9", "--print-limit", "20", sys.executable, "-m",
               "benchmarks.device_check", "--sanitizer-payload", f"cuda,triton:{size}"]
        code, out = run_capped(cmd, timeout=min(left, SLACK * COST[name] + STEP_GRACE), env=env)
        errors = re.search(r"ERROR SUMMARY: (\d+) error", out)
        entry.update(returncode=code, cut=code is None, errors=int(errors.group(1)) if errors else None,
                     payload_ok="PAYLOAD OK" in out, tail=out.strip().splitlines()[-4:])
        if errors is None and "PAYLOAD" not in out:
            entry["status"] = "the tool did not run the payload (see the log)"
        elif errors is None:
            entry["status"] = "cut before the tool's summary" if code is None else "no summary from the tool"
        else:
            entry["status"] = "clean" if entry["errors"] == 0 else f"{entry['errors']} errors"
        run.log(f"-- {name} output:\n" + out[-10000:], echo=False)
        run.log(f"{name}: {entry['status']}, returncode {code}, payload {'OK' if entry['payload_ok'] else 'NOT OK'}")
        run.write()


def sanitizer_payload(spec: str) -> int:
    """spec "BACKEND[,BACKEND]:full|small": every kernel of each backend (conv_bn_act geometries, class_head x1 / x8
    with one-byte labels, localize), each compared with the reference; "small" keeps every launch to 1-4 blocks
    (the conv: 100 output pixels x 64 channels = 2 CUDA blocks). Prints PAYLOAD OK when all agree."""
    names, _, size = spec.partition(":")
    names = names.split(",")
    import torch

    if not torch.cuda.is_available():  # before triton is imported: its kernels then run on CPU tensors
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import drn_kernels
    from drn_kernels import reference
    from drn_kernels.triton import config_table

    config_table.PIN_FIRST = True  # one compiled Triton kernel of each kind, its first config that fits
    g = torch.Generator().manual_seed(0)
    bad = []
    # (C, K, kernel, stride, dilation, residual, H, W)
    convs = ((32, 64, 3, 1, 2, True, 10, 10),) if size == "small" else (
        (16, 32, 3, 1, 1, True, 12, 10), (16, 32, 3, 2, 1, False, 13, 11), (32, 16, 3, 1, 2, True, 12, 12),
        (32, 16, 1, 1, 1, False, 9, 7), (3, 16, 7, 1, 1, False, 15, 13))
    for backend in names:
        dev = torch.device("cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu")
        for c, k, r, stride, dil, res, h, w in convs:
            for dtype in (torch.float16, torch.float32):
                x = torch.randn(1 if size == "small" else 2, c, h, w, generator=g).to(dev, dtype)
                x = x.contiguous(memory_format=torch.channels_last)
                wt = (torch.randn(k, c, r, r, generator=g) / math.sqrt(c * r * r)).to(dev, dtype)
                b = torch.randn(k, generator=g).to(dev, dtype)
                pad = dil * (r // 2)
                p = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
                q = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
                rs = torch.randn(x.shape[0], k, p, q, generator=g).to(dev, dtype) if res else None
                y = drn_kernels.conv_bn_act(x, wt, b, stride=stride, padding=pad, dilation=dil, residual=rs,
                                            backend=backend)
                ref = reference.conv_bn_act(x.cpu().double(), wt.cpu().double(), b.cpu().double(), [stride] * 2,
                                            [pad] * 2, [dil] * 2, None if rs is None else rs.cpu().double(), True)
                err = ((y.cpu().double() - ref).norm() / ref.norm()).item()
                if not err < (2e-2 if dtype == torch.float16 else 1e-3):
                    bad.append(f"{backend} conv c{c} k{k} r{r} s{stride} d{dil} {dtype}: rel err {err:.3g}")
        hw = (2, 2) if size == "small" else (6, 5)
        for upsample in (1, 8):
            x = torch.randn(1, 24, *hw, generator=g).to(dev, torch.float16)
            wt = torch.randn(19, 24, 1, 1, generator=g).to(dev, torch.float16)
            b = torch.randn(19, generator=g).to(dev, torch.float16)
            labels, probs = drn_kernels.class_head(x, wt, b, upsample=upsample, label_dtype=torch.uint8,
                                                   backend=backend)
            ref_labels, _ = reference.class_head(x.cpu().double(), wt.cpu().double(), b.cpu().double(), upsample)
            agree = (labels.long().cpu() == ref_labels).double().mean().item()
            if agree < 0.99 or not torch.isfinite(probs).all():
                bad.append(f"{backend} class_head x{upsample}: label agreement {agree:.3f}")
        x = torch.randn(2, 24, 7, 6, generator=g).to(dev, torch.float32)
        wt = torch.randn(10, 24, 1, 1, generator=g).to(dev, torch.float32)
        b = torch.randn(10, generator=g).to(dev, torch.float32)
        logits, labels, scores, boxes = drn_kernels.localize(x, wt, b, threshold=0.2, backend=backend)
        ref = reference.localize(x.cpu().double(), wt.cpu().double(), b.cpu().double(), 0.2, 8)
        if not torch.allclose(logits.cpu().double(), ref[0], rtol=1e-4, atol=1e-4) or not torch.equal(
                labels.cpu(), ref[1]):
            bad.append(f"{backend} localize: logits or labels differ from the reference")
        if dev.type == "cuda":
            torch.cuda.synchronize()
    for line in bad:
        print("PAYLOAD MISMATCH", line)
    print("PAYLOAD OK" if not bad else f"PAYLOAD FAILED ({len(bad)})", flush=True)
    return 0 if not bad else 1


# -- Inductor --------------------------------------------------------------------------------------------------------

def inductor_worker(spec: str) -> int:
    """One model as benchmarks.common's "inductor" provider compiles it (max-autotune without CUDA graphs,
    freezing), fp16: prints INDUCTOR_RESULT {json} after the compilation and again after the timing."""
    import torch

    from benchmarks import common
    from benchmarks.harness import median_seconds, memory_bytes, timed_first_call

    name, task, shape = spec.split(":")
    shape = tuple(int(s) for s in shape.split("x"))
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    call = common.model_runner("inductor", name, task, shape, torch.float16).calls[0]
    with torch.inference_mode():
        _, first = timed_first_call(call, dev)
        print("INDUCTOR_RESULT " + json.dumps({"compile_s": first}), flush=True)
        t = median_seconds(call, dev, rep_ms=300)
        peak = memory_bytes(call, dev)[0]
    print("INDUCTOR_RESULT " + json.dumps({"compile_s": first, "median_ms": t * 1e3, "peak_mb": peak / 2**20}),
          flush=True)
    return 0


def step_inductor(run: Run, rec: dict, deadline: float):
    for name, task, shape in MODELS:
        left = deadline - time.monotonic()
        entry = {}
        case = run.results["steps"].get(f"model_{name}", {}).get("case")
        if case is not None:
            case["providers"]["inductor"] = entry
        if left < 30:
            entry["skipped"] = f"budget: {left:.0f} s left"
            continue
        spec = f"{name}:{task}:{'x'.join(map(str, shape))}"
        code, out = run_capped([sys.executable, "-m", "benchmarks.device_check", "--inductor-worker", spec],
                               timeout=left)
        found = [json.loads(ln.split(" ", 1)[1]) for ln in out.splitlines() if ln.startswith("INDUCTOR_RESULT ")]
        entry.update(found[-1] if found else {})
        if code is None:
            entry["cut"] = f"cut at {left:.0f} s (compilation{' done' if found else ' unfinished'})"
            rec["cut"] = entry["cut"]
        elif code != 0:
            entry["error"] = "\n".join(out.strip().splitlines()[-5:])
        run.log("-- inductor " + spec + ":\n" + out[-5000:], echo=False)
        run.log(f"  inductor {name}: {entry}")
        if case is not None and entry.get("median_ms") and case["providers"]["eager"].get("median_ms"):
            entry["vs_eager"] = case["providers"]["eager"]["median_ms"] / entry["median_ms"]
        run.write()


# ---- main ---------------------------------------------------------------------------------------------------------

def _watchdog(run: Run):
    """Past the budget and a grace period, write whatever there is and end the process (a hung kernel, a
    compilation that does not return): the files are what matters."""
    remaining = run.budget.end + WATCHDOG_GRACE - time.monotonic()
    time.sleep(max(0.0, remaining))
    run.results["watchdog"] = f"the run passed its budget by {WATCHDOG_GRACE:.0f} s and was ended"
    for rec in run.results["steps"].values():
        if rec.get("status") == "running":
            rec["status"] = "cut"
            rec["cut"] = "watchdog"
    run.log("device_check: WATCHDOG: budget passed; writing the results and exiting")
    try:
        run.write(png=True)
        print("\n".join(summary_lines(run.results)), flush=True)
    finally:
        os._exit(3)


def _environment(run: Run) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_count": os.cpu_count(), "platform": platform.platform(), "executable": sys.executable}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["device"] = torch.cuda.get_device_name() if run.device.type == "cuda" else f"CPU ({platform.machine()})"
    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    if os.path.exists(nvcc):
        code, out = run_capped([nvcc, "--version"], timeout=20)
        env["nvcc"] = (out.strip().splitlines() or ["?"])[-1] if code == 0 else "failed"
    code, out = run_capped(["git", "rev-parse", "--short", "HEAD"], timeout=10) if shutil.which("git") else (1, "")
    env["commit"] = out.strip() if code == 0 else None
    return env


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=None,
                   help=f"wall-clock seconds for the whole run (default {DEFAULT_BUDGET:.0f}; {DRY_BUDGET:.0f} with --dry-run)")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="directory for the files (default: $OUT if set, else benchmarks/results)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU, tiny shapes, CPU stand-ins for the GPU providers")
    p.add_argument("--rehearse", action="store_true",
                   help="print the plan replayed against the cost model at --budget (default 480 s) and exit")
    p.add_argument("--only", default="", help="comma-separated step names to run (default: all), e.g. device,head")
    p.add_argument("--no-build", action="store_true", help="do not build drn_kernels._C first (use what is built)")
    p.add_argument("--build-timeout", type=float, default=300.0, help="seconds the build may take (default 300)")
    p.add_argument("--sanitizer-payload", metavar="SPEC", help=argparse.SUPPRESS)
    p.add_argument("--inductor-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = DRY_BUDGET if args.dry_run and not args.rehearse else DEFAULT_BUDGET
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sanitizer_payload:
        return sanitizer_payload(args.sanitizer_payload)
    if args.inductor_worker:
        return inductor_worker(args.inductor_worker)
    if args.rehearse:
        print("\n".join(rehearsal_lines(rehearse(args.budget), args.budget)))
        return 0
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels run on CPU tensors
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("device_check: no CUDA GPU is visible; run with --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    tag = "dry-run" if args.dry_run else re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name()).strip("_")
    out_dir = args.out or (pathlib.Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = Run(args, out_dir, tag)
    from drn_kernels.triton import config_table

    config_table.SEARCH_CAP_S = COST["triton_key"]  # the search cap the plan counts on
    # fp16 on the GPU; the dry run computes in fp32 (CPU fp16 convs and numpy's fp16 dots are slow to no purpose)
    run.device, run.dtype = device, (torch.float32 if args.dry_run else torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    threading.Thread(target=_watchdog, args=(run,), daemon=True).start()
    run.results["env"] = _environment(run)
    run.log(f"device_check: {run.results['env']['device']}, budget {args.budget:.0f} s, files in {out_dir}")
    if args.no_build:
        run.results["build"] = {"status": "done", "note": "not run (--no-build): what is built is used"}
    else:
        start_build(run)
    steps = plan(run.dry)
    run.results["plan"] = [{"key": s.key, "expected_s": round(s.expected_s, 1)} for s in steps]
    run.results["rehearsal"] = rehearse(DEFAULT_BUDGET, steps=plan(False) if run.dry else steps)
    run.results["rehearsal_budget_s"] = DEFAULT_BUDGET
    for step in steps:
        run_step(run, step)
    run.write(png=True)
    files = sorted(p.name for p in out_dir.glob(f"*-{tag}.*"))
    print("\nfiles: " + ", ".join(files) + f" in {out_dir}")
    print("\n".join(summary_lines(run.results)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
