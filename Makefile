# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BRANCH ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo main)

.PHONY: install demo test controlplane image bench bench-kube docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,test]'
	touch $@

install: $(STAMP)

demo: install
	@echo "ray-gitops demo: reconciling environments/local/ of branch $(BRANCH) on the local Ray target."
	@echo "  metrics:  curl -s 127.0.0.1:9464/metrics | grep ray_gitops_raycluster_workers"
	@echo "  try:      edit environments/local/raycluster.yaml (replicas: 2), then git commit -am 'two workers'"
	@echo "  then:     cp examples/rayjob-pi.yaml environments/local/ && git add -A && git commit -m job"
	@echo "  serve:    cp examples/rayservice-hello.yaml environments/local/ && git add -A && git commit -m serve"
	@echo "  undo:     git revert <sha>;  status: .venv/bin/ray-gitops status --state-dir .state;  stop: Ctrl-C"
	$(BIN)/ray-gitops run --repo . --branch $(BRANCH) --environment local --interval 5s \
		--state-dir .state --metrics-address 127.0.0.1:9464

# Builds kube-apiserver + etcd from Go modules once (cached outside the repo), then runs everything.
controlplane:
	bash tests/controlplane/build.sh >/dev/null

test: install controlplane
	$(BIN)/python -m pytest

# The daemon image, built with podman on a Debian base (no Docker engine or registry needed).
image:
	bash tests/image/build.sh

bench: install
	$(BIN)/python bench/render_plan.py

# N = 30, 300, 1000 environments on the test control plane against kubectl apply --server-side (about 30 min).
bench-kube: install controlplane
	$(BIN)/python bench/kube_scale.py

# docs/settings.md is made from reconciler/service/settings.py (a unit test fails when it is stale).
docs: install
	$(BIN)/python -m reconciler.service.settings > docs/settings.md

clean:
	rm -rf $(VENV) .state
