# Every install step lives here or in pyproject.toml: CI runs `make test` on a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint browser openapi clean

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

test: lint browser
	$(BIN)/pytest -q

# The page test drives Debian's chromium through its chromium-driver. Installed here when missing
# and when root; otherwise that one test is skipped and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			-o DPkg::Lock::Timeout=300 chromium chromium-driver >/dev/null; } \
		|| echo "could not install chromium: the page test will be skipped"; \
	else echo "chromium is missing and this is not root: the page test will be skipped"; fi

openapi: $(VENV)/.installed
	$(BIN)/bcmanager openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) data
