"""The one device check (`make gpu-check`): everything worth knowing from a lent GPU inside one 10-minute command.

    python -m benchmarks.device_check [--budget S] [--out DIR] [--dry-run]

Runs under whatever Python already has torch (no venv, no install). Builds drn_kernels._C for sm_90a only with
MAX_JOBS = the machine's cores (in the background, while phase 1 measures), prints the build time and carries on
with Triton alone if the build fails. A hard wall-clock budget (default 480 s) is split among the phases, run in
order of value; each phase's results are written the moment it ends (JSON, Markdown, PNG and a log, into $OUT when
set, else benchmarks/results/), so a run cut short still returns data:

  1 device   device facts; measured ceilings: a large device-to-device copy (GB/s, bytes read + written) and a
             large fp16 / bf16 matrix product (TFLOP/s)
  2 correct  `pytest -m gpu tests` in a subprocess under a time cap; compute-sanitizer memcheck over a small run
             of the CUDA kernels (where the tool works)
  3 layers   16 fixed 3x3 layers of DRN-C-42 / DRN-D-38 (batch 8 @224 and batch 1 @1024x2048), fp16 NHWC, x
             {cudnn (eager conv->BN->ReLU(->add->ReLU), channels_last, cudnn.benchmark), cudnn-fused
             (torch.cudnn_convolution_relu / _add_relu on the folded weights), triton, cuda}: do_bench medians over
             rotating input sets larger than the L2, TFLOP/s and fraction of the measured ceiling, first-call time
             (compile + autotune) apart and bounded; one NaN-poisoned output per case against float64
  4 models   drn_c_42 classify batch 8 @224, drn_d_38 segment predict 1x1024x2048, fp16: eager cuDNN
             channels_last, fused triton, fused cuda: latency and peak memory; Inductor (max-autotune, freezing)
             last, in a subprocess, only with the budget that remains
  5 head     the segmentation head, 19 classes at 1024x2048: eager up -> log_softmax -> argmax against the fused
             class_head(upsample=8): time and peak memory

The speed goals (per layer >= 1.15x cudnn and >= 1.0x cudnn-fused, dilated layers at the d=1 rate, whole model
>= 1.3x eager, head >= 10x faster and >= 50x less peak memory) are reported as ratios, never asserted.

--dry-run does all of it on the CPU with tiny shapes: the Triton interpreter, cuda-sim and the reference backend
stand in for the GPU providers (tests/test_device_check.py runs it under `make test`).
"""
from __future__ import annotations

import argparse
import copy
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
from dataclasses import dataclass

PROCESS_START = time.monotonic()
ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
GPU_ARCH = "9.0a"        # the lent machine is an H200: build sm_90a only
DEFAULT_BUDGET = 480.0   # seconds; one command on the lent machine may run 600
DRY_BUDGET = 300.0     # a cap: the dry run itself takes about a minute on 2 idle cores
WATCHDOG_GRACE = 20.0    # past the budget, the watchdog writes what there is and exits


# ---- the fixed layer set ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One 3x3 conv(+BN)(+residual)+ReLU of a model: `source` names where it occurs (model, task, input, layer)."""
    source: str
    n: int
    c: int
    h: int
    w: int
    k: int
    stride: int
    dilation: int
    residual: bool

    @property
    def id(self) -> str:
        return (f"n{self.n}_c{self.c}_{self.h}x{self.w}_k{self.k}_s{self.stride}_d{self.dilation}"
                + ("_res" if self.residual else ""))

    @property
    def out_hw(self) -> tuple[int, int]:
        return (self.h - 1) // self.stride + 1, (self.w - 1) // self.stride + 1  # 3x3, padding = dilation

    def flops(self) -> int:
        p, q = self.out_hw
        return 2 * self.n * self.k * p * q * self.c * 9

    def min_bytes(self, itemsize: int) -> int:
        """Each input read once, the output written once: x, weight, bias, residual, y."""
        p, q = self.out_hw
        out = self.n * self.k * p * q
        return itemsize * (self.n * self.c * self.h * self.w + self.k * self.c * 9 + self.k
                           + out * (2 if self.residual else 1))


C42 = "drn_c_42/classify/8x3x224x224"
D38 = "drn_d_38/classify/8x3x224x224"
D38_SEG = "drn_d_38/segment/1x3x1024x2048"
# The distinct 3x3 convs of DRN-C-42 and DRN-D-38 at batch 8 @224 (d = 1, 2, 4, with and without residual; the
# same set at 28x28 with 512 channels at d = 1, 2, 4 compares dilation rates), plus 4 of DRN-D-38's at 1x1024x2048.
# tests/test_device_check.py checks every row against the models' own layer list.
LAYERS = (
    Layer(f"{C42}:layer1.0.conv2", 8, 16, 224, 224, 16, 1, 1, True),
    Layer(f"{C42}:layer2.0.conv2", 8, 32, 112, 112, 32, 1, 1, True),
    Layer(f"{C42}:layer3.0.conv2", 8, 64, 56, 56, 64, 1, 1, True),
    Layer(f"{C42}:layer4.0.conv1", 8, 64, 56, 56, 128, 2, 1, False),
    Layer(f"{C42}:layer4.0.conv2", 8, 128, 28, 28, 128, 1, 1, True),
    Layer(f"{C42}:layer5.0.conv1", 8, 128, 28, 28, 256, 1, 2, False),
    Layer(f"{C42}:layer5.0.conv2", 8, 256, 28, 28, 256, 1, 2, True),
    Layer(f"{C42}:layer6.0.conv1", 8, 256, 28, 28, 512, 1, 4, False),
    Layer(f"{C42}:layer6.0.conv2", 8, 512, 28, 28, 512, 1, 4, True),
    Layer(f"{C42}:layer6.1.conv1", 8, 512, 28, 28, 512, 1, 4, False),
    Layer(f"{D38}:layer7.0", 8, 512, 28, 28, 512, 1, 2, False),
    Layer(f"{D38}:layer8.0", 8, 512, 28, 28, 512, 1, 1, False),
    Layer(f"{D38_SEG}:base.1.0", 1, 16, 1024, 2048, 16, 1, 1, False),
    Layer(f"{D38_SEG}:base.3.0.conv2", 1, 64, 256, 512, 64, 1, 1, True),
    Layer(f"{D38_SEG}:base.5.0.conv2", 1, 256, 128, 256, 256, 1, 2, True),
    Layer(f"{D38_SEG}:base.6.1.conv1", 1, 512, 128, 256, 512, 1, 4, False),
)
# The dry run: a few of them shrunk (same stride, dilation and residual) so the interpreter and cuda-sim are quick.
DRY_LAYER_INDICES = (0, 3, 6, 9)


