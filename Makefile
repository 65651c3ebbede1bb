# Two commands on a fresh machine:  `make dev` (the main job) and `make test` (everything).
# Both install what they need first: Debian packages, Go-built tools (cached outside the
# checkout, in $(IMAGEWARD_CACHE)), and a virtualenv in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export IMAGEWARD_CACHE ?= $(HOME)/.cache/imageward
PYTEST_ARGS ?=
FUZZ_ARGS ?=

# `make image` builds the operator image from the Dockerfile without Docker (buildah; cached
# by the hash of its inputs). With IMAGE_REGISTRY it also pushes
# $(IMAGE_REGISTRY)/$(IMAGE_REPOSITORY):$(IMAGE_TAG), e.g. make image IMAGE_REGISTRY=127.0.0.1:5000
IMAGE_REGISTRY ?=
IMAGE_REPOSITORY ?= imageward
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$$/\1/p' charts/imageward/Chart.yaml)

.PHONY: all setup packages tools bench-tools peer-tools venv image dev dev-real-node test unit cluster-tests lint format bench bench-peers bench-startup fuzz clean

all: test

setup: packages tools venv

packages:
	bash hack/install-packages.sh

tools:
	bash hack/build-tools.sh

# The load generator bench/admission_bench.py drives the webhook with (not `make test`).
bench-tools: tools
	bash hack/build-tools.sh bombardier

# Kyverno and sigstore policy-controller, for bench/peers_bench.py only (not `make test`):
# a cold build takes about 10 minutes and 3 GiB of memory, and adds about 6 GB of Go caches.
peer-tools: tools
	bash hack/build-peers.sh

venv: $(BIN)/.installed

# Pinned by hack/constraints.txt (the lint and test toolchain included): a clean clone
# installs what was last green, not whatever was released since.
$(BIN)/.installed: pyproject.toml hack/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint hack/constraints.txt -e '.[test]'
	touch $@

image: packages
	bash hack/build-image.sh $(if $(IMAGE_REGISTRY),--push $(IMAGE_REGISTRY)/$(IMAGE_REPOSITORY):$(IMAGE_TAG))

dev: setup
	$(BIN)/imageward dev

# One real kubelet node beside the kwok ones: needs root, changes kernel settings,
# iptables and mounts while it runs (restored on stop). See README "A real node".
dev-real-node: setup
	$(BIN)/imageward dev --real-node

# The image is built before pytest (the chart tests run it; a cold build takes minutes).
test: setup lint image
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m "not cluster" $(PYTEST_ARGS)

cluster-tests: setup image
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format operator tests bench
	$(BIN)/ruff check --fix operator tests bench

# Every benchmark; peers_bench.py says it skipped itself when `make peer-tools` was not run.
bench: setup bench-tools
	$(BIN)/python bench/run_all.py

# Coverage-guided fuzzing of the parsers (not part of `make test`, whose unit suite runs a
# short atheris-free smoke pass over the same targets). 60 s per target by default:
#   make fuzz FUZZ_ARGS="--seconds 120 --target manifest"
fuzz: $(BIN)/.fuzz-installed
	$(BIN)/python bench/fuzz.py $(FUZZ_ARGS)

$(BIN)/.fuzz-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,fuzz]'
	touch $@

bench-peers: setup peer-tools
	$(BIN)/python bench/peers_bench.py

# Pod start time through the machine's real kubelet node (root; README "Pod start time").
bench-startup: setup image
	$(BIN)/python bench/startup_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .fuzz
