# Two commands on a fresh Debian/Ubuntu machine: `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A .env file (read by the settings too) may set REDIS_URL and PORT; the command line wins over both.
-include .env
PORT ?= 8000
REDIS_URL ?= redis://127.0.0.1:6379/0
MODELS ?= hub
TINY_MODELS_DIR ?= .cache/tiny-models
export REDIS_URL PORT

.PHONY: setup system-deps test-deps redis up test test-fast lint tiny-models bench clean

## setup: prepare .venv (and the system packages it needs: python3-venv, ffmpeg, redis-server)
setup: system-deps $(VENV)/.installed

system-deps:
	@scripts/install-system-deps.sh run

test-deps:
	@scripts/install-system-deps.sh test

# uv installs the same pinned requirements as pip, bytecode compiled on every core (measured on 2 cores,
# a fresh venv: 42 s against pip's 150 s); the bytecode matters where PYTHONDONTWRITEBYTECODE is set
# (each import of torch would then compile it again: 18 s against 7 s). pip's own find-links (the
# local torch wheel) is passed on, and plain pip is the fallback.
UV_VERSION ?= 0.13.9
$(VENV)/.installed: requirements/web.txt requirements/worker.txt requirements/dev.txt
	@test -x $(VENV)/bin/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); } || { rm -rf $(VENV); exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION) \
	  && $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) -r requirements/dev.txt \
	  || $(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	@touch $@

## redis: start a local redis-server when none answers at REDIS_URL
redis:
	@scripts/ensure-redis.sh "$(REDIS_URL)"

tiny-models: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m worker.tiny_models --out $(TINY_MODELS_DIR)

## up: web app on PORT, one worker and the webhooks worker; MODELS=tiny uses the offline tiny models
up: setup redis
	@MODELS=$(MODELS) TINY_MODELS_DIR=$(TINY_MODELS_DIR) VENV=$(VENV) scripts/up.sh

# PYTHONDONTWRITEBYTECODE emptied: where the environment sets it, every test process and every worker it
# starts would compile the project's modules again and pytest rewrite every test module again (collection:
# 7.0 s a process without the cache, 3.8 s with it, on 2 cores).
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 REQUIRE_SYSTEM_TOOLS=1 PYTHONDONTWRITEBYTECODE=
# One test process more than cores: most tests spend their time waiting on the servers and workers
# they start (measured on 2 cores: the parallel part took 241 s with 3 processes, 296 s with 2).
TEST_PROCESSES ?= $(shell echo $$(( $$(nproc) + 1 )))
## test: install, start what the tests need, run every test (none may skip for a missing tool):
## most in parallel (one process per core), then those that time real processes, alone
## (--dist loadgroup: a module whose tests share one worker process, xdist_group, runs in one process);
## each part ends with its slowest tests, so a CI log says where the time went. The linters (mypy: 16 s
## on a clean clone) run beside the parallel part, whose tests spend part of their time waiting; their
## output follows that part's, and their failure fails the target all the same.
test: setup test-deps redis
	@$(MAKE) --no-print-directory lint > .lint.log 2>&1 & lint=$$!; \
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup -m "not serial" --durations=15; tests=$$?; \
	wait $$lint; linted=$$?; cat .lint.log; rm -f .lint.log; \
	[ $$linted -eq 0 ] || echo "make test: lint failed" >&2; [ $$tests -eq 0 ] && [ $$linted -eq 0 ]
	$(TEST_ENV) $(PY) -m pytest -q -m serial --durations=7

## test-fast: the tests that start no worker, server, CLI or browser process and take seconds (under
## 2 minutes on 2 cores); `make test` runs them too, with everything else
test-fast: setup redis
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup -m "not process and not serial and not slow"

## lint: ruff (lint and format check) and mypy, as configured in pyproject.toml
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m worker.bench

clean:
	rm -rf $(VENV) .cache .pytest_cache
