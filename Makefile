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

.PHONY: setup build demo test test-fast bench bench-quick gpu-check clean

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

# make test also compiles the CUDA kernels on a machine without a GPU (DRN_BUILD_CUDA=1, for `build` too): the
# static kernel report reads their cubins.
test: export DRN_BUILD_CUDA := 1
# The whole suite runs against the default build (CPU + CUDA kernels where torch is a CUDA build and a toolkit is
# found; DRN_REQUIRE_BUILD=1: a compiled backend that did not build fails its tests instead of skipping them);
# then the CPU-only variant of the extension is built and the CPU-kernel tests run against it too.
test: build
	DRN_REQUIRE_BUILD=1 $(PY) -m pytest $(PYTEST_FLAGS) tests
	DRN_FORCE_CPU=1 $(PY) -m drn_kernels.build --quiet
	DRN_FORCE_CPU=1 $(PY) -m pytest $(PYTEST_FLAGS) tests/test_cpu_kernels.py tests/test_ops.py
	$(PY) -m pytest $(PYTEST_FLAGS) benchmarks --benchmark-disable

test-fast: setup
	$(PY) -m pytest $(PYTEST_FLAGS) -x tests -m "not slow"

bench: build
	$(PY) -m pytest benchmarks --benchmark-only

bench-quick: build
	$(PY) -m pytest benchmarks --benchmark-only -m quick

# On a GPU machine: the @gpu tests and the full benchmark suite; writes benchmarks/results/<device>.json.
gpu-check: build
	$(PY) -m pytest $(PYTEST_FLAGS) tests -m gpu
	$(PY) -m benchmarks.run_gpu_check

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks
