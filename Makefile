# The two commands of keyturn's README. Both work on a fresh machine with only Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= examples/keyturn.yaml

.PHONY: serve test install install-test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo's brokered secret (examples/keyturn.yaml, used by examples/agents/exec_example.sh).
serve: export KEYTURN_DEMO_DEPLOY_TOKEN ?= demo-deploy-token
serve: install
	$(BIN)/keyturn serve --config $(CONFIG)

lint: install-test
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src

typecheck: install-test
	$(BIN)/mypy src

pytest: install-test
	$(BIN)/pytest -q

test: lint typecheck pytest

# Benchmarks are not tests: they print figures and rewrite benchmarks/results/*.md (see benchmarks/README.md).
bench: install-test
	$(BIN)/python benchmarks/policy_bench.py
	$(BIN)/python benchmarks/ledger_bench.py
	$(BIN)/python benchmarks/wakeup_bench.py
	$(BIN)/python benchmarks/guard_bench.py
	$(BIN)/python benchmarks/mcp_bench.py
	$(BIN)/python benchmarks/identity_bench.py
	$(BIN)/python benchmarks/redact_bench.py
	$(BIN)/python benchmarks/channels_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build src/*.egg-info
