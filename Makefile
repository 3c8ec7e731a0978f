# Every install step lives here or in pyproject.toml: CI runs `make test` on a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint browser openapi clean slurm-packages test-slurm soak bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/bcmanager demo

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src

# Two workers, each handed tests as it is free; the tests of a file that share one
# server, cluster or generated client (marked xdist_group) go to one worker. Each test keeps to
# its own tmp_path and ports from the kernel.
test: lint browser slurm-packages
	$(BIN)/pytest -q -n 2 --dist loadgroup

# The long proofs: 100 kill -9 of a live manager among hostile engines and an operator, on one
# run and on a root of runs (seed printed; BCM_SOAK_SEED=N repeats a plan), 1000 random runs of
# the property test (200 of its root form), 1000 power cuts, 500 fuzzed requests per route,
# 20,000 engine ids.
soak: $(VENV)/.installed
	BCM_SOAK_KILLS=$${BCM_SOAK_KILLS:-100} BCM_PROPERTY_EXAMPLES=$${BCM_PROPERTY_EXAMPLES:-1000} \
	BCM_POWER_CUTS=$${BCM_POWER_CUTS:-1000} BCM_FUZZ_EXAMPLES=$${BCM_FUZZ_EXAMPLES:-500} \
	BCM_CHURN_ENGINES=$${BCM_CHURN_ENGINES:-20000} \
	$(BIN)/pytest -q -s tests/test_crash.py tests/test_crash_root.py tests/test_properties.py \
		tests/test_properties_root.py tests/test_power_loss.py tests/test_fuzz_api.py \
		tests/test_engine_churn.py

# The Slurm test brings up a one-node cluster from Debian's packages. Installing them is best
# effort and never fails the build: where it cannot (not root, no apt), that test skips and says so.
SLURM_PACKAGES := slurm-wlm munge
slurm-packages:
	@if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "slurm-packages: not root or no apt-get; the Slurm test will skip"; \
	elif ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $(SLURM_PACKAGES)) >/dev/null 2>&1; then \
		echo "slurm-packages: apt-get could not install $(SLURM_PACKAGES); the Slurm test will skip"; \
	fi

test-slurm: $(VENV)/.installed slurm-packages
	BCM_TEST_REQUIRE_SLURM=1 $(BIN)/pytest -q tests/test_deploy_slurm.py

# The page test drives Debian's chromium through its chromium-driver. Installed here when missing
# and when root; otherwise that one test is skipped and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			-o DPkg::Lock::Timeout=300 chromium chromium-driver >/dev/null; } \
		|| echo "could not install chromium: the page test will be skipped"; \
	else echo "chromium is missing and this is not root: the page test will be skipped"; fi

# The quick benchmarks, one table (a few minutes); bench/run_all.py --full for docs/benchmarks.md.
bench: $(VENV)/.installed
	$(BIN)/python bench/run_all.py

openapi: $(VENV)/.installed
	$(BIN)/bcmanager openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) data
