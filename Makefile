# Every target does its own set-up on a fresh machine: Poetry is bootstrapped into .tools/,
# the virtualenv lives in .venv/, Node packages are installed from the committed lock files.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY313 := $(shell scripts/find-python313)
POETRY := .tools/poetry/bin/poetry
# The registry's simple index, read from pip's own configuration at run time (never a literal).
PYPI_SIMPLE := $(shell $(PY313) -c "import configparser,os,subprocess;from pip._internal.models.index import PyPI;u=subprocess.run(['$(PY313)','-m','pip','config','get','global.index-url'],capture_output=True,text=True).stdout.strip();print(u or PyPI.simple_url)" 2>/dev/null)
export POETRY_PYPI_MIRROR_URL := $(PYPI_SIMPLE)
export POETRY_VIRTUALENVS_IN_PROJECT := true
export POETRY_NO_INTERACTION := 1
export XDG_RUNTIME_DIR ?= /tmp
VENV := .venv
BIN := $(VENV)/bin
NODE22 := devserver/node_modules/.bin/node

.PHONY: help setup test lint typecheck unit demo devserver bench openapi subscriptions clean chromium

help:
	@echo "make demo   - the end-to-end demo (Medplum stand-in, embedded PostgreSQL, receiver, worker)"
	@echo "make test   - every check: ruff, pyright, import contracts, pytest (unit, integration, contract)"
	@echo "make bench  - benchmarks; rewrites the figures in docs/benchmarks.md"
	@echo "make openapi - regenerate the OpenAPI snapshot and the TypeScript client types"
	@echo "make subscriptions - regenerate subscriptions/ from the bots' declarations"

$(POETRY):
	$(PY313) -m venv .tools/poetry
	.tools/poetry/bin/pip install --quiet poetry poetry-plugin-pypi-mirror

$(BIN)/starvit: $(POETRY) pyproject.toml poetry.lock
	$(POETRY) env use $(PY313) >/dev/null
	$(POETRY) install --quiet
	@touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	@touch $@

devserver/node_modules/.package-lock.json: devserver/package.json devserver/package-lock.json
	cd devserver && npm ci --silent --no-audit --no-fund
	@touch $@

setup: $(BIN)/starvit node_modules/.package-lock.json devserver/node_modules/.package-lock.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	node_modules/.bin/pyright

test: setup lint typecheck chromium
	cd devserver && npm test --silent
	$(BIN)/pytest

# The browser tests drive Debian's Chromium (no browser download at run time): installed here
# when missing.
chromium:
	@test -x /usr/bin/chromium || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

devserver: devserver/node_modules/.package-lock.json
	cd devserver && exec node_modules/.bin/node server.mjs

demo: setup
	$(BIN)/python -m devtools demo

bench: setup chromium
	$(BIN)/python -m benchmarks.run

openapi: setup
	$(BIN)/python -m scripts.openapi write
	node_modules/.bin/openapi-typescript contract/openapi.json -o contract/starvit-api.d.ts

subscriptions: setup
	$(BIN)/starvit subscriptions generate

clean:
	-$(BIN)/starvit db stop
	rm -rf var .pytest_cache .ruff_cache
