# Two commands on a fresh machine:  `make dev` (the main job) and `make test` (everything).
# Both install what they need first: Debian packages, Go-built tools (cached outside the
# checkout, in $(IMAGEWARD_CACHE)), and a virtualenv in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export IMAGEWARD_CACHE ?= $(HOME)/.cache/imageward
PYTEST_ARGS ?=

.PHONY: all setup packages tools peer-tools venv dev test unit cluster-tests lint format bench bench-peers clean

all: test

setup: packages tools venv

packages:
	bash hack/install-packages.sh

tools:
	bash hack/build-tools.sh

# Kyverno and sigstore policy-controller, for bench/peers_bench.py only (not `make test`):
# a cold build takes about 10 minutes and 3 GiB of memory, and adds about 6 GB of Go caches.
peer-tools: tools
	bash hack/build-peers.sh

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

dev: setup
	$(BIN)/imageward dev

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m "not cluster" $(PYTEST_ARGS)

cluster-tests: setup
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format operator tests bench
	$(BIN)/ruff check --fix operator tests bench

# Every benchmark; peers_bench.py says it skipped itself when `make peer-tools` was not run.
bench: setup
	$(BIN)/python bench/run_all.py

bench-peers: setup peer-tools
	$(BIN)/python bench/peers_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
