# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install torch + triton + this package, run the main job
#   make test   - the same set-up, then the whole test suite (what CI runs through .ci/run)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
TRITON_SPEC ?= triton==3.8.0
PYTEST_FLAGS ?= -q -ra
STAMP := $(VENV)/.drn-setup-done

.PHONY: setup build demo test test-fast bench bench-quick gpu-check test-gpu-env clean

$(STAMP): pyproject.toml $(wildcard setup.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC) $(TRITON_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(STAMP)

# The extension drn_kernels._C is compiled once and cached (without this step it would be compiled on first use):
# what this machine runs — the CPU kernels, plus the CUDA kernels where a GPU is visible and a toolkit is found.
# One progress line per compile step; the compiler output (nvcc's register report) goes to build.log in the
# build folder.
build: setup
	$(PY) -m drn_kernels.build

demo: build
	$(PY) -m drn.demo

# make test also compiles the CUDA kernels on a machine without a GPU (DRN_BUILD_CUDA=1, for `build` too; it fails
# where they cannot be built): the static kernel report reads their cubins.
test: export DRN_BUILD_CUDA := 1
# The whole suite runs against the default build (CPU + CUDA kernels where torch is a CUDA build and a toolkit is
# found; --require-build: a compiled backend that did not build fails its tests instead of skipping them);
# then the CPU-only variant of the extension is built and the CPU-kernel tests run against it too.
test: build
	$(PY) -m pytest $(PYTEST_FLAGS) --require-build tests
	DRN_BUILD_CUDA=0 $(PY) -m drn_kernels.build --quiet
	DRN_BUILD_CUDA=0 $(PY) -m pytest $(PYTEST_FLAGS) tests/test_cpu_kernels.py tests/test_ops.py
	$(AVX2_ONLY) $(PY) -m pytest $(PYTEST_FLAGS) --require-build $(AVX2_TESTS)
	$(PY) -m pytest $(PYTEST_FLAGS) benchmarks --benchmark-disable

# The CPU-kernel, algorithm-choice, weight-state, hostile-input and bf16-widening tests again as an AVX2-only x86
# CPU (AMD Zen 2/3, Intel Haswell-Skylake client) runs them, emulated on this one: each library capped by its own
# variable (oneDNN, ATen, ours; tests/test_cpu_isa_emulation.py checks that each honours it). On an AVX2-only CPU
# it changes nothing.
AVX2_ONLY := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 DRN_CPU_ISA=avx2
AVX2_TESTS := tests/test_cpu_isa_emulation.py tests/test_cpu_kernels.py tests/test_cpu_algorithm_choice.py \
	tests/test_cpu_choices.py tests/test_weight_state.py tests/test_hostile_kernels.py tests/test_bf16_widening.py

# The fast loop: the unit tier (tests/conftest.py: no compiled extension, nothing built), without the slow tests.
test-fast: setup
	$(PY) -m pytest $(PYTEST_FLAGS) -x tests -m "unit and not build and not slow"

bench: build
	$(PY) -m pytest benchmarks --benchmark-only

bench-quick: build
	$(PY) -m pytest benchmarks --benchmark-only -m quick

# On a GPU machine: the one device check (benchmarks/device_check.py, one budget of 480 s by default; its plan and
# expected seconds: docs/gpu-check.md), under the Python that already has torch (the lent GPU's own image: no venv,
# no install), else after `make setup`. Files: $$OUT when set, else benchmarks/results/.
# GPU_CHECK_FLAGS="--budget 300", "--dry-run" (on the CPU) or "--rehearse" (the plan against its cost model).
GPU_CHECK_FLAGS ?=
gpu-check:
	@if $(PYTHON) -c 'import torch' 2>/dev/null; then py='$(PYTHON)'; else $(MAKE) setup && py='$(PY)'; fi; \
	echo "gpu-check: $$py -m benchmarks.device_check $(GPU_CHECK_FLAGS)"; \
	PYTHONUNBUFFERED=1 $$py -m benchmarks.device_check $(GPU_CHECK_FLAGS)

# A GPU machine's software stack (Python 3.12, torch 2.11.0, triton 3.6.0) rehearsed here, in a second environment
# $(GPU_ENV): the extension builds against torch 2.11's headers (sm_90a), the CPU test suite
# passes (Triton interpreter, cuda-sim, cpu) and every Triton kernel compiles for sm_90 under triton 3.6.
# Not part of `make test` (a ~4 GB download and a second full suite); run it when torch/triton code changes.
GPU_ENV ?= .venv-gpu-sim
# the first Python 3.12 that runs: on PATH, else pyenv's (whose shim refuses a version that is not selected)
GPU_ENV_PYTHON ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
	$(if $(shell $(p) -V 2>/dev/null),$(p))) python3.12)
# numpy < 2.4: triton 3.6's interpreter converts 1-element arrays with int(), an error from numpy 2.4 on (a GPU
# machine runs the compiled kernels, never the interpreter)
GPU_ENV_SPECS ?= torch==2.11.0 triton==3.6.0 'numpy<2.4'
GPU_ENV_PY := $(GPU_ENV)/bin/python
GPU_ENV_VARS := TORCH_EXTENSIONS_DIR=$(abspath $(GPU_ENV))/torch_extensions DRN_BUILD_DIR=$(abspath $(GPU_ENV))/drn_build \
	TORCH_CUDA_ARCH_LIST=9.0a

$(GPU_ENV)/.drn-setup-done:
	test -x $(GPU_ENV_PY) || $(GPU_ENV_PYTHON) -m venv $(GPU_ENV)
	$(GPU_ENV_PY) -m pip install -q $(GPU_ENV_SPECS) pillow tqdm pytest pytest-benchmark ninja onnx \
		onnxruntime matplotlib scikit-learn
	touch $@

test-gpu-env: $(GPU_ENV)/.drn-setup-done
	$(GPU_ENV_VARS) $(GPU_ENV_PY) -m drn_kernels.build --quiet
	$(GPU_ENV_VARS) $(GPU_ENV_PY) -m pytest $(PYTEST_FLAGS) -p no:cacheprovider tests
	$(GPU_ENV_VARS) $(GPU_ENV_PY) -m drn_kernels.aot --arches sm_90 --no-cuda > $(GPU_ENV)/aot_sm90.txt
	tail -n 5 $(GPU_ENV)/aot_sm90.txt

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks
