# shopmesh developer entry points. Every target installs what it needs into .venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed
GEN_STAMP := gen/.stamp
PROTOS := $(shell find proto -name '*.proto')
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

.PHONY: help venv generate test unit integration contract run lint fmt breaking clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV_STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "shopmesh needs Python >= 3.11 (found: $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
		{ echo "could not create $(VENV): on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

venv: $(VENV_STAMP) ## Create .venv with the pinned tools and libraries

$(GEN_STAMP): $(VENV_STAMP) $(PROTOS) scripts/generate.py
	$(BIN)/python scripts/generate.py --out gen
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

generate: $(GEN_STAMP) ## Generate the `shop` Python package from proto/ into gen/

test: $(GEN_STAMP) ## Run every test (unit, integration, contract)
	$(BIN)/pytest

unit: $(GEN_STAMP) ## Run the unit tests only
	$(BIN)/pytest tests/unit

integration: $(GEN_STAMP) ## Run the in-process gRPC integration tests only
	$(BIN)/pytest tests/integration

contract: $(GEN_STAMP) ## Run the contract tests only (buf lint, format, breaking proven)
	$(BIN)/pytest tests/contract

run: $(GEN_STAMP) ## Run the five services without the mesh on 127.0.0.1:50051-50055 (Ctrl-C stops)
	@pids=(); \
	for service in users inventory payments notifications orders; do \
		$(BIN)/python -m services.$$service & pids+=($$!); \
	done; \
	trap 'kill -TERM "$${pids[@]}" 2>/dev/null' INT TERM; \
	wait

lint: $(GEN_STAMP) ## buf lint + format check, ruff, mypy --strict
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(VENV_STAMP) ## Format protos and Python in place
	$(BIN)/buf format --write
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

breaking: $(VENV_STAMP) ## buf breaking against BREAKING_AGAINST (default: the main branch)
	$(BIN)/buf breaking --against '$(BREAKING_AGAINST)'

clean: ## Remove generated code, the venv and local data
	rm -rf gen $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
