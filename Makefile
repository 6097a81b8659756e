# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := $(wildcard services operator tests)
PACKAGES := $(wildcard services/fleetflow operator/fleetflow)

.PHONY: demo test lint unit bench crds clean observability-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleetflow up examples/quickstart --simulate 20 --duration 30 --data-dir fleetflow-data

test: $(STAMP) lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy $(PACKAGES)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/fleetflow bench --devices 200 --batch 100 --protocol http --duration 60

crds: $(STAMP)
	$(BIN)/fleetflow crds --write crds
	$(BIN)/fleetflow crds --write charts/fleetflow/crds

# promtool and prometheus (Debian's `prometheus` package) for the alerting-rule tests and the test that runs a
# real Prometheus against `fleetflow up`; without them those tests are reported as skipped.
observability-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		  { apt-get update -qq || true; } && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

clean:
	rm -rf $(VENV) fleetflow-data
