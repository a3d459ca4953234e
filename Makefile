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
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/ssr: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip uninstall -q -y ssr  # this project's old distribution name, if installed
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	@touch $@

setup: $(BIN)/ssr ## create .venv and install ssr (editable) with dev extras, pinned

test: setup lint ## lint, then run the test suite
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup ## ruff check and format check, mypy on ssr, the import-layer contracts
	$(BIN)/ruff check ssr components pipelines tests benchmarks
	$(BIN)/ruff format --check ssr components pipelines tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests/test_import_layers.py

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix ssr components pipelines tests benchmarks
	$(BIN)/ruff format ssr components pipelines tests benchmarks

lock: setup ## re-pin constraints.txt from the current venv
	$(BIN)/pip freeze --exclude-editable | grep -viE '^ssr-emg( |==|@)' | sed 's/^torch==.*/torch==2.13.0/' > constraints.txt

clean: ## remove build output, caches and local run outputs (not data you made)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache

# ---- containers and Kubernetes ---------------------------------------------------------------
# Builds with any Docker-compatible CLI: make images DOCKER=podman. Global CLI flags go in DOCKER
# ("podman --storage-driver=vfs"), per-command flags in DOCKER_BUILD_FLAGS / DOCKER_RUN_FLAGS.
DOCKER ?= docker
DOCKER_BUILD_FLAGS ?=
DOCKER_RUN_FLAGS ?=
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
MLFLOW_IMAGE ?= $(IMAGE_REGISTRY)/ssr-mlflow:$(VERSION)
TORCH_VERSION ?= 2.13.0
# Package indexes: by default pip and apt use what this machine is configured with. Optional:
# TORCH_CPU_INDEX_URL, an extra index `make wheelhouse` searches for the CPU torch wheel (PyTorch's
# CPU-only wheel index, when pip's own index holds only CUDA builds); CUDA_TORCH_INDEX_URL, the
# index the CUDA image takes torch from (empty: the build's pip index, whose Linux torch wheels
# are CUDA builds); PIP_INDEX_URL / PIP_EXTRA_INDEX_URL (from the environment) are handed to pip
# inside the image builds, which otherwise use pip's default.
TORCH_CPU_INDEX_URL ?=
CUDA_TORCH_INDEX_URL ?=
WHEELHOUSE := docker/wheelhouse
BUILD_ARGS = --build-arg VERSION=$(VERSION) --build-arg GIT_COMMIT=$(GIT_COMMIT) \
	$(if $(PIP_INDEX_URL),--build-arg INDEX_URL=$(PIP_INDEX_URL)) \
	$(if $(PIP_EXTRA_INDEX_URL),--build-arg EXTRA_INDEX_URL="$(PIP_EXTRA_INDEX_URL)")
# component-local: the raw data folder (train/val/test) mounted read-only at /data; everything
# the component writes lands in OUTPUTS_DIR, mounted at /outputs.
COMPONENT ?= preprocess
DATA_DIR ?= $(CURDIR)/data
OUTPUTS_DIR ?= $(CURDIR)/local_outputs
CHECKPOINT ?= /outputs/checkpoints/best_model.pth
ARGS ?=
SHM_SIZE ?= 2g
GPU_FLAGS ?=
K8S_OVERLAYS ?= dev production profile
K8S_RENDER_DIR ?= build/k8s
# The container user: yours, so outputs stay yours; uid 1000 (the image's user) when run as root.
RUN_USER ?= $(if $(filter 0,$(shell id -u)),1000:1000,$(shell id -u):$(shell id -g))
IN_CONFIG := --config /opt/ssr/configs/training_config.yaml
IN_PATHS := data.train_dir=/data/train data.val_dir=/data/val data.test_dir=/data/test \
	data.processed_dir=/outputs/processed training.checkpoint_dir=/outputs/checkpoints \
	training.output_dir=/outputs/outputs tracking.wandb.dir=/outputs
COMPONENT_CMD_preprocess = preprocess $(IN_CONFIG) $(IN_PATHS)
COMPONENT_CMD_train = train $(IN_CONFIG) $(IN_PATHS)
COMPONENT_CMD_evaluate = evaluate $(IN_CONFIG) --checkpoint $(CHECKPOINT) $(IN_PATHS)

.PHONY: images image-cpu image-cuda image-mlflow push wheelhouse component-local k8s-render

images: image-cpu image-cuda image-mlflow ## build the CPU, CUDA and MLflow server images

