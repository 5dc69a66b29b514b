# infergate — the two commands a new user needs are `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
MODELS_STAMP := model_repo/.built

.PHONY: setup models serve test lint docs bench clean redis images compose-up compose-down deploy-test

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch==2.13.0 CPU build first: any other resolution pulls GBs of CUDA wheels.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[torch,sklearn,keras,embed,loadtest,triton,dev]"
	# KServe's client for the client tests, without its server's pins (see the dev extra)
	$(PIP) install -q --no-deps "kserve==0.21.0"
	@command -v redis-server >/dev/null || (apt-get update -q && apt-get install -y -q redis-server)
	@command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk) || true
	touch $(STAMP)

models: setup
	$(PY) -m service.cli convert examples --repo model_repo

serve: models
	$(VENV)/bin/infergate serve --model-repo model_repo --host 127.0.0.1 --http-port 8000 --grpc-port 8001

test: setup
	$(VENV)/bin/python -m pytest -q -ra

# --- Docker (docs/deploy-gpu.md, docs/deploy-offline.md) ---------------------------------------
# OFFLINE=auto: the offline stand-ins (deploy/offline/) only when Docker Hub does not answer
OFFLINE ?= auto
STACK := PY=$(PY) OFFLINE=$(OFFLINE) deploy/stack.sh

images: setup
	$(STACK) images

compose-up: models
	$(STACK) up

compose-down:
	$(STACK) down

# the real CPU stack on this machine's engine (skipped when none answers); not part of `make test`
deploy-test: models
	DEPLOY_TEST=1 OFFLINE=$(OFFLINE) \
		$(VENV)/bin/python -m pytest -q -ra -p no:cacheprovider tests/deploy/test_compose_up.py

docs: setup
	$(PY) -m service.cli.reference

lint:
	$(VENV)/bin/ruff check service converters loadtest bench tests deploy
	$(VENV)/bin/ruff format --check service converters loadtest bench tests deploy
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) model_repo/*/ .pytest_cache
