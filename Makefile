# Developer entry points.  `make demo` and `make test` are all a newcomer needs:
# both create the virtual environment (.venv) on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# two stamps: `make demo` installs only what the demo needs (torch, torchvision and neurflow's own
# dependencies); `make test`, `lint` and `bench` add the extras (tests, browser, evaluation, ImageNet, timm, dev, ray)
DEMO_STAMP := $(VENV)/.installed-demo
FULL_STAMP := $(VENV)/.installed-full
PYTEST_ARGS ?=

TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv venv-demo test test-fast lint format demo bench clean-venv

venv: $(FULL_STAMP)

venv-demo: $(DEMO_STAMP)

# Re-installs when pyproject.toml changes; a no-op otherwise.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_PINS)
	$(PIP) install -e .
	touch $@

$(FULL_STAMP): $(DEMO_STAMP)
	$(PIP) install -e '.[test,imagenet,eval,timm,dev,ray,wds,hf]'
	touch $@

# pytest exits with 5 when it collects no tests; that counts as success here.
define run_pytest
	$(PY) -m pytest -q $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected (counted as success)"; exit 0; fi; \
	exit $$rc
endef

test: venv
	$(call run_pytest,)

test-fast: venv
	$(call run_pytest,-m "not slow")

# ruff (lint + format check, line length 120, settings in pyproject.toml) and mypy on the whole package
lint: venv
	$(VENV)/bin/ruff check neurflow tests scripts benchmarks examples
	$(VENV)/bin/ruff format --check neurflow tests scripts benchmarks examples
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff check --fix neurflow tests scripts benchmarks examples
	$(VENV)/bin/ruff format neurflow tests scripts benchmarks examples

# The main job: the whole pipeline on the embedded default model and data, offline.
demo: venv-demo
	$(VENV)/bin/neurflow demo

# the three benchmark workloads (fashion, resnet18, efficientnet), each ours vs the published algorithm in
# one invocation (plus --ig-steps auto against 50 steps), the adaptive rule on the fashion workload, then
# the start time of every command, median of 3 (docs/performance.md)
bench: venv
	mkdir -p benchmarks/results
	for w in fashion resnet18 efficientnet; do \
		$(PY) benchmarks/bench_core.py --workload $$w --auto-steps --json benchmarks/results/$$w.json || exit 1; done
	$(PY) benchmarks/bench_core.py --workload fashion --adaptive-eps 0.05 --json benchmarks/results/fashion-adaptive.json
	$(PY) benchmarks/bench_start.py --json benchmarks/results/start.json
	$(PY) benchmarks/bench_data.py --json benchmarks/results/data.json

clean-venv:
	rm -rf $(VENV)
