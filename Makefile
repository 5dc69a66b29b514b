# infergate — the two commands a new user needs are `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
MODELS_STAMP := model_repo/.built

.PHONY: setup models serve test lint docs bench clean redis

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
	$(VENV)/bin/infergate convert examples --repo model_repo

serve: models
	$(VENV)/bin/infergate serve --model-repo model_repo --host 127.0.0.1 --http-port 8000 --grpc-port 8001

test: setup
	$(VENV)/bin/python -m pytest -q -ra

docs: setup
	$(PY) -m service.cli.reference

lint:
	$(VENV)/bin/ruff check service converters loadtest bench tests
	$(VENV)/bin/ruff format --check service converters loadtest bench tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) model_repo/*/ .pytest_cache
