# ssr: silent speech recognition from EMG. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/training_config.yaml
IMAGE_REGISTRY ?= localhost/ssr
VERSION ?= $(shell $(PYTHON) -c "import re;print(re.search(r'^version = \"(.+)\"', open('pyproject.toml').read(), re.M)[1])")
IMAGE ?= $(IMAGE_REGISTRY)/ssr:$(VERSION)
CUDA_IMAGE ?= $(IMAGE_REGISTRY)/ssr:$(VERSION)-cuda
GPU_TYPE ?= nvidia.com/gpu
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test lint format lock clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/ssr: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	@touch $@

setup: $(BIN)/ssr ## create .venv and install ssr (editable) with dev extras, pinned

test: setup ## run the test suite
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup ## ruff
	$(BIN)/ruff check ssr components pipelines tests benchmarks
	$(BIN)/ruff format --check ssr components pipelines tests benchmarks

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix ssr components pipelines tests benchmarks
	$(BIN)/ruff format ssr components pipelines tests benchmarks

lock: setup ## re-pin constraints.txt from the current venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^ssr' | sed 's/^torch==.*/torch==2.13.0/' > constraints.txt

clean: ## remove build output, caches and local run outputs (not data you made)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
