# Every target that runs code first creates or refreshes .venv, so on a fresh machine
# `make test` (or `make demo`) is the only command needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnzoo-installed

.PHONY: venv test check lint demo bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision: the releases that install from this machine's disk
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# One pytest-xdist worker per core (tests/conftest.py gives each its share of torch's threads); work stealing
# evens out the long tests. `make check` is the quick tier: lint, then the tests marked `quick`.
PYTEST_PARALLEL := -n auto --dist worksteal

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

check: lint
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The demo, on the CPU and offline: scikit-learn's handwritten digits (written once to an ImageFolder tree in the
# cache folder) -> a small NAT trained by attnzoo-train -> validated from its best checkpoint -> `attnzoo export`
# -> validated again after reloading the export through timm (local-dir:). The tables print val/acc1 (top-1).
# One thread: as fast for this 0.45M-parameter model, and immune to oversubscription when the cores are shared.
DEMO_DIR ?= $(or $(ATTNZOO_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/attnzoo)/demo
DEMO_RUN := OMP_NUM_THREADS=1 $(VENV)/bin/attnzoo-train

demo: $(STAMP)
	$(PY) -c "from attnzoo.train import write_digits; print(write_digits())"
	rm -rf $(DEMO_DIR)
	$(DEMO_RUN) fit --config configs/demo/digits.yaml --trainer.default_root_dir $(DEMO_DIR)
	$(DEMO_RUN) validate --config configs/demo/digits.yaml --trainer.default_root_dir $(DEMO_DIR) \
		--ckpt_path $(DEMO_DIR)/checkpoints/best.ckpt
	$(VENV)/bin/attnzoo export $(DEMO_DIR)/checkpoints/best.ckpt $(DEMO_DIR)/export
	$(DEMO_RUN) validate --config configs/demo/digits.yaml --trainer.default_root_dir $(DEMO_DIR) \
		--model.init_args.model local-dir:$(DEMO_DIR)/export --model.init_args.pretrained true

bench: $(STAMP)
	$(VENV)/bin/attnzoo bench kernels --json 'benchmarks/kernels-{device}.json' --force