def dry_layer(layer: Layer) -> Layer:
    return Layer(layer.source, 1, max(4, layer.c // 64), 11, 13, max(4, layer.k // 64), layer.stride,
                 layer.dilation, layer.residual)


MODELS = (("drn_c_42", "classify", (8, 3, 224, 224)), ("drn_d_38", "segment", (1, 3, 1024, 2048)))
DRY_MODELS = (("drn_c_42", "classify", (2, 3, 24, 24)), ("drn_d_38", "segment", (1, 3, 32, 48)))
HEAD = (1, 512, 128, 256, 19)      # features (N, C, h, w) of drn_d_38 at 1024x2048, 19 classes
DRY_HEAD = (1, 8, 6, 5, 19)

# GPU providers and what stands in for each on the CPU (--dry-run)
LAYER_PROVIDERS = ("cudnn", "cudnn-fused", "triton", "cuda")
STAND_INS = {"cudnn": "eager conv->BN->ReLU on the CPU", "cudnn-fused": "backend 'reference' (folded weights)",
             "triton": "the Triton interpreter", "cuda": "backend 'cuda-sim' (the CUDA sources on the host)"}
KERNEL_BACKEND = {"triton": "triton", "cuda": "cuda"}
DRY_KERNEL_BACKEND = {"triton": "triton", "cuda": "cuda-sim", "cudnn-fused": "reference"}

GOALS = {"layer_vs_cudnn": 1.15, "layer_vs_cudnn_fused": 1.0, "model_vs_eager": 1.3, "head_speed": 10.0,
         "head_memory": 50.0}


# ---- the run's state: results, files, log -----------------------------------------------------------------------

class Run:
    def __init__(self, args, out_dir: pathlib.Path, tag: str):
        from benchmarks.device_timing import Budget

        self.args = args
        self.dry = args.dry_run
        self.budget = Budget(args.budget, start=PROCESS_START)
        self.out_dir = out_dir
        self.tag = tag
        self.lock = threading.RLock()
        self.log_lines: list[str] = []
        self.results = {"schema": "drn-kernels device check 1", "dry_run": self.dry, "budget_s": args.budget,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "env": {},
                        "build": {"status": "not started"}, "phases": {}, "goals": {}}
        self.device = None
        self.dtype = None

    def path(self, ext: str) -> pathlib.Path:
        return self.out_dir / f"device_check-{self.tag}.{ext}"

    def log(self, text: str, echo: bool = True):
        with self.lock:
            self.log_lines.append(text)
        if echo:
            print(text, flush=True)

    def write(self, png: bool = False):
        """JSON + Markdown + log now (cheap, after every case); the PNG at the end of a phase."""
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
            if png:
                try:
                    plot(self.results, self.path("png"))
                except Exception as e:  # noqa: BLE001 - matplotlib missing or broken: the data is in the JSON
                    self.log(f"device_check: no PNG ({type(e).__name__}: {e})")


# ---- phases --------------------------------------------------------------------------------------------------------

# (key, title, share of the budget left when the phase starts, seconds the phase needs at the least)
PHASES = (("1_device", "device facts and ceilings", 1.0, 8.0), ("2_correct", "correctness on the device", 5.0, 20.0),
          ("3_layers", "per layer", 5.0, 20.0), ("4_models", "whole models", 3.0, 20.0),
          ("5_head", "segmentation head", 1.0, 8.0), ("4b_inductor", "whole models under Inductor", 2.0, 60.0))
DRY_MINIMUM = {"1_device": 1.0, "2_correct": 4.0, "3_layers": 4.0, "4_models": 4.0, "5_head": 2.0,
               "4b_inductor": 0.0}


def run_phase(run: Run, key: str, body):
    """Run one phase under its deadline; record done / cut / skipped / failed; write the files when it ends."""
    from benchmarks.device_timing import BudgetExhausted

    keys = [p[0] for p in PHASES]
    i = keys.index(key)
    _, title, share, minimum = PHASES[i]
    if run.dry:
        minimum = DRY_MINIMUM[key]
    later = PHASES[i + 1:]
    later_minimum = sum(DRY_MINIMUM[p[0]] if run.dry else p[3] for p in later if p[0] != "4b_inductor")
    rec = {"title": title}
    run.results["phases"][key] = rec
    if run.args.only and key.split("_")[0].rstrip("b") not in run.args.only:
        rec.update(status="skipped", reason="not selected (--only)")
        return rec
    if run.dry and key == "4b_inductor":
        rec.update(status="skipped", reason="dry run: Inductor's max-autotune would compile for minutes on the CPU")
        return rec
    if run.budget.left() < minimum:
        rec.update(status="skipped", reason=f"budget: {run.budget.left():.0f} s left, the phase needs {minimum:.0f}")
        run.log(f"== phase {key}: skipped ({rec['reason']})")
        run.write()
        return rec
    deadline = run.budget.deadline(share, sum(p[2] for p in later), later_minimum)
    rec.update(status="running", started_s=round(run.budget.elapsed(), 1),
               allowance_s=round(deadline - time.monotonic(), 1))
    run.log(f"== phase {key} ({title}): {rec['allowance_s']:.0f} s allowed, {run.budget.left():.0f} s of the budget left")
    t0 = time.monotonic()
    try:
        body(run, rec, deadline)
        rec["status"] = "cut" if rec.get("cut") else "done"
    except BudgetExhausted as e:
        rec.update(status="cut", cut=str(e))
    except Exception as e:  # noqa: BLE001 - a broken phase must not cost the later ones
        rec.update(status="failed", error=f"{type(e).__name__}: {e}")
        run.log(traceback.format_exc())
    rec["seconds"] = round(time.monotonic() - t0, 1)
    run.log(f"== phase {key}: {rec['status']} in {rec['seconds']:.0f} s")
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
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - read back in finish_build
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from drn_kernels import build

    build.forbid_jit_build()  # this process only loads what the build makes
    CHILD_ENV["DRN_NO_JIT_BUILD"] = "1"  # and so do the subprocesses it starts (pytest, the Inductor worker)
    return proc, log, time.monotonic()


def finish_build(run: Run, build):
    proc, log, t0 = build
    rec = run.results["build"]
    timeout = max(1.0, min(run.args.build_timeout, run.budget.left() - 60.0))
    try:
        rc = proc.wait(timeout=max(0.0, timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc = None
    rec["seconds"] = round(time.monotonic() - t0, 1)
    log.seek(0)
    text = log.read()
    log.close()
    run.log("-- build output (tail):\n" + "\n".join(text.strip().splitlines()[-15:]), echo=False)
    if rc == 0:
        rec["status"] = "done"
        run.log(f"build: drn_kernels._C built in {rec['seconds']:.0f} s ({rec['arch']}, MAX_JOBS={rec['max_jobs']})")
    else:
        rec["status"] = "timeout" if rc is None else "failed"
        rec["error"] = "\n".join(text.strip().splitlines()[-6:])
        run.log(f"build: FAILED ({rec['status']}, {rec['seconds']:.0f} s): going on with Triton only; "
                f"the CUDA provider is skipped\n{rec['error']}")
    rec["cuda_backend"] = why_unavailable("cuda-sim" if run.dry else "cuda", run.device) or "available"
    run.write()


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


# -- phase 1 ----------------------------------------------------------------------------------------------------------

def phase_device(run: Run, rec: dict, deadline: float):
    import torch

    from benchmarks.device_timing import check_deadline, median_seconds

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


# -- phase 2 ----------------------------------------------------------------------------------------------------------

PYTEST_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def phase_correct(run: Run, rec: dict, deadline: float):
    """The @gpu tests in a subprocess (partial counts survive a cut), then the sanitizer over a small payload."""
    left = deadline - time.monotonic()
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "-rfE", *files]
    code, out = run_capped(cmd, timeout=left * 0.6)
    counts: dict[str, int] = {}
    failed = []
    for line in out.splitlines():
        m = PYTEST_LINE.match(line.strip())
        if m:
            counts[m.group(2)] = counts.get(m.group(2), 0) + 1
            if m.group(2) in ("FAILED", "ERROR"):
                failed.append(m.group(1))
    tail = [ln for ln in out.strip().splitlines()[-3:]]
    rec["pytest"] = {"command": " ".join(cmd[1:]), "returncode": code, "cut": code is None, "counts": counts,
                     "failed": failed[:30], "summary": tail[-1] if tail else ""}
    run.log("-- pytest -m gpu output:\n" + out[-20000:], echo=False)
    run.log(f"pytest -m gpu: {counts or 'no test ran'}{' (cut at its time cap)' if code is None else ''}"
            f"{'; failed: ' + ', '.join(failed[:5]) if failed else ''}")
    run.write()

    backend = "cuda-sim" if run.dry else "cuda"
    payload = [sys.executable, "-m", "benchmarks.device_check", "--sanitizer-payload", backend]
    tool = None if run.dry else (shutil.which("compute-sanitizer")
                                 or next((p for p in [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"),
                                                                   "bin", "compute-sanitizer")]
                                          if os.path.exists(p)), None))
    if tool:
        cmd = [tool, "--tool", "memcheck", "--error-exitcode", "9", "--print-limit", "20", *payload]
    else:
        cmd = payload
    reason = why_unavailable(backend, run.device)
    if reason is not None:
        rec["sanitizer"] = {"status": "skipped", "reason": f"backend {backend!r}: {reason}"}
        return
    code, out = run_capped(cmd, timeout=max(1.0, deadline - time.monotonic()))
    errors = re.search(r"ERROR SUMMARY: (\d+) error", out)
    rec["sanitizer"] = {"tool": tool or "none (dry run: the payload without a checker)", "backend": backend,
                        "returncode": code, "cut": code is None,
                        "errors": int(errors.group(1)) if errors else None,
                        "payload_ok": "PAYLOAD OK" in out, "tail": out.strip().splitlines()[-4:]}
    run.log("-- sanitizer output:\n" + out[-10000:], echo=False)
    run.log(f"memcheck: {rec['sanitizer']['tool']}: returncode {code}, errors {rec['sanitizer']['errors']}, "
            f"payload {'OK' if rec['sanitizer']['payload_ok'] else 'NOT OK'}")


def gpu_test_files() -> list[str]:
    """The test files that hold @pytest.mark.gpu tests (collecting only those saves the rest's imports)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "mark.gpu" in p.read_text(errors="replace"))


def sanitizer_payload(backend: str) -> int:
    """A small run of every kernel of `backend` (conv_bn_act geometries, class_head x1 / x8, localize), each
    compared with the reference; prints PAYLOAD OK when all agree. Run under compute-sanitizer on a GPU."""
    if backend == "cuda-sim":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    import drn_kernels
    from drn_kernels import reference

    dev = torch.device("cuda" if backend == "cuda" else "cpu")
    g = torch.Generator().manual_seed(0)
    bad = []
    # (C, K, kernel, stride, dilation, residual, H, W)
    for c, k, r, stride, dil, res, h, w in ((16, 32, 3, 1, 1, True, 12, 10), (16, 32, 3, 2, 1, False, 13, 11),
                                            (32, 16, 3, 1, 2, True, 12, 12), (32, 16, 1, 1, 1, False, 9, 7),
                                            (3, 16, 7, 1, 1, False, 15, 13)):
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(2, c, h, w, generator=g).to(dev, dtype).contiguous(memory_format=torch.channels_last)
            wt = (torch.randn(k, c, r, r, generator=g) / math.sqrt(c * r * r)).to(dev, dtype)
            b = torch.randn(k, generator=g).to(dev, dtype)
            pad = dil * (r // 2)
            p = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
            q = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
            rs = torch.randn(2, k, p, q, generator=g).to(dev, dtype) if res else None
            y = drn_kernels.conv_bn_act(x, wt, b, stride=stride, padding=pad, dilation=dil, residual=rs,
                                        backend=backend)
            ref = reference.conv_bn_act(x.cpu().double(), wt.cpu().double(), b.cpu().double(), [stride] * 2,
                                        [pad] * 2, [dil] * 2, None if rs is None else rs.cpu().double(), True)
            err = ((y.cpu().double() - ref).norm() / ref.norm()).item()
            if not err < (2e-2 if dtype == torch.float16 else 1e-3):
                bad.append(f"conv c{c} k{k} r{r} s{stride} d{dil} {dtype}: rel err {err:.3g}")
    for upsample in (1, 8):
        x = torch.randn(1, 24, 6, 5, generator=g).to(dev, torch.float16)
        wt = torch.randn(19, 24, 1, 1, generator=g).to(dev, torch.float16)
        b = torch.randn(19, generator=g).to(dev, torch.float16)
        labels, probs = drn_kernels.class_head(x, wt, b, upsample=upsample, backend=backend)
        ref_labels, _ = reference.class_head(x.cpu().double(), wt.cpu().double(), b.cpu().double(), upsample)
        agree = (labels.cpu() == ref_labels).double().mean().item()
        if agree < 0.99 or not torch.isfinite(probs).all():
            bad.append(f"class_head x{upsample}: label agreement {agree:.3f}")
    x = torch.randn(2, 24, 7, 6, generator=g).to(dev, torch.float32)
    wt = torch.randn(10, 24, 1, 1, generator=g).to(dev, torch.float32)
    b = torch.randn(10, generator=g).to(dev, torch.float32)
    logits, labels, scores, boxes = drn_kernels.localize(x, wt, b, threshold=0.2, backend=backend)
    ref = reference.localize(x.cpu().double(), wt.cpu().double(), b.cpu().double(), 0.2, 8)
    if not torch.allclose(logits.cpu().double(), ref[0], rtol=1e-4, atol=1e-4) or not torch.equal(labels.cpu(),
                                                                                                   ref[1]):
        bad.append("localize: logits or labels differ from the reference")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    for line in bad:
        print("PAYLOAD MISMATCH", line)
    print("PAYLOAD OK" if not bad else f"PAYLOAD FAILED ({len(bad)})", flush=True)
    return 0 if not bad else 1


# -- phase 3 ----------------------------------------------------------------------------------------------------------

def _seeded_layer(layer: Layer, seed: int):
    """The eager conv + BN (eval, realistic statistics) of one layer, float32, on the CPU."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(layer.c, layer.k, 3, layer.stride, layer.dilation, layer.dilation, bias=False)
    bn = nn.BatchNorm2d(layer.k).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (layer.c * 9)))
        bn.running_mean.copy_(torch.randn(layer.k, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(layer.k, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(layer.k, generator=g) * 0.5 + 0.5)
        bn.bias.copy_(torch.randn(layer.k, generator=g) * 0.1)
    return conv, bn


def layer_runners(run: Run, layer: Layer, conv, bn, xs, rs):
    """provider -> fn(i) computing the layer on input set i (None where the provider cannot run, with why)."""
    import torch
    import torch.nn.functional as F

    import drn_kernels

    dev, dtype = run.device, run.dtype
    cl = torch.channels_last
    eager_conv = copy.deepcopy(conv).to(dev, dtype, memory_format=cl)
    eager_bn = copy.deepcopy(bn).to(dev, dtype)
    w, b = drn_kernels.fold_bn(conv.weight, bn)
    w = w.to(dev, dtype).contiguous(memory_format=cl)
    b = b.to(dev, dtype)
    st, pad, dil = [layer.stride] * 2, [layer.dilation] * 2, [layer.dilation] * 2

    def eager(i):
        y = eager_bn(eager_conv(xs[i]))
        if rs is not None:
            y = y + rs[i]
        return F.relu(y)

    def cudnn_fused(i):
        if rs is not None:
            return torch.cudnn_convolution_add_relu(xs[i], w, rs[i], 1.0, b, st, pad, dil, 1)
        return torch.cudnn_convolution_relu(xs[i], w, b, st, pad, dil, 1)

    def kernel(backend):
        return lambda i: drn_kernels.conv_bn_act(xs[i], w, b, stride=st, padding=pad, dilation=dil,
                                                 residual=None if rs is None else rs[i], relu=True, backend=backend)

    backends = DRY_KERNEL_BACKEND if run.dry else KERNEL_BACKEND
    out = {"cudnn": eager, "cudnn-fused": kernel(backends["cudnn-fused"]) if run.dry else cudnn_fused}
    for p in ("triton", "cuda"):
        reason = why_unavailable(backends[p], dev)
        out[p] = kernel(backends[p]) if reason is None else reason
    return out


def phase_layers(run: Run, rec: dict, deadline: float):
    import torch

    import drn_kernels  # noqa: F401
    from benchmarks.device_timing import (Rotation, check_deadline, input_sets, median_seconds, poisoned_call,
                                          relative_error, runnable, timed_first_call)
    from drn_kernels import reference

    dev, dtype = run.device, run.dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    layers = [dry_layer(LAYERS[i]) for i in DRY_LAYER_INDICES] if run.dry else list(LAYERS)
    ceilings = run.results["phases"].get("1_device", {}).get("ceilings", {})
    peak_flops = ceilings.get("matmul_float16_tflops")
    peak_bw = ceilings.get("copy_gb_per_s")
    l2 = (torch.cuda.get_device_properties(dev).L2_cache_size if dev.type == "cuda" else 0) or 60_000_000
    # Triton's first calls (compilation + autotuning) may take at most this share of the phase; past it, the
    # remaining layers run without the triton provider (said in the record)
    first_call_cap = run.args.autotune_share * (deadline - time.monotonic())
    rec.update(dtype=str(dtype)[6:], providers={p: (STAND_INS[p] if run.dry else p) for p in LAYER_PROVIDERS},
               triton_first_call_cap_s=round(first_call_cap, 1), cases=[])
    first_call_spent = 0.0
    for index, layer in enumerate(layers):
        check_deadline(deadline, f"layer {layer.id}")
        conv, bn = _seeded_layer(layer, index)
        g = torch.Generator().manual_seed(1000 + index)
        p, q = layer.out_hw
        set_bytes = itemsize * (layer.n * layer.c * layer.h * layer.w + (layer.n * layer.k * p * q if layer.residual
                                                                         else 0))
        n_sets = input_sets(set_bytes, l2) if dev.type == "cuda" else 2
        cl = torch.channels_last
        xs = [torch.randn(layer.n, layer.c, layer.h, layer.w, generator=g).to(dev, dtype).contiguous(memory_format=cl)
              for _ in range(n_sets)]
        rs = ([torch.randn(layer.n, layer.k, p, q, generator=g).to(dev, dtype).contiguous(memory_format=cl)
               for _ in range(n_sets)] if layer.residual else None)
        w64, b64 = drn_kernels.fold_bn(conv.weight.double(), copy.deepcopy(bn).double())
        ref = reference.conv_bn_act(xs[0].double(), w64.to(dev), b64.to(dev), [layer.stride] * 2,
                                    [layer.dilation] * 2, [layer.dilation] * 2,
                                    None if rs is None else rs[0].double(), True)
        case = {"layer": layer.id, "source": layer.source, "flops": layer.flops(),
                "min_bytes": layer.min_bytes(itemsize), "input_sets": n_sets, "providers": {}}
        rec["cases"].append(case)
        out_nbytes = layer.n * layer.k * p * q * itemsize
        for provider, fn, entry in runnable(layer_runners(run, layer, conv, bn, xs, rs), case["providers"], deadline,
                                            f"on {layer.id}"):
            if provider == "triton" and first_call_spent > first_call_cap:
                entry["skipped"] = (f"Triton's first calls (compile + autotune) took {first_call_spent:.0f} s, over "
                                    f"their cap of {first_call_cap:.0f} s")
                continue
            try:
                with torch.inference_mode():
                    first_out, first = timed_first_call(lambda: fn(0), dev)
                    del first_out  # its memory back before the poisoned call
                    if provider == "triton":
                        first_call_spent += first
                    y, poisoned = poisoned_call(lambda: fn(0), out_nbytes, dev)
                    err = relative_error(y, ref)
                    del y
                    t = median_seconds(Rotation(fn, n_sets), dev)
            except Exception as e:  # noqa: BLE001 - one provider failing must not stop the others
                entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                run.log(f"  {layer.id} {provider}: ERROR {entry['error']}")
                continue
            entry.update(median_ms=t * 1e3, first_call_s=round(first, 3), rel_err=err, poisoned=poisoned,
                         tflops=layer.flops() / t / 1e12, gb_per_s=layer.min_bytes(itemsize) / t / 1e9)
            if peak_flops and peak_bw:
                attainable = min(peak_flops * 1e12, layer.flops() / layer.min_bytes(itemsize) * peak_bw * 1e9)
                entry["fraction_of_ceiling"] = layer.flops() / t / attainable
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
        del xs, rs, ref
        run.write()


# -- phase 4 ----------------------------------------------------------------------------------------------------------

DRY_MODEL = "1 block per level, 4-8 channels"


def _model(name: str, task: str, dry: bool = False):
    """The model (random weights, seed 0); in the dry run a DRN of the same architecture (C or D) with one block
    per level and 4-8 channels, so that the interpreter and cuda-sim get through it in seconds."""
    import torch

    import drn
    from drn.models import DRN, BasicBlock

    torch.manual_seed(0)
    if not dry:
        return drn.build(name, task=task, num_classes=19 if task == "segment" else None).eval()
    backbone = DRN(BasicBlock, [1] * 8, num_classes=10, channels=(4, 4, 8, 8, 8, 8, 8, 8),
                   arch="C" if name.startswith("drn_c") else "D")
    return (drn.DRNSeg(backbone, 19) if task == "segment" else backbone).eval()


def _model_fn(model, task: str):
    return model.predict if task == "segment" else model


def _compare_model(task: str, out, ref) -> dict:
    from benchmarks.device_timing import relative_error

    if task == "segment":
        labels, ref_labels = out[0], ref[0]
        return {"label_agreement": (labels.cpu() == ref_labels.cpu()).double().mean().item()}
    return {"rel_err": relative_error(out, ref),
            "top1_agreement": (out.argmax(1).cpu() == ref.argmax(1).cpu()).double().mean().item()}


def phase_models(run: Run, rec: dict, deadline: float):
    import torch

    import drn
    from benchmarks.device_timing import check_deadline, median_seconds, peak_memory_bytes, runnable, timed_first_call

    dev, dtype = run.device, run.dtype
    cl = torch.channels_last
    models = DRY_MODELS if run.dry else MODELS
    backends = DRY_KERNEL_BACKEND if run.dry else KERNEL_BACKEND
    rec["cases"] = []
    for name, task, shape in models:
        check_deadline(deadline, f"{name} {task}")
        base = _model(name, task, run.dry)
        x32 = torch.randn(shape, generator=torch.Generator().manual_seed(7))
        with torch.inference_mode():
            ref = _model_fn(copy.deepcopy(base).to(dev, torch.float64), task)(x32.to(dev, torch.float64))
        case = {"model": name, "task": task, "input": list(shape), "dtype": str(dtype)[6:], "providers": {}}
        if run.dry:
            case["dry_run_model"] = f"a DRN-{name[4].upper()} with {DRY_MODEL}"
        rec["cases"].append(case)
        x = x32.to(dev, dtype).contiguous(memory_format=cl)
        runners = {"eager": _model_fn(copy.deepcopy(base).to(dev, dtype, memory_format=cl), task)}
        for provider in ("triton", "cuda"):
            reason = why_unavailable(backends[provider], dev)
            runners[f"fused-{provider}"] = reason or _model_fn(
                drn.fuse(copy.deepcopy(base), backend=backends[provider]).to(dev, dtype), task)
        for provider, fn, entry in runnable(runners, case["providers"], deadline, name):
            try:
                with torch.inference_mode():
                    out, first = timed_first_call(lambda: fn(x), dev)
                    entry.update(first_call_s=round(first, 3), **_compare_model(task, out, ref))
                    del out
                    entry["median_ms"] = median_seconds(lambda: fn(x), dev, rep_ms=300) * 1e3
                    peak = peak_memory_bytes(lambda: fn(x), dev)
                    entry["peak_mb"] = None if peak is None else peak / 2**20
            except Exception as e:  # noqa: BLE001
                entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            run.log(f"  {name} {task} {provider}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                               for k, v in entry.items()))
            run.write()
        eager_t = case["providers"]["eager"].get("median_ms")
        for provider, entry in case["providers"].items():
            if eager_t and entry.get("median_ms"):
                entry["vs_eager"] = eager_t / entry["median_ms"]


def inductor_worker(spec: str) -> int:
    """One model compiled by Inductor (max-autotune, freezing): prints INDUCTOR_RESULT {json}."""
    import torch
    import torch._inductor.config as inductor_config

    from benchmarks.device_timing import median_seconds, peak_memory_bytes, timed_first_call

    name, task, shape = spec.split(":")
    shape = tuple(int(s) for s in shape.split("x"))
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    inductor_config.freezing = True
    model = _model(name, task).to(dev, torch.float16, memory_format=torch.channels_last)
    fn = torch.compile(_model_fn(model, task), mode="max-autotune")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dev, torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        _, first = timed_first_call(lambda: fn(x), dev)
        print("INDUCTOR_RESULT " + json.dumps({"compile_s": first}), flush=True)
        t = median_seconds(lambda: fn(x), dev, rep_ms=300)
        peak = peak_memory_bytes(lambda: fn(x), dev)
    print("INDUCTOR_RESULT " + json.dumps({"compile_s": first, "median_ms": t * 1e3, "peak_mb": peak / 2**20}),
          flush=True)
    return 0


def phase_inductor(run: Run, rec: dict, deadline: float):
    cases = run.results["phases"].get("4_models", {}).get("cases", [])
    for name, task, shape in MODELS:
        left = deadline - time.monotonic()
        entry = {}
        case = next((c for c in cases if c["model"] == name and c["task"] == task), None)
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


# -- phase 5 ----------------------------------------------------------------------------------------------------------

def phase_head(run: Run, rec: dict, deadline: float):
    import torch
    import torch.nn.functional as F

    import drn_kernels
    from benchmarks.device_timing import median_seconds, peak_memory_bytes, runnable, timed_first_call
    from drn_kernels import reference

    dev, dtype = run.device, run.dtype
    n, c, h, w, k = DRY_HEAD if run.dry else HEAD
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, c, h, w, generator=g).to(dev, dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(k, c, 1, 1, generator=g) / math.sqrt(c) * 4).to(dev, dtype)
    bias = (torch.randn(k, generator=g) * 0.1).to(dev, dtype)
    up = reference.bilinear_up_weight(k, dtype=dtype, device=dev)

    def eager():  # DRNSeg.predict's head: 1x1 conv, bilinear ConvTranspose2d x8, log_softmax, max
        logits = F.conv_transpose2d(F.conv2d(x, weight, bias), up, stride=8, padding=4, groups=k)
        best, labels = F.log_softmax(logits, dim=1).max(dim=1)
        return labels, best.float().exp()

    ref_labels, _ = reference.class_head(x.double(), weight.double(), bias.double(), 8)
    backends = DRY_KERNEL_BACKEND if run.dry else KERNEL_BACKEND
    runners = {"eager": eager}
    for provider in ("triton", "cuda"):
        reason = why_unavailable(backends[provider], dev)
        runners[f"fused-{provider}"] = reason or (lambda be=backends[provider]: drn_kernels.class_head(
            x, weight, bias, upsample=8, backend=be))
    rec.update(shape={"n": n, "c": c, "h": h, "w": w, "classes": k, "out": [h * 8, w * 8]}, providers={})
    for provider, fn, entry in runnable(runners, rec["providers"], deadline, "head"):
        try:
            with torch.inference_mode():
                (labels, probs), first = timed_first_call(fn, dev)
                entry.update(first_call_s=round(first, 3),
                             label_agreement=(labels.cpu() == ref_labels.cpu()).double().mean().item())
                del labels, probs
                entry["median_ms"] = median_seconds(fn, dev) * 1e3
                peak = peak_memory_bytes(fn, dev)
                entry["peak_mb"] = None if peak is None else peak / 2**20
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        run.log(f"  head {provider}: {entry}")
    eager = rec["providers"]["eager"]
    for provider, entry in rec["providers"].items():
        if provider != "eager" and entry.get("median_ms") and eager.get("median_ms"):
            entry["speedup"] = eager["median_ms"] / entry["median_ms"]
            if entry.get("peak_mb") and eager.get("peak_mb"):
                entry["memory_ratio"] = eager["peak_mb"] / entry["peak_mb"]


# ---- goals, table, plot -------------------------------------------------------------------------------------------

def _geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def goal_ratios(results: dict) -> dict:
    """The speed goals as measured ratios (geometric means over the layers); reported, never asserted."""
    out = {}
    layers = results["phases"].get("3_layers", {}).get("cases", [])
    for provider in ("triton", "cuda"):
        entries = [c["providers"].get(provider, {}) for c in layers]
        vs = _geomean(e.get("vs_cudnn") for e in entries)
        vs_fused = _geomean(e.get("vs_cudnn_fused") for e in entries)
        if vs is None:
            continue
        rates = {d: _geomean(c["providers"].get(provider, {}).get("tflops") for c in layers
                             if f"_d{d}" in c["layer"] and c["layer"].startswith("n8_c512_28x28_k512"))
                 for d in (1, 2, 4)}
        out[provider] = {
            "layer_vs_cudnn": {"measured": vs, "goal": GOALS["layer_vs_cudnn"], "met": vs >= GOALS["layer_vs_cudnn"]},
            "layer_vs_cudnn_fused": {"measured": vs_fused, "goal": GOALS["layer_vs_cudnn_fused"],
                                     "met": vs_fused is not None and vs_fused >= GOALS["layer_vs_cudnn_fused"]},
            "dilated_rate_vs_d1": {f"d{d}": rates[d] / rates[1] for d in (2, 4) if rates[d] and rates[1]},
            "all_layers_correct": all(e.get("ok", True) for e in entries),
        }
    for case in results["phases"].get("4_models", {}).get("cases", []):
        for provider in ("fused-triton", "fused-cuda"):
            r = case["providers"].get(provider, {}).get("vs_eager")
            if r:
                out.setdefault(provider.split("-")[1], {})[f"model_{case['model']}_vs_eager"] = {
                    "measured": r, "goal": GOALS["model_vs_eager"], "met": r >= GOALS["model_vs_eager"]}
    for provider, entry in results["phases"].get("5_head", {}).get("providers", {}).items():
        if entry.get("speedup"):
            d = out.setdefault(provider.split("-")[1], {})
            d["head_speed"] = {"measured": entry["speedup"], "goal": GOALS["head_speed"],
                               "met": entry["speedup"] >= GOALS["head_speed"]}
            if entry.get("memory_ratio"):
                d["head_memory"] = {"measured": entry["memory_ratio"], "goal": GOALS["head_memory"],
                                    "met": entry["memory_ratio"] >= GOALS["head_memory"]}
    return out


def _fmt(v, spec=".3g"):
    return "" if v is None else (f"{v:{spec}}" if isinstance(v, (int, float)) else str(v))


def layer_table(results: dict, markdown_style: bool) -> list[str]:
    cases = results["phases"].get("3_layers", {}).get("cases", [])
    cols = ["layer"] + [f"{p} ms" for p in LAYER_PROVIDERS] + ["triton x", "cuda x", "ok"]
    rows = []
    for c in cases:
        pv = c["providers"]
        ms = [_fmt(pv.get(p, {}).get("median_ms"), ".3f") or ("err" if "error" in pv.get(p, {}) else "-")
              for p in LAYER_PROVIDERS]
        ratios = [_fmt(pv.get(p, {}).get("vs_cudnn"), ".2f") for p in ("triton", "cuda")]
        ok = "yes" if all(e.get("ok", True) and "error" not in e for e in pv.values()) else "NO"
        rows.append([c["layer"], *ms, *ratios, ok])
    return _render(cols, rows, markdown_style)


def _render(cols, rows, markdown_style: bool) -> list[str]:
    if markdown_style:
        return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*cols)] + [fmt.format(*r) for r in rows]


