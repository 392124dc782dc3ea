# Every target sets itself up: the virtual environment is created and the project installed
# on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test dev bench bench-quick venv clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)  ## full sync of both entity types against a fresh sandbox, then the status
	bash scripts/run.sh

# Tests run on 3 processes (pytest-xdist): most of a test's time is a sync's subprocesses and
# servers waiting on each other, so 3 keep 2 cores busy. TEST_WORKERS=0 runs them in one.
TEST_WORKERS ?= 3

test: $(STAMP) browser  ## every test
	$(BIN)/pytest -n $(TEST_WORKERS)

# The browser test drives Debian's Chromium (no browser download); install it when missing.
browser:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "could not install chromium: the browser test will be skipped"; }

dev: $(STAMP)  ## sandbox, Dagster webserver and daemon, on loopback
	bash scripts/dev.sh

# bench.merchants and bench.state_scale need the PostgreSQL server of BENCH_PG_ADMIN / BENCH_PG_URL
# (default: postgres@127.0.0.1:5432); each makes fresh databases and drops them afterwards.
bench: $(STAMP) .venv-dlt/.installed  ## the benchmarks: 10k, 100k and 1M products, the Sync API under load, 200 merchants' daily cycle, the state store at 10M records
	$(BIN)/pip install --quiet matplotlib
	$(BIN)/python -m bench.run --sizes 10000,100000,1000000
	$(BIN)/python -m bench.merchants --merchants 200 --products 2000 --collections 50 --workers 4
	$(BIN)/python -m bench.state_scale --other-records 9000000 --products 1000000

bench-quick: $(STAMP) .venv-dlt/.installed  ## the same at 10k and 100k, with a 10 s API load; 10 merchants of 500 products; 250k records
	$(BIN)/pip install --quiet matplotlib
	$(BIN)/python -m bench.run --sizes 10000,100000 --api-seconds 10
	$(BIN)/python -m bench.merchants --merchants 10 --products 500 --collections 20 --workers 4 --repeats 2 --alone-syncs 10 --alone-first 2 --name merchants-quick
	$(BIN)/python -m bench.state_scale --other-records 200000 --products 50000 --name state_scale-quick

# dlt, the peer in the benchmark, in an environment of its own so its pins never touch ours.
.venv-dlt/.installed:
	$(PYTHON) -m venv .venv-dlt
	.venv-dlt/bin/pip install --quiet "dlt[duckdb]"
	touch .venv-dlt/.installed

clean:
	rm -rf data/*.duckdb* data/state.db* data/sandbox-gateway.json storage history schedules logs test-artifacts
