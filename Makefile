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
BREAKING_AGAINST ?= .git\#branch=main

.PHONY: help venv generate test unit integration contract lint fmt breaking clean

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
