# The README's quick start is exactly `make demo` and `make test`.
# Both create .venv when it is missing and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean sysdeps

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Atlas needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

sysdeps:
	bash scripts/install-system-deps.sh

demo: $(STAMP) sysdeps
	$(BIN)/atlas demo --home atlas-demo --reset

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: $(STAMP) sysdeps lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/ledger_append.py

clean:
	rm -rf $(VENV) atlas-demo .pytest_cache .ruff_cache .mypy_cache
