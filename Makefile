# certcheck: the two commands a newcomer needs are `make up` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: up test unit e2e lint control-plane browser bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Build (once, cached under ~/.cache/certcheck) or find kube-apiserver and etcd.
control-plane:
	bash devcluster/build-control-plane.sh

## Start etcd, kube-apiserver, nats-server, the CRD, the services and demo objects; Ctrl-C stops it all.
up: $(STAMP) control-plane
	$(PY) -m devcluster

## Debian's Chromium, for the inventory page's browser test (skipped, saying so, where it cannot be had).
browser:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "no Chromium: the inventory page's browser test will be skipped"

## Lint, type-check and run the whole suite against the real components.
test: $(STAMP) control-plane browser lint
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(PY) -m ruff check services schemas devcluster tests benchmarks
	$(PY) -m mypy
	$(VENV)/bin/lint-imports  # .importlinter: no service imports another

## Workload shapes against the API server's own floor, in one run (python -m benchmarks.shapes --help;
## python -m benchmarks.startup still runs the older single-shape benchmark).
bench: $(VENV)/.bench control-plane
	$(PY) -m benchmarks.shapes --sweep 50,100,200,400

$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(VENV)/.bench

clean:
	rm -rf $(VENV) .certcheck .pytest_cache .mypy_cache .ruff_cache *.egg-info
