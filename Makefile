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

# Debian packages the tests use: chromium and firefox-esr for the browser tests, GStreamer's
# webrtcbin with python3-gi for the interop tests, redis-server for the cluster tests, prometheus
# (promtool) for the deploy checks, espeak-ng and sox for `make fixtures`. The SDK checks need
# node (18 or newer) with npm: Debian's nodejs and npm if the machine has no node yet.
# Playwright drives Debian's chromium; nothing downloads a browser of its own.
DEBIAN_PACKAGES := make python3-venv chromium firefox-esr espeak-ng sox prometheus redis-server \
	python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-nice
deps-debian:
	apt-get update -qq
	apt-get install -y -qq $(DEBIAN_PACKAGES)

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