wheelhouse: ## put the CPU torch wheel in docker/wheelhouse (the CPU image installs torch from it)
	@mkdir -p $(WHEELHOUSE)
	@if ls $(WHEELHOUSE)/torch-$(TORCH_VERSION)*.whl >/dev/null 2>&1; then \
	  echo "$(WHEELHOUSE): torch $(TORCH_VERSION) present"; \
	else \
	  $(BIN)/pip download "torch==$(TORCH_VERSION)" --no-deps --only-binary=:all: \
	    --python-version 3.11 --platform manylinux_2_28_x86_64 \
	    $(if $(TORCH_CPU_INDEX_URL),--extra-index-url $(TORCH_CPU_INDEX_URL)) -d $(WHEELHOUSE); \
	fi

image-cpu: wheelhouse ## build the CPU image IMAGE (torch from the wheelhouse)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f docker/Dockerfile $(BUILD_ARGS) -t $(IMAGE) .

image-cuda: ## build the CUDA image CUDA_IMAGE (torch from the package index, or CUDA_TORCH_INDEX_URL)
	@mkdir -p $(WHEELHOUSE)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f docker/Dockerfile $(BUILD_ARGS) --build-arg TORCH_FROM=index \
	  $(if $(CUDA_TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(CUDA_TORCH_INDEX_URL)) -t $(CUDA_IMAGE) .

image-mlflow: ## build MLFLOW_IMAGE, the tracking server the k8s manifests deploy
	@mkdir -p $(WHEELHOUSE)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f docker/Dockerfile $(BUILD_ARGS) \
	  --target mlflow-server -t $(MLFLOW_IMAGE) .

push: ## push the three images (registry and tag from IMAGE_REGISTRY and VERSION)
	$(DOCKER) push $(IMAGE)
	$(DOCKER) push $(CUDA_IMAGE)
	$(DOCKER) push $(MLFLOW_IMAGE)

component-local: ## run COMPONENT (preprocess|train|evaluate) in IMAGE on DATA_DIR
	@test -n "$(COMPONENT_CMD_$(COMPONENT))" \
	  || { echo "COMPONENT must be preprocess, train or evaluate (got '$(COMPONENT)')" >&2; exit 2; }
	@test -d "$(DATA_DIR)" || { echo "DATA_DIR $(DATA_DIR) is not a folder" >&2; exit 2; }
	mkdir -p "$(OUTPUTS_DIR)"
	@if [ "$$(id -u)" = 0 ]; then chown $(RUN_USER) "$(OUTPUTS_DIR)"; fi
	$(DOCKER) run --rm $(DOCKER_RUN_FLAGS) $(GPU_FLAGS) --user $(RUN_USER) --shm-size=$(SHM_SIZE) \
	  -v "$(DATA_DIR)":/data:ro -v "$(OUTPUTS_DIR)":/outputs -w /outputs \
	  -e MLFLOW_TRACKING_URI=sqlite:////outputs/mlflow.db -e WANDB_MODE=offline \
	  -e WANDB_DIR=/outputs \
	  $(IMAGE) $(COMPONENT_CMD_$(COMPONENT)) $(ARGS)

k8s-render: ## render every overlay to build/k8s/OVERLAY.yaml (secrets from the .example templates)
	@mkdir -p $(K8S_RENDER_DIR)
	@for o in $(K8S_OVERLAYS); do \
	  tmp=$$(mktemp -d); cp -r k8s "$$tmp/"; \
	  find "$$tmp/k8s/overlays/$$o" -path '*/secrets/*.env.example' | while read -r f; do \
	    cp "$$f" "$${f%.example}"; done; \
	  kubectl kustomize "$$tmp/k8s/overlays/$$o" > $(K8S_RENDER_DIR)/$$o.yaml || { rm -rf "$$tmp"; exit 1; }; \
	  rm -rf "$$tmp"; echo "$(K8S_RENDER_DIR)/$$o.yaml"; \
	done
# ---- end containers and Kubernetes ----------------------------------------------------------

# ---- KFP pipeline ----------------------------------------------------------------------------
# GPUs per training node: the compiled default of the pipeline parameter gpus_per_node.
GPUS ?= 1
PIPELINE_YAML ?= build/ssr_pipeline.yaml
# The train step's image; empty: the CUDA variant of IMAGE (its tag + -cuda, as image-cuda tags).
TRAIN_IMAGE ?=
RUN_LOCAL_ARGS ?=
# words (configs/small.yaml) or sentences (configs/sentences_small.yaml, synthetic sentences)
TASK ?= words
.PHONY: pipeline run-local
pipeline: setup ## compile the KFP pipeline to build/ssr_pipeline.yaml (IMAGE, TRAIN_IMAGE, GPU_TYPE, GPUS)
	$(BIN)/python -m pipelines.compile --image $(IMAGE) $(if $(TRAIN_IMAGE),--train-image $(TRAIN_IMAGE)) \
	  --gpu-type $(GPU_TYPE) --gpus $(GPUS) --out $(PIPELINE_YAML)

run-local: setup ## run the whole pipeline here via kfp.local: synthetic data -> registered model (TASK=sentences)
	$(BIN)/python -m pipelines.run_local --workdir local_outputs --task $(TASK) $(RUN_LOCAL_ARGS)

# ---- model registry --------------------------------------------------------------------------
PROMOTE_ARGS ?=
.PHONY: promote
promote: setup ## gate the challenger against the champion and promote it (PROMOTE_ARGS="--dry-run")
	$(BIN)/ssr promote --config $(CONFIG) $(PROMOTE_ARGS)

# ---- experiment tracking ---------------------------------------------------------------------
MLFLOW_STORE ?= sqlite:///mlflow.db
MLFLOW_UI_PORT ?= 5000
.PHONY: mlflow-ui
mlflow-ui: setup ## browse local MLflow runs (MLFLOW_STORE, default sqlite:///mlflow.db) on port 5000
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_STORE) --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

