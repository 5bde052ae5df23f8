# AITBC Agent Coordinator — build, lint and test tooling (GNU make).
#
#   make help          list targets
#   make install       venv in $(VENV) with the package (editable) + dev tools, buf and protoc-gen-es
#   make test          check-protos + lint + pytest
#
# Everything is installed under $(VENV): Python packages in the venv itself, Node
# tools (buf, protoc-gen-es) under $(VENV)/node. The Node agent example keeps its own
# packages in examples/node-agent/node_modules.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON3 ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

VENV_STAMP := $(VENV)/.install.stamp

BUF_VERSION := 1.75.0
# protoc-gen-es writes generated/js. 2.6.3 is the newest release that still runs on Node 18
# (Debian 12's nodejs); later ones need Node 20 or 22. It must equal the @bufbuild/protobuf
# runtime pinned in examples/node-agent/package.json.
PROTOC_GEN_ES_VERSION := 2.6.3
NODE_PREFIX := $(VENV)/node
BUF := $(NODE_PREFIX)/node_modules/.bin/buf
PROTOC_GEN_ES := $(NODE_PREFIX)/node_modules/.bin/protoc-gen-es
# One stamp for both: a second `npm install --prefix` would remove what the first installed.
BUF_STAMP := $(NODE_PREFIX)/.buf-$(BUF_VERSION)-es-$(PROTOC_GEN_ES_VERSION).stamp

NODE_AGENT_DIR := examples/node-agent
NODE_AGENT_STAMP := $(NODE_AGENT_DIR)/node_modules/.npm-ci.stamp

PROTO_DIR := protos
GEN_DIR := generated/python
GEN_JS_DIR := generated/js
DESCRIPTOR_SET := aitbc/coordinator/v1/descriptor_set.binpb
# Sorted so the descriptor set (and everything else) is byte-for-byte reproducible.
PROTO_FILES := $(shell find $(PROTO_DIR) -type f -name '*.proto' 2>/dev/null | LC_ALL=C sort)

LINT_PATHS := src tests $(wildcard bench)

# $(call gen_protos,OUT_DIR): the one protoc invocation shared by `protos` and
# `check-protos` (so they cannot drift). OUT_DIR must not exist yet, or be empty.
# Writes *_pb2.py, *_pb2.pyi, *_pb2_grpc.py, the descriptor set (with comments, for
# server reflection / `grpcurl describe`) and an empty __init__.py in every package dir.
define gen_protos
if [ -z "$(PROTO_FILES)" ]; then echo "error: no .proto files under $(PROTO_DIR)/" >&2; exit 1; fi; \
mkdir -p "$(1)/$(dir $(DESCRIPTOR_SET))"; \
$(PY) -m grpc_tools.protoc -I $(PROTO_DIR) \
	--python_out="$(1)" --pyi_out="$(1)" --grpc_python_out="$(1)" \
	--descriptor_set_out="$(1)/$(DESCRIPTOR_SET)" --include_source_info --include_imports \
	$(PROTO_FILES); \
find "$(1)" -mindepth 1 -type d -exec sh -c ': > "$$1/__init__.py"' sh {} \;
endef

# $(call gen_js_protos,OUT_DIR): JavaScript for Node, shared by `protos` and `check-protos`.
# buf compiles protos/ and runs protoc-gen-es: *_pb.js (CommonJS, runtime @bufbuild/protobuf)
# and *_pb.d.ts (TypeScript declarations, with the proto comments) for both files.
GEN_JS_TEMPLATE := {"version": "v2", "plugins": [{"local": "$(abspath $(PROTOC_GEN_ES))", "out": ".", "opt": ["target=js+dts", "js_import_style=legacy_commonjs"]}]}
define gen_js_protos
$(BUF) generate $(PROTO_DIR) --template '$(GEN_JS_TEMPLATE)' --output "$(1)"
endef

