# speculum: build, test, lint, bench. `make test` is what CI runs (.ci/run), after
# scripts/install-test-deps.sh has installed the clients and the Python venv.

CARGO ?= cargo
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Ansible paths linted when they exist.
ANSIBLE_PATHS := $(wildcard roles playbooks)
YAML_PATHS := $(wildcard roles playbooks zuul.d tests/ansible)

.PHONY: all build test test-rust test-ansible lint lint-rust lint-ansible fmt bench deps

all: build

## build: debug builds of every binary (speculum-registry, speculum)
build:
	$(CARGO) build --bins

## test: every Rust test, then the Ansible tests; both run, and it fails if either failed
test:
	@rc=0; \
	$(MAKE) test-rust || rc=1; \
	$(MAKE) test-ansible || rc=1; \
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

## lint: rustfmt, clippy with warnings denied, ansible-lint and yamllint
lint: lint-rust lint-ansible

lint-rust:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

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

## bench: push/pull timings against peer registries (release build; writes bench/out)
bench:
	bench/registry.sh

## deps: install the Debian packages and the venv the tests need
deps:
	scripts/install-test-deps.sh
