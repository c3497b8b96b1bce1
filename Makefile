# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv, install CPU torch first (a plain `torch` requirement
# would pull a multi-GB CUDA build), then the project from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# Where a plain PyPI install would give a CUDA build, point this at a CPU
# wheel index, e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=

.PHONY: venv install install-test services demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)") "$(TORCH_SPEC)"

venv: $(BIN)/python

install: venv
	$(BIN)/pip install -c constraints.txt -e ".[demo]"

install-test: venv
	$(BIN)/pip install -c constraints.txt -e ".[demo,test]"

services:
	bash tests/servers/install_debian_packages.sh

demo: install
	$(BIN)/fleximo run workflows/jobs/demo_s2_18svg.yaml

test: install-test services
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