def summary_lines(results: dict, markdown_style: bool = False) -> list[str]:
    lines = []
    head = "##" if markdown_style else "=="
    env = results.get("env", {})
    lines.append(f"{head} drn-kernels device check{' (DRY RUN on the CPU)' if results['dry_run'] else ''}: "
                 f"{env.get('device', '?')}; python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
                 f"triton {env.get('triton', '?')}; {results.get('elapsed_s', 0):.0f} s of {results['budget_s']:.0f}")
    b = results["build"]
    lines.append(f"build: {b.get('status')}" + (f" in {b.get('seconds', '?')} s ({b.get('arch')}); cuda backend: "
                                                 f"{b.get('cuda_backend', '?')}" if "seconds" in b else ""))
    lines.append("phases: " + ", ".join(f"{k} {v.get('status')}" + (f" ({v['seconds']:.0f} s)" if 'seconds' in v else "")
                                        for k, v in results["phases"].items()))
    p1 = results["phases"].get("1_device", {})
    if p1.get("ceilings"):
        lines.append("ceilings: " + ", ".join(f"{k} {v:.4g}" for k, v in p1["ceilings"].items()))
    p2 = results["phases"].get("2_correct", {})
    if p2.get("pytest"):
        lines.append(f"pytest -m gpu: {p2['pytest']['counts']}{' CUT' if p2['pytest']['cut'] else ''}"
                     + (f"; failed: {', '.join(p2['pytest']['failed'][:4])}" if p2['pytest']['failed'] else ""))
    if p2.get("sanitizer"):
        s = p2["sanitizer"]
        lines.append(f"memcheck: {s.get('status') or s.get('tool')}: errors {s.get('errors')}, payload "
                     f"{'OK' if s.get('payload_ok') else 'NOT OK'}" + (f" ({s['reason']})" if s.get("reason") else ""))
    layer_lines = layer_table(results, markdown_style)
    if len(layer_lines) > (2 if markdown_style else 1):
        lines += ["", f"{head} per layer ({results['phases']['3_layers'].get('dtype')}, median ms; x = speedup "
                      "over cudnn)" if markdown_style else "per layer (median ms; x = speedup over cudnn):"]
        lines += layer_lines
    rows = []
    for c in results["phases"].get("4_models", {}).get("cases", []):
        for p, e in c["providers"].items():
            rows.append([f"{c['model']} {c['task']}", p, _fmt(e.get("median_ms"), ".2f"), _fmt(e.get("peak_mb"), ".0f"),
                         _fmt(e.get("vs_eager"), ".2f"),
                         _fmt(e.get("rel_err", e.get("label_agreement")), ".3g"),
                         e.get("skipped", e.get("error", e.get("cut", "")))[:60]])
    for p, e in results["phases"].get("5_head", {}).get("providers", {}).items():
        rows.append(["head 19 cls x8", p, _fmt(e.get("median_ms"), ".2f"), _fmt(e.get("peak_mb"), ".0f"),
                     _fmt(e.get("speedup"), ".2f"), _fmt(e.get("label_agreement"), ".4g"),
                     (e.get("skipped", e.get("error", "")) or "")[:60]])
    if rows:
        lines += ["", f"{head} models and head" if markdown_style else "models and head:"]
        lines += _render(["case", "provider", "ms", "peak MB", "x eager", "err / agree", "note"], rows,
                         markdown_style)
    goals = results.get("goals", {})
    if goals:
        lines += ["", f"{head} goals (reported, not asserted)" if markdown_style else "goals (reported, not asserted):"]
        for provider, d in goals.items():
            parts = []
            for k, v in d.items():
                if isinstance(v, dict) and "measured" in v:
                    parts.append(f"{k} {_fmt(v['measured'], '.2f')}/{v['goal']} {'met' if v['met'] else 'MISSED'}")
                elif isinstance(v, dict) and v:
                    parts.append(f"{k} " + " ".join(f"{a}={b:.2f}" for a, b in v.items()))
                elif isinstance(v, bool):
                    parts.append(f"{k} {'yes' if v else 'NO'}")
            lines.append(f"{'- ' if markdown_style else '  '}{provider}: " + "; ".join(parts))
    return lines


