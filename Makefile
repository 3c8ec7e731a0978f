# Every install step lives here or in pyproject.toml: CI runs `make test` on a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint openapi clean soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	mkdir -p data/input data/output
	BCM_INPUT_DIR=data/input BCM_OUTPUT_DIR=data/output $(BIN)/bcmanager serve

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy --strict src

test: lint
	$(BIN)/pytest -q

# The long proofs: 100 kill -9 of a live manager (seed printed; BCM_SOAK_SEED=N repeats a plan),
# 1000 random runs of the property test, 500 fuzzed requests per route.
soak: $(VENV)/.installed
	BCM_SOAK_KILLS=$${BCM_SOAK_KILLS:-100} BCM_PROPERTY_EXAMPLES=$${BCM_PROPERTY_EXAMPLES:-1000} \
	BCM_FUZZ_EXAMPLES=$${BCM_FUZZ_EXAMPLES:-500} \
	$(BIN)/pytest -q -s tests/test_crash.py tests/test_properties.py tests/test_fuzz_api.py

openapi: $(VENV)/.installed
	$(BIN)/bcmanager openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) data
