# Two commands do everything on a fresh machine (see README.md):
#   make demo   -- install, then run the demo experiment on the embedded default
#   make test   -- install, then run the test suite
# Both create ./.venv and install what they need into it. PyTorch is installed first, and
# only when the venv has none, pinned to 2.13.0 (the CPU build where the machine keeps it
# locally); pass TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" on a
# machine whose default index would hand out a CUDA build you do not want.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
EXTRAS ?= test,crosscheck,cluster
DEMO ?= benchmarks/demo.yaml
PYTEST_ARGS ?=

.PHONY: install demo test clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-$(EXTRAS): setup.cfg pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || { \
	  echo "installing $(TORCH_SPEC) first (so no other package pulls a CUDA build)"; \
	  $(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; }
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	$(BIN)/usnprune run $(DEMO)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
