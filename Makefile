# cellmesh — one-command set-up and test. Run as root on Debian 12 (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEB_PACKAGES := etcd-server etcd-client clang llvm libbpf-dev bpftool iproute2 openssl
APT_STAMP := .setup-stamp-apt
VENV_STAMP := .setup-stamp-venv

.PHONY: setup test lint unit proto proto-check clean demo demo-down bench

setup: $(APT_STAMP) $(VENV_STAMP) bpf/sock_lb.o

# The eBPF socket load balancer (see ../shared/DEPENDENCIES.md for the flags).
bpf/sock_lb.o: bpf/sock_lb.c bpf/lb_maps.h $(APT_STAMP)
	clang -O2 -g -Wall -Werror -target bpf -I/usr/include/x86_64-linux-gnu -c $< -o $@

# apt-get update runs once (when a package is missing), never on every test run. kubectl (for
# `kubectl kustomize` of deploy/) comes with the machine image; Debian's kubernetes-client otherwise.
$(APT_STAMP):
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(VENV_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# Regenerate the protobuf code (committed; `proto-check` fails when it is stale).
proto: $(VENV_STAMP)
	cd meshcore/wire && PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/python -m grpc_tools.protoc \
	  -I. --python_out=. --mypy_out=. cellmesh.proto

proto-check: $(VENV_STAMP)
	@tmp=$$(mktemp -d); cp meshcore/wire/cellmesh.proto $$tmp/; \
	(cd $$tmp && PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/python -m grpc_tools.protoc \
	  -I. --python_out=. --mypy_out=. cellmesh.proto >/dev/null) && \
	diff -q $$tmp/cellmesh_pb2.py meshcore/wire/cellmesh_pb2.py && \
	diff -q $$tmp/cellmesh_pb2.pyi meshcore/wire/cellmesh_pb2.pyi; rc=$$?; rm -rf $$tmp; \
	if [ $$rc -ne 0 ]; then echo "generated protobuf code is stale: run 'make proto'"; exit 1; fi

lint: setup proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict meshcore meshapi nodeagent bpf certs meshctl e2e bench
	$(BIN)/lint-imports

# grpc-core logs every refused handshake; the authorization tests make many on purpose.
unit: setup
	GRPC_VERBOSITY=ERROR $(BIN)/pytest -q --durations=15

test: setup lint unit

# The benchmarks, as root (docs/benchmarks.md): each script prints ONE JSON line. `make test`
# runs the quick ratio check of bench/bpf_maps.py and a reduced bench/scale_peer.py (tests/bench).
bench: setup
	$(BIN)/python bench/bpf_maps.py
	$(BIN)/python bench/agent_propagation.py
	$(BIN)/python bench/scale_peer.py
	$(BIN)/python bench/wipe_recovery.py
	$(BIN)/python bench/kube_source.py

# The local two-cell lab, connected, with a global demo service, checked by the connectivity
# suite; it stays up for you to explore (`make demo-down` or `meshctl lab down` removes it).
DEMO := --name demo
MESHCTL := $(BIN)/meshctl
demo: setup
	$(MESHCTL) lab down $(DEMO)
	$(MESHCTL) lab up $(DEMO) --cells 2 --nodes 2 --pods-per-node 2 --wait
	$(MESHCTL) connect --context demo-alpha --destination-context demo-beta
	$(MESHCTL) --context demo-alpha apply -f deploy/demo/echo-service.yaml
	$(MESHCTL) --context demo-beta apply -f deploy/demo/echo-service.yaml
	$(MESHCTL) status --context demo-alpha --wait --wait-duration 2m
	$(MESHCTL) status --context demo-beta --wait --wait-duration 2m
	$(MESHCTL) connectivity test --multi-cluster --lab demo --context demo-alpha \
	  --destination-context demo-beta --include-disruptive
	$(MESHCTL) lab status $(DEMO)
	$(MESHCTL) status --context demo-alpha

demo-down: setup
	$(MESHCTL) lab down $(DEMO)

clean:
	rm -rf $(VENV) $(APT_STAMP) $(VENV_STAMP) .mypy_cache .ruff_cache .pytest_cache