# The editable install maps only the top-level packages that existed when it ran. If
# src/coordinator/__init__.py or generated/python/aitbc/__init__.py appeared since
# (first `make protos`, new checkout), refresh it: quick, changes no dependency.
TOP_PACKAGES := coordinator=$(abspath src/coordinator/__init__.py) aitbc=$(abspath $(GEN_DIR)/aitbc/__init__.py)
define ensure_editable
if ! $(PY) -I -c 'import importlib.util as u, os, sys; sys.exit(any(os.path.exists(f) and u.find_spec(m) is None for m, f in (a.split("=", 1) for a in sys.argv[1:])))' $(TOP_PACKAGES); then \
	echo "Refreshing the editable install (new top-level package)"; \
	$(PY) -m pip install --quiet --quiet --no-deps -e .; \
fi
endef

.PHONY: help install run test test-properties protos check-protos lint bench bench-unary bench-discovery clean check-redis

help: ## List targets
	@echo "Usage: make <target> [VENV=.venv] [ARGS=...] [PYTEST_ARGS=...]"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(firstword $(MAKEFILE_LIST)) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-16s %s\n", $$1, $$2}'

install: $(VENV_STAMP) $(BUF_STAMP) ## Create the venv (VENV=.venv), pip install -e '.[dev]', install buf and protoc-gen-es
	@$(ensure_editable)

# Re-runs whenever pyproject.toml changes.
$(VENV_STAMP): pyproject.toml
	@if ! { [ -f $(VENV)/bin/activate ] && $(PY) -m pip --version >/dev/null 2>&1; }; then \
		echo "Creating virtualenv $(VENV) with $$(command -v $(PYTHON3) || echo $(PYTHON3))"; \
		if ! $(PYTHON3) -m venv $(VENV); then \
			echo >&2; \
			echo "error: '$(PYTHON3) -m venv $(VENV)' failed." >&2; \
			echo "       On Debian/Ubuntu install the venv module first:  apt-get install python3-venv" >&2; \
			exit 1; \
		fi; \
	fi
	$(PY) -m pip install --quiet --quiet --upgrade pip
	$(PY) -m pip install --quiet --quiet --progress-bar off -e '.[dev]'
	@touch $@

$(BUF_STAMP):
	@command -v npm >/dev/null 2>&1 || { \
		echo "error: npm not found; install Node.js and npm (apt-get install nodejs npm)" >&2; exit 1; }
	@# --prefix also moves npm's global config to $(NODE_PREFIX)/etc/npmrc; keep the machine's
	@# (registry, proxy, cafile settings) in force.
	npm install --globalconfig "$$(npm config get globalconfig)" \
		--prefix $(NODE_PREFIX) --no-save --no-audit --no-fund \
		@bufbuild/buf@$(BUF_VERSION) @bufbuild/protoc-gen-es@$(PROTOC_GEN_ES_VERSION)
	@$(BUF) --version >/dev/null
	@$(PROTOC_GEN_ES) --version >/dev/null
	@touch $@

# The Node agent example's packages, exactly as its package-lock.json says (once per lock).
$(NODE_AGENT_STAMP): $(NODE_AGENT_DIR)/package.json $(NODE_AGENT_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		echo "error: npm not found; install Node.js and npm (apt-get install nodejs npm)" >&2; exit 1; }
	cd $(NODE_AGENT_DIR) && npm ci --no-audit --no-fund
	@touch $@

check-redis: ## Make sure redis-server is on PATH (apt-get installs it if possible)
	@if command -v redis-server >/dev/null 2>&1; then exit 0; fi; \
	echo "redis-server is not on PATH; trying to install it with apt-get"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; \
	else echo "error: redis-server is missing and cannot be installed (not root, no sudo)." >&2; \
		echo "       Install it yourself: apt-get install redis-server" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "error: redis-server is missing and apt-get is not available; install redis-server yourself." >&2; exit 1; fi; \
	$$SUDO apt-get update; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
	command -v redis-server >/dev/null 2>&1 || { echo "error: redis-server still not on PATH" >&2; exit 1; }

run: install check-redis ## Run the server with a private redis-server (extra flags: ARGS=...)
	$(PY) -m coordinator serve --private-redis $(ARGS)

test: install check-redis $(NODE_AGENT_STAMP) check-protos lint ## check-protos + lint + pytest (extra flags: PYTEST_ARGS=...)
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests (exit code 5)" >&2; fi; \
	exit $$rc

