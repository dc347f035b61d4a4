# muratune: `make demo` runs the whole pipeline on synthetic data; `make test` runs lint, types and the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.muratune-installed
DEMO_OUT ?= demo-out

.PHONY: install demo test test-fast lint typecheck format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# DEHB (a benchmark anchor) declares numpy<2 but runs on numpy 2: installed without its pins (docs/search-efficiency.md).
	$(BIN)/python -m pip install --quiet --no-deps "dehb==0.1.2" "loguru>=0.5.3"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/muratune demo --out $(DEMO_OUT) --overwrite

lint: $(STAMP)
	$(BIN)/ruff check muratune tests bench tools
	$(BIN)/ruff format --check muratune tests bench tools

format: $(STAMP)
	$(BIN)/ruff format muratune tests bench tools
	$(BIN)/ruff check --fix muratune tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python tools/architecture.py
	$(BIN)/python -m pytest -q --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