def markdown(results: dict) -> str:
    return "\n".join(summary_lines(results, markdown_style=True)) + "\n"


def plot(results: dict, path: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["phases"].get("3_layers", {}).get("cases", [])
    models = results["phases"].get("4_models", {}).get("cases", [])
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    width = 0.25
    for j, p in enumerate(("cudnn-fused", "triton", "cuda")):
        xs, ys = [], []
        for i, c in enumerate(cases):
            base = c["providers"].get("cudnn", {}).get("median_ms")
            t = c["providers"].get(p, {}).get("median_ms")
            if base and t:
                xs.append(i + (j - 1) * width)
                ys.append(base / t)
        ax.bar(xs, ys, width, label=p)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(GOALS["layer_vs_cudnn"], color="r", lw=0.8, ls="--", label="goal 1.15x")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c["layer"] for c in cases], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup over eager cuDNN (median)")
    ax.set_title(f"per layer, {results['phases'].get('3_layers', {}).get('dtype', '')}"
                 + (" (DRY RUN: CPU stand-ins)" if results["dry_run"] else ""))
    ax.legend(fontsize=8)
    ax = axes[1]
    labels, values = [], []
    for c in models:
        for p, e in c["providers"].items():
            if e.get("vs_eager"):
                labels.append(f"{c['model']}\n{p}")
                values.append(e["vs_eager"])
    for p, e in results["phases"].get("5_head", {}).get("providers", {}).items():
        if e.get("speedup"):
            labels.append(f"head\n{p}")
            values.append(e["speedup"])
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_title("models and head: speedup over eager")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------------------------

