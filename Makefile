# pycri: the commands a newcomer needs on a fresh Debian 12 machine, as root:
#   make run    installs what pycri needs and runs the daemon in the foreground
#   make test   installs the same and runs the whole test suite
#   make check  `make test`, then the node VM lane (`make test-node-vm`)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CNI_CONF_DIR ?= /etc/cni/net.d
# Host tools pycri drives, all from Debian's archive.
HOST_PACKAGES := runc crun conmon containernetworking-plugins iptables catatonit util-linux \
                 busybox-static docker-registry openssl apache2-utils curl iproute2 kmod
# What `make image` builds the pycri container image with (image/build.py).
IMAGE_PACKAGES := debootstrap
# What only the tests use: chromium opens `pycri timeline --svg` in a real browser.
TEST_PACKAGES := chromium
# make test-node-vm: qemu boots the node VM, debootstrap builds its disk.
NODE_VM_PACKAGES := qemu-system-x86 debootstrap
# Python venv support, only needed on minimal images.
VENV_PACKAGES := python3-venv

.PHONY: run check test lint image install install-host install-test-host install-python install-cni-default unit integration bench stubs clean test-node-vm

run: install
	$(VENV)/bin/pycri check || true
	exec $(VENV)/bin/pycri daemon

# One after the other, also under `make -j`: the VM would starve the host's tests of CPU.
check:
	$(MAKE) --no-print-directory test
	$(MAKE) --no-print-directory test-node-vm

# On this host: lint, unit tests, integration tests.
test: install install-test-host lint
	$(PY) -m pytest -p no:cacheprovider -ra tests

# ruff on everything, mypy strict on the core, OCI, host, storage and network rooms (pyproject.toml); `make test`
# runs it first.
lint: install-python
	$(VENV)/bin/ruff check --no-cache
	$(VENV)/bin/mypy

unit: install-python
	$(PY) -m pytest -p no:cacheprovider -ra tests/unit

integration: install install-test-host
	$(PY) -m pytest -p no:cacheprovider -ra -m integration tests/integration

install: install-host install-python install-cni-default

# The node VM lane (conformance/nodevm): integration tests and critest (runc, crun) inside a Debian
# 12 VM with systemd, cgroup v2 and AppArmor, under qemu; its disk is cached in /var/tmp.
test-node-vm: install-python
	@$(MAKE) --no-print-directory install-host HOST_PACKAGES="$(NODE_VM_PACKAGES)"
	$(PY) -m conformance.nodevm lane

# The pycri container image as an OCI archive, build/pycri-image.tar (docker.io/pycri/pycri:<version>), from
# Debian's packages and this tree's wheels; `pycri image import` or `ctr images import` loads it on a node.
image: install-python
	@$(MAKE) --no-print-directory install-host HOST_PACKAGES="$(IMAGE_PACKAGES)"
	$(PY) image/build.py --output build/pycri-image.tar

# Installs only what is missing; maintainer scripts may not start daemons (policy-rc.d), since
# Debian's docker-registry unit would listen on every interface.
install-host:
	@missing=""; for p in $(HOST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get update -qq && apt-get install -y -qq $$missing; }; rc=$$?; \
	  rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

install-test-host:
	@$(MAKE) --no-print-directory install-host HOST_PACKAGES="$(TEST_PACKAGES)"

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { apt-get install -y -qq $(VENV_PACKAGES) && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

install-python: $(VENV)/.installed

# A default bridge network (pycri0, 10.88.0.0/16) when none is configured, as CRI-O's packages ship one.
install-cni-default:
	@mkdir -p $(CNI_CONF_DIR)
	@if ! ls $(CNI_CONF_DIR)/*.conf $(CNI_CONF_DIR)/*.conflist $(CNI_CONF_DIR)/*.json >/dev/null 2>&1; then \
	  install -m 0644 cri/default-bridge.conflist $(CNI_CONF_DIR)/10-pycri-bridge.conflist; \
	  echo "installed the default CNI network $(CNI_CONF_DIR)/10-pycri-bridge.conflist"; \
	fi

# Regenerates the checked-in CRI stubs from the vendored proto (its header names the cri-api tag and commit).
stubs: install-python
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[stubs]'
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. cri/api/v1/api.proto

bench: install
	$(PY) bench/rpc_latency.py

clean:
	rm -rf $(VENV) *.egg-info
