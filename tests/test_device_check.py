"""benchmarks.device_check: its fixed layer set matches the models; its plan, replayed against the cost model at the
lent GPU's 480 s, returns the head, the dilated and 1024x2048 layers and both models (also when every step costs
30% more, or the build fails); its CPU dry run (interpreter, cuda-sim and reference standing in for the GPU
providers) writes every step's files, including under a budget too small to run them all."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from benchmarks import device_check
from drn.tools.flops import count_layers
from drn.tools.profile import build_meta_model

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("layer", device_check.LAYERS, ids=lambda layer: layer.id)
def test_layer_occurs_in_its_model(layer):
    where, name = layer.first_seen.split(":")
    model, task, shape = where.split("/")
    shape = tuple(int(s) for s in shape.split("x"))
    meta = build_meta_model(model, task, 19 if task == "segment" else None, fused=True)  # rows carry residual, relu
    rows = {r.name: r for r in count_layers(meta, shape, torch.float32)}
    row = rows[name]
    assert row.in_shape == (layer.n, layer.c, layer.h, layer.w)
    assert row.out_shape[1:] == (layer.k, *layer.out_hw)
    assert row.kernel == (3, 3) and row.padding == (layer.padding,) * 2 == (layer.dilation,) * 2
    assert row.stride == (layer.stride,) * 2 and row.dilation == (layer.dilation,) * 2
    assert row.residual == layer.residual and row.relu


def test_layer_set_is_distinct():
    ids = [layer.id for layer in device_check.LAYERS]
    assert len(ids) == len(set(ids)) == 16
    assert {layer.dilation for layer in device_check.LAYERS} == {1, 2, 4}
    assert {layer.residual for layer in device_check.LAYERS} == {False, True}


def _dry_run(tmp_path, *args, returncodes=(0,), timeout=400):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.device_check", "--dry-run", "--out", str(tmp_path),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode in returncodes, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8, files
    results = json.loads((tmp_path / "device_check-dry-run.json").read_text())
    return proc, files, results


@pytest.mark.slow
@pytest.mark.build
def test_dry_run_every_step(tmp_path):
    proc, files, results = _dry_run(tmp_path)
    assert {f"device_check-dry-run.{ext}" for ext in ("json", "log", "md", "png")} <= set(files)
    assert set(files) <= {f"device_check-dry-run.{ext}" for ext in ("json", "log", "md", "png")} | {
        "build-dry-run.log", "triton_configs-dry-run.json"}
    steps = results["steps"]
    assert list(steps) == [s.key for s in device_check.plan(True)]
    assert {k: v["status"] for k, v in steps.items()} == {k: "skipped" if k == "inductor" else "done"
                                                           for k in steps}
    assert results["build"]["status"] == "done"
    assert set(steps["device"]["ceilings"]) == {"copy_gb_per_s", "matmul_float16_tflops", "matmul_bfloat16_tflops"}
    for key in ("smoke_triton", "smoke_cuda"):  # every selected @gpu test skipped on the CPU
        pytest_rec = steps[key]["pytest"]
        assert pytest_rec["returncode"] == 0 and 8 <= pytest_rec["counts"].get("SKIPPED", 0) <= 40, pytest_rec
    assert steps["sanitizers"]["payload"]["payload_ok"]
    cases = device_check.layer_cases(results)
    assert [c["layer"] for c in cases] == [device_check.dry_layer(layer).id
                                           for group in device_check.DRY_GROUPS.values() for layer in group]
    for case in cases:
        for provider in device_check.LAYER_PROVIDERS:
            entry = case["providers"][provider]
            assert entry["ok"] and entry["median_ms"] > 0, (case["layer"], provider, entry)
    for case in device_check.model_cases(results):
        assert {"eager", "fused-triton", "fused-cuda"} <= set(case["providers"])
        for name, entry in case["providers"].items():
            if name.endswith("+graph"):
                assert entry["skipped"] == "CUDA graphs need a GPU"
                continue
            assert entry["median_ms"] > 0, entry
            assert entry.get("label_agreement", entry.get("top1_agreement")) == 1.0, entry
    head = steps["head"]["providers"]
    assert set(head) == {"eager", "fused-triton", "fused-cuda"}
    for name, entry in head.items():
        assert entry["median_ms"] > 0 and entry["label_agreement"] > 0.99, entry
        assert entry["label_dtype"] == ("int64" if name == "eager" else "uint8")
    assert [r["key"] for r in results["rehearsal"]] == [s.key for s in device_check.plan(False)]
    assert "per layer" in proc.stdout.split("files:")[-1]  # the short table comes last
    assert "goals (reported, not asserted)" in (tmp_path / "device_check-dry-run.md").read_text()


def _statuses(rows):
    return {r["key"]: r["status"] for r in rows}


@pytest.mark.parametrize("factor", [1.0, 1.3])
def test_rehearsal_returns_what_matters_in_480_s(factor):
    """The plan against the cost model: a 480 s run returns the head, the dilated and 1024x2048 layers (every
    provider) and both models, also when every step takes 30% longer than the table says."""
    rows = device_check.rehearse(480.0, factor=factor)
    statuses = _statuses(rows)
    assert all(statuses[k] == "done" for k in device_check.MUST_RETURN), statuses
    assert all(r.get("end_s", 0) <= 480.0 for r in rows)


def test_rehearsal_without_the_build_still_returns_the_models():
    statuses = _statuses(device_check.rehearse(480.0, build_ok=False))
    assert statuses["smoke_cuda"] == statuses["cuda_catch_up"] == statuses["sanitizers"] == "skipped"
    assert all(statuses[k] == "done" for k in ("head", "layers_dilated", "model_drn_c_42", "model_drn_d_38"))


def test_rehearsal_cut_short_keeps_the_valuable_prefix():
    """Whatever the budget, what a shorter run returns is a subset of what a longer one does, and the head and
    the dilated layers come before the models: the plan is in order of value."""
    order = [s.key for s in device_check.plan(False)]
    done_before = set()
    for budget in range(60, 540, 30):
        done = {k for k, v in _statuses(device_check.rehearse(float(budget))).items() if v == "done"}
        assert done_before <= done, (budget, done_before - done)
        done_before = done
    assert order.index("head") < order.index("layers_dilated") < order.index("model_drn_c_42")
    assert order.index("model_drn_c_42") < order.index("inductor") == len(order) - 1


def test_per_test_timeout_plugin(tmp_path):
    (tmp_path / "test_sleepy.py").write_text("import time\n\ndef test_sleeps():\n    time.sleep(5)\n\n"
                                             "def test_quick():\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                           "benchmarks.pytest_test_timeout", "--per-test-timeout=0.5",
                           str(tmp_path / "test_sleepy.py")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-2000:]
    assert "TimeoutError" in proc.stdout


@pytest.mark.build
def test_dry_run_tiny_budget_still_writes(tmp_path):
    """A budget far too small: the phases that do not fit are skipped (saying why), the files are written; on a
    machine so loaded that even that overruns, the watchdog writes them and ends the run (exit status 3)."""
    _, files, results = _dry_run(tmp_path, "--budget", "2", "--no-build", returncodes=(0, 3))
    assert "device_check-dry-run.json" in files and "device_check-dry-run.md" in files
    statuses = {k: v["status"] for k, v in results["steps"].items()}
    assert set(statuses.values()) <= {"done", "cut", "skipped"}
    skipped = [v for v in results["steps"].values() if v["status"] == "skipped"]
    assert any(v["reason"].startswith("budget") for v in skipped), statuses


def test_the_documented_plan_is_the_plan():
    """docs/gpu-check.md's plan table: the steps in the plan's order, each with its expected seconds and the time
    the replay at 480 s ends it (or says it is cut / skipped)."""
    rows = [ln.split("|")[1:-1] for ln in (ROOT / "docs" / "gpu-check.md").read_text().splitlines()
            if ln.startswith("| `")]
    steps = device_check.plan(False)
    table = [r for r in rows if r[0].strip().strip("`") in {s.key for s in steps}]
    assert [r[0].strip().strip("`") for r in table] == [s.key for s in steps]
    replay = {r["key"]: r for r in device_check.rehearse(480.0)}
    for row, step in zip(table, steps):
        expected, ends = row[2].strip(), row[3].strip()
        if step.key != "build":
            assert expected == f"{step.expected_s:.0f}", (step.key, expected, step.expected_s)
        r = replay[step.key]
        want = {"done": f"{r.get('end_s', 0):.0f}", "cut": "cut at 480", "skipped": "skipped"}[r["status"]]
        assert ends == want, (step.key, ends, r)
