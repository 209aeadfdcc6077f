# rekey: `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
CARGO_BIN := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The Kafka-protocol broker used by the demo and the end-to-end tests (see shared BROKER.md).
TANSU_VERSION := 0.6.0
TANSU_FEATURES := libsql,dynostore,postgres
# nextest profile from .config/nextest.toml (`ci` in .ci/run).
NEXTEST_PROFILE ?= default
# Extra arguments for `make demo`, e.g. `make demo DEMO_ARGS="--duration 60 --rate 300"`.
DEMO_ARGS ?=

export PATH := $(CARGO_BIN):$(PATH)
export DEBIAN_FRONTEND := noninteractive

.PHONY: help tools build test demo lint fmt clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "}; {printf "  %-8s %s\n", $$1, $$2}'

tools: ## Install what is missing: tansu broker, cargo-nextest, PostgreSQL 15 server
	@if tansu --version >/dev/null 2>&1 || [ -x "$(CARGO_BIN)/tansu" ]; then \
	  echo "tools: tansu present ($$(command -v tansu || echo $(CARGO_BIN)/tansu))"; \
	else \
	  echo "tools: installing tansu $(TANSU_VERSION) (about 10 minutes on 2 cores)"; \
	  $(CARGO) install tansu --version $(TANSU_VERSION) --locked --features $(TANSU_FEATURES); \
	fi
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  echo "tools: cargo-nextest present"; \
	else \
	  echo "tools: installing cargo-nextest"; \
	  $(CARGO) install cargo-nextest --locked; \
	fi
	@bindir="$$(pg_config --bindir 2>/dev/null || true)"; \
	if [ -x "$$bindir/initdb" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "tools: PostgreSQL server present ($${bindir:-/usr/lib/postgresql/*/bin})"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "tools: installing PostgreSQL 15 server"; \
	  apt-get update -q && { apt-get install -y -q postgresql-15 || apt-get install -y -q postgresql; }; \
	else \
	  echo "tools: PostgreSQL server binaries (initdb) missing: install postgresql-15, e.g. sudo apt-get install -y postgresql-15" >&2; \
	  exit 1; \
	fi
	@if [ "$$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then \
	  echo "tools: running as root and there is no 'postgres' OS user to run test clusters as" >&2; \
	  exit 1; \
	fi

build: ## Build the binaries (debug)
	$(CARGO) build --workspace --bins

# Binaries and tests in one build, so both share one feature resolution; the end-to-end
# tests run the binaries from target/debug.
test: tools ## Build, then run every test (unit, integration, end-to-end) with nextest
	$(CARGO) build --workspace --bins --tests
	$(CARGO) nextest run --workspace --no-fail-fast --profile $(NEXTEST_PROFILE)

demo: tools ## Run the demo (release build): make demo DEMO_ARGS="..."
	$(CARGO) build --release --workspace --bins
	$(TARGET_DIR)/release/rekey-demo $(DEMO_ARGS)

lint: ## Check formatting and clippy warnings
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output
	$(CARGO) clean