# ---- benchmarks ------------------------------------------------------------------------------
.PHONY: bench
BENCH_ARGS ?= --quick
bench: setup ## run every benchmark in quick mode (BENCH_ARGS= for the full runs; see benchmarks/README.md)
	$(BIN)/python benchmarks/bench_preprocess.py --minutes $(if $(BENCH_ARGS),0.5,10)
	$(BIN)/python benchmarks/bench_train.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_dataloader.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_inference.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_quality.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_tune.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_pipeline.py $(BENCH_ARGS)

# ---- serving ---------------------------------------------------------------------------------
# `ssr serve` checks the model (only what `ssr register` logged as code is loaded), downloads it
# and runs MLflow's scoring server on it. MLFLOW_TRACKING_URI names the registry (default: the
# local store of make run-local, MLFLOW_STORE).
SERVE_MODEL ?= models:/ssr-emg@champion
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 8080
SERVE_IMAGE ?= $(IMAGE_REGISTRY)/ssr-serve:$(VERSION)
.PHONY: serve image-serve k8s-render-serving
serve: setup ## serve SERVE_MODEL (models:/ssr-emg@champion) on http://127.0.0.1:8080 (POST /invocations)
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-$(MLFLOW_STORE)}" \
	  $(BIN)/ssr serve --model "$(SERVE_MODEL)" --host $(SERVE_HOST) --port $(SERVE_PORT)

image-serve: wheelhouse ## build SERVE_IMAGE: MLflow's scoring server and only what inference needs (CPU torch)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f docker/Dockerfile $(BUILD_ARGS) \
	  --target serve -t $(SERVE_IMAGE) .

k8s-render-serving: ## render k8s/serving (the model server) to build/k8s/serving.yaml
	@mkdir -p $(K8S_RENDER_DIR)
	@kubectl kustomize k8s/serving > $(K8S_RENDER_DIR)/serving.yaml
	@echo "$(K8S_RENDER_DIR)/serving.yaml"
# `make k8s-render` renders the serving manifests too.
k8s-render: k8s-render-serving

.PHONY: k8s-render-kserve
k8s-render-kserve: ## render k8s/kserve (the champion as a KServe InferenceService) to build/k8s/kserve.yaml, checked against KServe's CRD schema
	@mkdir -p $(K8S_RENDER_DIR)
	@kubectl kustomize k8s/kserve > $(K8S_RENDER_DIR)/kserve.yaml
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m ssr.cluster.crd_schema $(K8S_RENDER_DIR)/kserve.yaml >/dev/null; fi
	@echo "$(K8S_RENDER_DIR)/kserve.yaml"
# `make k8s-render` renders the KServe manifests too.
k8s-render: k8s-render-kserve

.PHONY: push-serve
push-serve: ## push SERVE_IMAGE (make image-serve builds it)
	$(DOCKER) push $(SERVE_IMAGE)

# ---- documentation ---------------------------------------------------------------------------
# The DAG picture does not depend on the images: compile with a placeholder name.
DOCS_PIPELINE_YAML ?= build/docs/ssr_pipeline.yaml
.PHONY: docs
docs: setup ## compile the pipeline and redraw its DAG (Mermaid) in docs/pipeline-dag.md and README.md
	$(BIN)/python -m pipelines.compile --image registry.example.com/ml/ssr:$(VERSION) --out $(DOCS_PIPELINE_YAML)
	$(BIN)/python -m pipelines.dag $(DOCS_PIPELINE_YAML) --write docs/pipeline-dag.md README.md
