# speculum: build, test, lint, bench. `make test` is what CI runs (.ci/run), after
# scripts/install-test-deps.sh has installed the clients and the Python venv.

CARGO ?= cargo
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Ansible paths linted when they exist.
ANSIBLE_PATHS := $(wildcard roles playbooks doc/examples/site-config/playbooks)
YAML_PATHS := $(wildcard roles playbooks zuul.d tests/ansible doc/examples/site-config)

.PHONY: all build test test-rust test-ansible lint lint-rust lint-ansible lint-shell fmt bench deps docs fuzz soak

all: build

## build: debug builds of every binary (speculum-registry, speculum)
build:
	$(CARGO) build --bins

## test: installs what the tests need (idempotent, seconds when all is there), then every
## Rust test, the Ansible tests, the documentation build, a 30 s soak and the real-Zuul
## end-to-end tests;
## all run, and it fails if any failed
test: deps
	@rc=0; \
	$(MAKE) test-rust || rc=1; \
	$(MAKE) test-ansible || rc=1; \
	$(MAKE) docs || rc=1; \
	$(MAKE) soak SOAK_SECONDS=30 || rc=1; \
	$(MAKE) e2e || rc=1; \
	exit $$rc

## test-rust: unit, in-process and real-client tests of the whole workspace (every test
## binary runs even after a failure, so one run reports every failure)
test-rust:
	$(CARGO) test --workspace --no-fail-fast

## test-ansible: pytest over tests/ansible with the binaries built (fails if it collects nothing)
test-ansible: build
	@if [ -d tests/ansible ]; then \
		$(PYTHON) -m pytest tests/ansible -q; \
	else \
		echo "test-ansible: no tests/ansible yet"; \
	fi

## fuzz: runs every parser property test for FUZZ_SECONDS each (default 60) with fresh
## random seeds (scripts/fuzz.sh; doc/reliability.md)
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## soak: pushes, pulls, retags, deletes and collections against one registry for
## SOAK_SECONDS (default 60), every tagged image checked after each step (scripts/soak.py)
SOAK_SECONDS ?= 60
soak: build
	/usr/bin/python3 scripts/soak.py --seconds $(SOAK_SECONDS)

## lint: rustfmt, clippy with warnings denied, ansible-lint, yamllint and shellcheck
lint: lint-rust lint-ansible lint-shell

lint-rust:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint-shell:
	shellcheck -x scripts/*.sh scripts/lib/*.sh scripts/stores/*

lint-ansible:
	@if [ -n "$(ANSIBLE_PATHS)" ]; then \
		echo "$(VENV)/bin/ansible-lint $(ANSIBLE_PATHS)"; \
		$(VENV)/bin/ansible-lint $(ANSIBLE_PATHS); \
	fi
	@if [ -n "$(YAML_PATHS)" ] && [ -f .yamllint ]; then \
		echo "$(VENV)/bin/yamllint $(YAML_PATHS)"; \
		$(VENV)/bin/yamllint $(YAML_PATHS); \
	fi

fmt:
	$(CARGO) fmt --all

## docs: the role and job reference and the site guide with Sphinx and zuul-sphinx, the
## image-flow sequence diagram rendered with PlantUML (Debian); warnings are errors
docs:
	mkdir -p doc/source/_generated
	plantuml -tpng -o "$(CURDIR)/doc/source/_generated" doc/source/image-flow.puml
	$(VENV)/bin/sphinx-build -W -q -b html doc/source doc/build/html

## bench: the benchmark suite of issue 10 against distribution and zuul-registry: installs
## what it needs (scripts/install-bench-deps.sh, idempotent), builds the release binaries,
## runs bench/run.py and writes doc/benchmarks.md and doc/benchmarks.png (under 15 minutes
## from a fresh clone on 2 cores). Not part of `make test`. BENCH_ARGS passes options,
## e.g. BENCH_ARGS='--only 1,4 --runs 1' (a partial run writes into bench/out instead)
BENCH_ARGS ?=
bench: export SPECULUM_BENCH_STARTED := $(shell date +%s)
bench:
	scripts/install-bench-deps.sh
	$(CARGO) build --release --bins
	/usr/bin/python3 bench/run.py $(BENCH_ARGS)

## deps: install the Debian packages and the venv the tests need
deps:
	scripts/install-test-deps.sh

## e2e: our Zuul jobs under a real Zuul (scheduler, executor, web, launcher, ZooKeeper,
## PostgreSQL, a static node) in a network namespace of its own; needs root. Installs
## what it needs first (scripts/install-e2e-deps.sh: a few minutes once, seconds after).
# Bounded so that CI (90 minutes for everything) ends even if Zuul hangs.
E2E_TIMEOUT ?= 2400
.PHONY: e2e
e2e: build
	scripts/install-e2e-deps.sh
	timeout --signal=INT --kill-after=180 $(E2E_TIMEOUT) $(PYTHON) -m pytest tests/zuul -v -p no:cacheprovider $(E2E_ARGS)