# make test runs the property tests with the "ci" Hypothesis profile (a fixed, derandomized
# budget); this runs the "long" one: many more random examples, shrunk when one fails.
test-properties: install check-redis ## Property tests of the gRPC contract, long budget (HYPOTHESIS_MAX_EXAMPLES=N)
	HYPOTHESIS_PROFILE=long $(PY) -m pytest tests/test_contract_properties.py $(PYTEST_ARGS)

protos: $(VENV_STAMP) $(BUF_STAMP) ## Regenerate generated/python and generated/js from protos/**/*.proto
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(call gen_protos,$$tmp/python); \
	$(call gen_js_protos,$$tmp/js); \
	rm -rf $(GEN_DIR) $(GEN_JS_DIR); mkdir -p $(dir $(GEN_DIR)); \
	mv "$$tmp/python" $(GEN_DIR); \
	mv "$$tmp/js" $(GEN_JS_DIR); \
	echo "Regenerated $(GEN_DIR) and $(GEN_JS_DIR) from: $(PROTO_FILES)"
	@$(ensure_editable)

check-protos: $(VENV_STAMP) $(BUF_STAMP) ## Fail if generated/ is not what `make protos` would write
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(call gen_protos,$$tmp/python); \
	$(call gen_js_protos,$$tmp/js); \
	if diff -r -x __pycache__ -x '*.pyc' "$$tmp/python" $(GEN_DIR) > "$$tmp/diff.txt" 2>&1 \
		&& diff -r "$$tmp/js" $(GEN_JS_DIR) >> "$$tmp/diff.txt" 2>&1; then \
		echo "check-protos: $(GEN_DIR) and $(GEN_JS_DIR) are up to date"; \
	else \
		head -n 40 "$$tmp/diff.txt" >&2; \
		echo "generated/ is stale: run make protos" >&2; \
		exit 1; \
	fi

lint: install ## ruff check, ruff format --check, mypy, buf lint
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy
	cd $(PROTO_DIR) && $(abspath $(BUF)) lint

# arq (the baseline of `make bench`) needs redis-py < 6: its own venv, exact pins.
BENCH_ARQ_VENV := $(VENV)/bench-arq
BENCH_ARQ_STAMP := $(BENCH_ARQ_VENV)/.install.stamp

$(BENCH_ARQ_STAMP): bench/arq-requirements.txt
	@[ -x $(BENCH_ARQ_VENV)/bin/python ] || $(PYTHON3) -m venv $(BENCH_ARQ_VENV)
	$(BENCH_ARQ_VENV)/bin/python -m pip install --quiet --quiet --progress-bar off -r bench/arq-requirements.txt
	@touch $@

# Celery (the other baseline) in its own venv too, exact pins, like arq's.
BENCH_CELERY_VENV := $(VENV)/bench-celery
BENCH_CELERY_STAMP := $(BENCH_CELERY_VENV)/.install.stamp

$(BENCH_CELERY_STAMP): bench/celery-requirements.txt
	@[ -x $(BENCH_CELERY_VENV)/bin/python ] || $(PYTHON3) -m venv $(BENCH_CELERY_VENV)
	$(BENCH_CELERY_VENV)/bin/python -m pip install --quiet --quiet --progress-bar off -r bench/celery-requirements.txt
	@touch $@

BENCH_BASELINES := --arq-python $(BENCH_ARQ_VENV)/bin/python --celery-python $(BENCH_CELERY_VENV)/bin/python

bench: install check-redis $(BENCH_ARQ_STAMP) $(BENCH_CELERY_STAMP) ## Run the task benchmarks, bench/run_benchmarks.py (ARGS=--quick: smoke run)
	$(PY) bench/run_benchmarks.py $(BENCH_BASELINES) $(ARGS)

bench-unary: install check-redis $(BENCH_ARQ_STAMP) $(BENCH_CELERY_STAMP) ## Issue 17's unary-path targets beside the batched figures (ARGS=--quick ...)
	$(PY) bench/run_benchmarks.py $(BENCH_BASELINES) --scenarios unary $(ARGS)

bench-discovery: install check-redis ## Run bench/discovery_scale.py (extra flags: ARGS=...)
	$(PY) bench/discovery_scale.py $(ARGS)

clean: ## Remove the venv, .state and caches (keeps generated/)
	rm -rf -- "$(VENV)" .state .pytest_cache .mypy_cache .ruff_cache build dist
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +
