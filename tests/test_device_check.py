"""benchmarks.device_check: its fixed layer set matches the models, and its CPU dry run (interpreter, cuda-sim and
reference standing in for the GPU providers) writes every phase's files, including under a budget too small to run
them all."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from benchmarks import device_check
from drn.flops import count_layers
from drn.profile import build_meta_model

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("layer", device_check.LAYERS, ids=lambda layer: layer.id)
def test_layer_occurs_in_its_model(layer):
    where, name = layer.source.split(":")
    model, task, shape = where.split("/")
    shape = tuple(int(s) for s in shape.split("x"))
    meta = build_meta_model(model, task, 19 if task == "segment" else None, fused=True)  # rows carry residual, relu
    rows = {r.name: r for r in count_layers(meta, shape, torch.float32)}
    row = rows[name]
    assert row.in_shape == (layer.n, layer.c, layer.h, layer.w)
    assert row.out_shape[1:] == (layer.k, *layer.out_hw)
    assert row.kernel == (3, 3) and row.padding == (layer.dilation,) * 2
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


def test_dry_run_every_phase(tmp_path):
    proc, files, results = _dry_run(tmp_path)
    assert files == [f"device_check-dry-run.{ext}" for ext in ("json", "log", "md", "png")]
    phases = results["phases"]
    assert [phases[k]["status"] for k in ("1_device", "2_correct", "3_layers", "4_models", "5_head")] == ["done"] * 5
    assert phases["4b_inductor"]["status"] == "skipped"
    assert results["build"]["status"] == "done"
    assert set(phases["1_device"]["ceilings"]) == {"copy_gb_per_s", "matmul_float16_tflops",
                                                   "matmul_bfloat16_tflops"}
    assert phases["2_correct"]["pytest"]["returncode"] in (0, 5)  # every @gpu test skipped, or none collected
    assert phases["2_correct"]["sanitizer"]["payload_ok"]
    cases = phases["3_layers"]["cases"]
    assert len(cases) == len(device_check.DRY_LAYER_INDICES)
    for case in cases:
        for provider in device_check.LAYER_PROVIDERS:
            entry = case["providers"][provider]
            assert entry["ok"] and entry["median_ms"] > 0, (case["layer"], provider, entry)
    for case in phases["4_models"]["cases"]:
        assert {"eager", "fused-triton", "fused-cuda"} <= set(case["providers"])
        for entry in case["providers"].values():
            assert entry["median_ms"] > 0, entry
            assert entry.get("label_agreement", entry.get("top1_agreement")) == 1.0, entry
    for entry in phases["5_head"]["providers"].values():
        assert entry["median_ms"] > 0 and entry["label_agreement"] > 0.99, entry
    assert "per layer" in proc.stdout.split("files:")[-1]  # the short table comes last
    assert "goals (reported, not asserted)" in (tmp_path / "device_check-dry-run.md").read_text()


def test_dry_run_tiny_budget_still_writes(tmp_path):
    """A budget far too small: the phases that do not fit are skipped (saying why), the files are written; on a
    machine so loaded that even that overruns, the watchdog writes them and ends the run (exit status 3)."""
    _, files, results = _dry_run(tmp_path, "--budget", "2", "--no-build", returncodes=(0, 3))
    assert "device_check-dry-run.json" in files and "device_check-dry-run.md" in files
    statuses = {k: v["status"] for k, v in results["phases"].items()}
    assert set(statuses.values()) <= {"done", "cut", "skipped"}
    skipped = [v for v in results["phases"].values() if v["status"] == "skipped"]
    assert any(v["reason"].startswith("budget") for v in skipped), statuses
