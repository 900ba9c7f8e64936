PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean compose-test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build from local disk / PyPI, never a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m services.cli.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check services tests bench harness scripts migrations
	$(BIN)/ruff format --check services tests bench harness scripts migrations
	$(BIN)/mypy

# The Docker Compose stack end to end (a private dockerd, offline images; measured 12 min cold, 4-5 min warm): see
# tests/deploy/test_compose_stack.py. Needs root (dockerd, apt-get for missing tools).
compose-test: $(STAMP)
	PYTHON=$(BIN)/python scripts/compose/install-host-tools.sh
	$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/deploy/test_compose_stack.py

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
