# Sluice developer commands. `make up` and `make test` create the environment first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?=

.PHONY: venv tools js-deps up test test-fast gen lint security bench bench-limiter bench-overload envoy-config clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## tools: system tools with no PyPI package, from Debian: prometheus, promtool, amtool
## (alert-rule tests, the real-Prometheus e2e test) and chromium (the web page's browser
## test; Playwright drives it, no browser download). Installs only what is missing (root).
tools:
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null \
	    || ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    prometheus prometheus-alertmanager chromium fonts-dejavu-core; \
	fi

## js-deps: Node.js and the pinned `openai` JavaScript SDK for tests/e2e/test_openai_js_sdk.py
## (tests/js; `npm ci` from its committed lock, again only when the lock changes). Installs
## Debian's nodejs and npm when node or npm is missing (root).
JS_DEPS := tests/js/node_modules/.package-lock.json

$(JS_DEPS): tests/js/package.json tests/js/package-lock.json
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm; \
	fi
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

js-deps: $(JS_DEPS)

## up: start the whole suite in the foreground (Ctrl-C stops it). CONFIG=file.yaml to override.
up: $(STAMP)
	$(BIN)/sluice up $(if $(CONFIG),--config $(CONFIG))

## test: lint, then every test (unit, integration, end-to-end with real Envoy).
test: $(STAMP) tools js-deps lint
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit tests/integration

## gen: regenerate gen/ (stubs + descriptor image) from protos/.
gen: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

lint: $(STAMP)
	$(BIN)/buf lint gen/sluice.binpb --path sluice --config buf.yaml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/bandit -q -c pyproject.toml -r services scripts

security: $(STAMP)
	$(BIN)/bandit -q -c pyproject.toml -r services scripts
	$(BIN)/pip-audit --skip-editable

## bench: bounded load scenarios; prints req/s, latency, TTFT and CPU per request.
bench: $(STAMP)
	$(BIN)/python loadtest/bench.py

## bench-limiter: limiter decisions/s and p99, memory and Redis; 3-replica accuracy.
bench-limiter: $(STAMP)
	$(BIN)/python loadtest/limiter_bench.py

## bench-overload: 5x capacity, mixed classes, two tenants: goodput, p99 TTFT, fairness.
bench-overload: $(STAMP)
	$(BIN)/python loadtest/overload_bench.py

envoy-config: $(STAMP)
	$(BIN)/sluice envoy-config --descriptor /etc/sluice/sluice.binpb --output deploy/envoy/envoy.yaml

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
