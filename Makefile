# Two commands for a fresh machine: `make quickstart` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel keeps a laptop install small; on a GPU machine use e.g. `make TORCH=torch quickstart`
# (the project's own range, torch>=2.3, then resolves to a CUDA build).
TORCH ?= torch==2.13.0

.PHONY: venv quickstart test test-slow lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

quickstart: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/quickstart.sh

test: $(BIN)/.installed
	$(BIN)/python -m pytest

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) outputs wandb .pytest_cache
