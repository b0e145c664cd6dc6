# twinbox developer entry points. See README.md.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all setup deps build kernel test lint bench demo

TWINBOX ?= target/x86_64-unknown-linux-gnu/release/twinbox
DEMO ?= target/demo

## all: set everything up on a fresh machine and run the main job (the demo comparison).
all: setup demo

## demo: the main job. Builds a busybox image locally (no registry needed) and runs
## `twinbox compare` on it: container mode and the installed peers measured side by side;
## the report (table, JSON, HTML with plots) lands in target/demo/report/.
demo:
	rm -rf $(DEMO)/rootfs && mkdir -p $(DEMO)/rootfs/bin $(DEMO)/rootfs/etc $(DEMO)/rootfs/tmp
	cp /bin/busybox $(DEMO)/rootfs/bin/busybox
	for applet in $$(/bin/busybox --list); do \
		[ -e $(DEMO)/rootfs/bin/$$applet ] || ln -s busybox $(DEMO)/rootfs/bin/$$applet; done
	echo 'root:x:0:0:root:/root:/bin/sh' > $(DEMO)/rootfs/etc/passwd
	echo 'root:x:0:' > $(DEMO)/rootfs/etc/group
	tar -C $(DEMO)/rootfs -cf $(DEMO)/busybox.tar .
	$(TWINBOX) --root $(DEMO)/store import $(DEMO)/busybox.tar demo-busybox:latest >/dev/null
	$(TWINBOX) --root $(DEMO)/store compare demo-busybox:latest --runs 20 --density 10 \
		--out $(DEMO)/report
	@echo "report: $(DEMO)/report/report.html"

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
