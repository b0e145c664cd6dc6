# twinbox developer entry points. See README.md.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all setup deps build kernel test lint bench

## all: set everything up on a fresh machine and run the main job.
all: setup
	@echo "twinbox is built: target/x86_64-unknown-linux-gnu/release/twinbox"

## setup: install Debian packages, build twinbox (release) and the guest kernel.
setup: deps build kernel

deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make setup needs root (apt-get install)"; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		$$(grep -v '^#' .ci/apt-packages) >/dev/null

build:
	$(CARGO) build --workspace --release

## kernel: build the guest kernel into target/guest-kernel/ (once; cached by config hash).
kernel:
	guest/kernel/build.sh >/dev/null

## test: the whole test suite, as root, on this machine kind.
test:
	$(CARGO) build --workspace
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: build
	$(CARGO) bench --workspace
