# Two commands on a fresh machine:  `make dev` (the main job) and `make test` (everything).
# Both install what they need first: Debian packages, Go-built tools (cached outside the
# checkout, in $(IMAGEWARD_CACHE)), and a virtualenv in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export IMAGEWARD_CACHE ?= $(HOME)/.cache/imageward
PYTEST_ARGS ?=

.PHONY: all setup packages tools venv dev dev-real-node test unit cluster-tests lint format bench clean

all: test

setup: packages tools venv

packages:
	bash hack/install-packages.sh

tools:
	bash hack/build-tools.sh

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

dev: setup
	$(BIN)/imageward dev

# One real kubelet node beside the kwok ones: needs root, changes kernel settings,
# iptables and mounts while it runs (restored on stop). See README "A real node".
dev-real-node: setup
	$(BIN)/imageward dev --real-node

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

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