def _watchdog(run: Run):
    """Past the budget and a grace period, write whatever there is and end the process (a hung kernel, a
    compilation that does not return): the files are what matters."""
    remaining = run.budget.end + WATCHDOG_GRACE - time.monotonic()
    time.sleep(max(0.0, remaining))
    run.results["watchdog"] = f"the run passed its budget by {WATCHDOG_GRACE:.0f} s and was ended"
    for rec in run.results["phases"].values():
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
    p.add_argument("--only", default="", help="comma-separated phase numbers to run (default: all), e.g. 1,3")
    p.add_argument("--no-build", action="store_true", help="do not build drn_kernels._C first (use what is built)")
    p.add_argument("--build-timeout", type=float, default=300.0, help="seconds the build may take (default 300)")
    p.add_argument("--autotune-share", type=float, default=0.4,
                   help="share of the per-layer phase that Triton's first calls (compile + autotune) may take")
    p.add_argument("--sanitizer-payload", metavar="BACKEND", help=argparse.SUPPRESS)
    p.add_argument("--inductor-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = DRY_BUDGET if args.dry_run else DEFAULT_BUDGET
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sanitizer_payload:
        return sanitizer_payload(args.sanitizer_payload)
    if args.inductor_worker:
        return inductor_worker(args.inductor_worker)
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
    # fp16 on the GPU; the dry run computes in fp32 (CPU fp16 convs and numpy's fp16 dots are slow to no purpose)
    run.device, run.dtype = device, (torch.float32 if args.dry_run else torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    threading.Thread(target=_watchdog, args=(run,), daemon=True).start()
    run.results["env"] = _environment(run)
    run.log(f"device_check: {run.results['env']['device']}, budget {args.budget:.0f} s, files in {out_dir}")
    build = None if args.no_build else start_build(run)
    if build is None:
        run.results["build"] = {"status": "not run (--no-build)"}
    run_phase(run, "1_device", phase_device)
    if build is not None:
        finish_build(run, build)
    run_phase(run, "2_correct", phase_correct)
    run_phase(run, "3_layers", phase_layers)
    run_phase(run, "4_models", phase_models)
    run_phase(run, "5_head", phase_head)
    run_phase(run, "4b_inductor", phase_inductor)
    run.write(png=True)
    files = sorted(str(p.name) for p in out_dir.glob(f"device_check-{tag}.*"))
    print("\nfiles: " + ", ".join(files) + f" in {out_dir}")
    print("\n".join(summary_lines(run.results)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
