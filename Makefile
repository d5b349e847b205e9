# Every target that runs code first creates or refreshes .venv, so on a fresh machine
# `make test` (or `make demo`) is the only command needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnzoo-installed

.PHONY: venv test lint demo bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision: the releases that install from this machine's disk
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	$(VENV)/bin/attnzoo bench kernels --size 28 --min-run-time 0.2 --no-write

bench: $(STAMP)
	$(VENV)/bin/attnzoo bench kernels
