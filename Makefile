# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
# Both create the virtual environment .venv first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch/torchvision pinned to the releases this project is tested with (override for another build).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup test test-fast run bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@# nginx (Debian's package) fronts the SuperLink in the hardened deployment and its loopback tests
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx >/dev/null; } \
		|| echo "warning: nginx is not installed (sudo apt-get install nginx): the deployment proxy tests will fail"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

run: setup
	$(PY) -m resam_flower.cli demo

bench: setup
	$(PY) benchmarks/aggregators.py

lint: setup
	$(VENV)/bin/ruff check resam_flower tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
