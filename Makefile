PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CONSOLE_STAMP := console/.stamp
CONSOLE_INPUTS := console/package.json console/package-lock.json console/index.html \
	console/vite.config.ts console/tsconfig.json $(shell find console/src -type f 2>/dev/null)

.PHONY: install console demo test lint bench clean compose-test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build from local disk / PyPI, never a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# checkov (k8s/ checks) in a venv of its own: it pins packaging<24 and urllib3 1.26.
	test -x $(VENV)/tools/checkov/bin/python || $(PYTHON) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/pip install -q 'checkov>=3.2,<4'
	touch $(STAMP)

# The web console (console/ -> console/dist, served by the gateway at /), built when Node.js
# is here; without it the gateway serves a page that says how to build it.
$(CONSOLE_STAMP): $(CONSOLE_INPUTS)
	@if command -v node >/dev/null 2>&1; then \
		cd console && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund && npm run build && touch .stamp; \
	else \
		echo "node not found: the web console is not built (install Node.js 20.19+, then make install)"; \
	fi

console: $(CONSOLE_STAMP)

install: $(STAMP) $(CONSOLE_STAMP)

# The console too (when Node.js is here): the demo offers it while the service runs.
demo: $(STAMP) $(CONSOLE_STAMP)
	$(BIN)/python -m services.cli.demo

test: $(STAMP) $(CONSOLE_STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check services tests bench harness scripts migrations
	$(BIN)/ruff format --check services tests bench harness scripts migrations
	$(BIN)/mypy

# The Docker Compose stack end to end (a private dockerd, offline images; measured 12 min cold, 4-5 min warm,
# plus ~100 s for the S3, TLS and backup/restore phases): see
# tests/deploy/test_compose_stack.py. Needs root (dockerd, apt-get for missing tools).
compose-test: $(STAMP)
	PYTHON=$(BIN)/python scripts/compose/install-host-tools.sh
	$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/deploy/test_compose_stack.py

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache console/node_modules console/dist $(CONSOLE_STAMP)
