# Laneway: `make run` starts the console with its workers; `make test` runs every test; `make lint` checks the code.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run setup test test-embedded test-scaleout lint bench

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Laneway needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed
	$(BIN)/python manage.py bootstrap

# Starts the embedded Valkey (unless REDIS_URL is set), then the Procfile's web server, workers and beat;
# Ctrl-C stops them, then Valkey, and exits 0.
run: setup
	@echo "Laneway console: http://$${LANEWAY_HOST:-127.0.0.1}:$${LANEWAY_PORT:-8000}/  (Ctrl-C stops everything)"
	@PATH="$(CURDIR)/$(BIN):$$PATH" exec $(BIN)/python manage.py run_console

# The whole suite on the embedded default and, at the same time, on PostgreSQL + Redis when they
# answer (always in CI, where .ci/run starts them): tests/passes.py. PYTEST_ARGS go to both passes.
test: $(VENV)/.installed-dev
	$(BIN)/python tests/passes.py $(PYTEST_ARGS)

# ruff (lint and format) on everything; mypy with django-stubs on accounts, lanes, telemetry, webhooks, experiments.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/overhead.py
