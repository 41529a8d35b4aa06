# vram-physics: `make demo` (set up and run the CPU demo), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODELS ?= models
# Extra pip options, e.g. PIP_OPTS="--extra-index-url https://download.pytorch.org/whl/cpu"
# where the CPU build of torch is not on the machine already.
PIP_OPTS ?=

.PHONY: demo test lint typecheck unit venv install-cpu install-dev demo-model clean faults bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

install-cpu: $(PY)
	$(PIP) install -q $(PIP_OPTS) -e ".[cpu]"

install-dev: $(PY)
	$(PIP) install -q $(PIP_OPTS) -e ".[cpu,dev]"

demo-model: install-cpu
	$(PY) -m vramphysics make-demo-model --gguf $(MODELS)/tiny-llama.gguf

demo: demo-model
	$(PY) runner.py --setup demo

lint: install-dev
	$(PY) -m ruff check src tests runner.py manage_loadout.py
	$(PY) -m ruff format --check src tests runner.py manage_loadout.py

typecheck: install-dev
	$(PY) -m mypy

unit: install-dev
	$(PY) -m pytest -m "not slow" -q

test: install-dev lint typecheck
	$(PY) -m pytest -q

faults: install-dev
	$(PY) -m pytest tests/faults -q

clean:
	rm -rf $(VENV) $(MODELS) reports calibration run .pytest_cache .mypy_cache .ruff_cache
