# muratune: `make demo` runs the whole pipeline on synthetic data; `make test` runs lint and the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.muratune-installed
DEMO_OUT ?= demo-out

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/muratune demo --out $(DEMO_OUT) --overwrite

lint: $(STAMP)
	$(BIN)/ruff check muratune tests bench
	$(BIN)/ruff format --check muratune tests bench

format: $(STAMP)
	$(BIN)/ruff format muratune tests bench
	$(BIN)/ruff check --fix muratune tests bench

test: lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
