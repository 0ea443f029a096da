# edgec: `make demo` compiles the bundled example; `make test` runs lint, types and tests.
# Both create .venv on first use. torch is pinned first so that pip takes the CPU build
# instead of resolving a multi-GB CUDA wheel for the library's torch range.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgec-installed

.PHONY: demo test lint typecheck pytest bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
