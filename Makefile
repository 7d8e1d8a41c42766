# The two commands a newcomer needs:
#   make demo   set up (venv, dependencies, stubs, data sets) and run the whole suite end to end
#   make test   set up and run every test (what CI runs)

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# MovieLens-100k rides in recbole's wheel (dataset_example/ml-100k/ml-100k.inter).
RECBOLE := recbole==1.2.1

.PHONY: setup data movielens demo up test deploy-check test-unit test-integration test-faults lint format protos protos-check bench clean

setup: $(STAMP) data movielens

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "mlmesh needs Python 3.11, found " + sys.version)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist when we can install it;
# otherwise mlmesh.data falls back to MLMESH_DATA or Keras's downloader.
data:
	@if [ -z "$$MLMESH_DATA" ] && [ ! -f $(FASHION) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# --no-deps: recbole is only the carrier of the file and mlmesh never imports it (it
# would import torch). Outside the stamp so that an existing venv gets it too; pip
# returns at once when it is already installed.
movielens: $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(RECBOLE)

demo: setup
	$(VENV)/bin/mlmesh demo

up: setup
	$(VENV)/bin/mlmesh up

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

protos-check: $(STAMP)
	$(PY) scripts/gen_protos.py --check

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup protos-check lint deploy-check
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest -m unit

test-integration: setup
	$(PY) -m pytest -m integration

test-faults: setup
	$(PY) -m pytest -m faults

# deploy/: render every kustomize overlay and component, validate the objects against the
# Kubernetes schemas, lint the Dockerfiles (hadolint), validate the compose file and the Argo
# workflow (deploy/check.py). Tools: the `deploy` extra (outside the stamp, like `bench`) and a
# kustomize: kubectl's (`kubectl kustomize`, Debian package kubectl from the machine's apt
# sources, installed when root and missing) or a standalone `kustomize` on PATH.
deploy-check: setup
	$(PY) -m pip install --quiet -e '.[deploy]'
	@if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing kubectl (for kubectl kustomize) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null; \
	fi
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) deploy/check.py

# The peers the benchmarks compare against (the `bench` extra: tf_keras, Ray Serve) and h2load,
# the load generator of benchmarks/serving.py (Debian's nghttp2-client, installed when root).
bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	@if ! command -v h2load >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing nghttp2-client (h2load) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; \
	fi
	@mkdir -p benchmarks/results; for b in benchmarks/[!_]*.py; do $(PY) $$b --json benchmarks/results/$$(basename $$b .py).json || exit 1; done

clean:
	rm -rf .mlmesh .pytest_cache .ruff_cache
