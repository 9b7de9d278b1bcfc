# Hark: `make run` starts the server with defaults, `make test` runs every check; `make` lists all.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime

.DEFAULT_GOAL := help
.PHONY: help install dev run test lint typecheck pytest proto fixtures deps-debian bench bench-load \
	bench-playback clean

help:
	@echo 'make install    the runtime only into $(VENV) (what `make run` needs; no dev tools)'
	@echo 'make run        install, then start the server with defaults (HTTP :8080, gRPC :50051)'
	@echo 'make dev        the runtime plus the dev tools (tests, linters, proto generator)'
	@echo 'make test       dev install, then lint, typecheck and every test'
	@echo 'make lint | typecheck | pytest | proto | fixtures | bench | bench-load | bench-playback'
	@echo 'make clean      remove $(VENV) and the caches'
	@echo
	@echo 'The hark command lives in the venv: $(BIN)/hark --help (or: . $(BIN)/activate; hark).'
	@echo 'The README examples run with $(BIN)/python.'

install: $(RUNTIME_STAMP)

dev: $(STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/hark serve

test: $(STAMP)
	$(BIN)/ruff check media tests benchmarks scripts
	$(BIN)/ruff format --check media tests benchmarks scripts
	$(BIN)/mypy --strict media
	$(BIN)/pytest -q
	cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error
	tests/sdk/node_modules/.bin/tsc -p tests/sdk
	node --test tests/sdk/

# The runtime only (no dev tools): enough for `hark` and the README examples.
$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check media tests benchmarks scripts
	$(BIN)/ruff format --check media tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy --strict media

pytest: $(STAMP)
	$(BIN)/pytest -q

# Regenerates media/v1 from proto/ (code plus mypy-protobuf stubs).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

# Rebuilds the committed speech fixtures (needs espeak-ng: make deps-debian).
fixtures: $(STAMP)
	$(BIN)/python scripts/make_fixtures.py

# Debian packages the tests use: chromium for the browser tests, prometheus (promtool) for the
# deploy checks, espeak-ng for `make fixtures`. Playwright drives Debian's chromium; it never
# downloads a browser of its own.
deps-debian:
	apt-get update -qq
	apt-get install -y -qq chromium espeak-ng prometheus

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py

# Capacity against a bare aiortc receiver (several minutes; pins processes to CPUs 0 and 1).
bench-load: $(STAMP)
	$(BIN)/python benchmarks/load.py --sweep 10,25,40,50 --seconds 10

# WHEP players against a naive re-encoding relay, and first-audio latency (about 4 minutes).
bench-playback: $(STAMP)
	$(BIN)/python benchmarks/playback.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
