PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Torch first, pinned to the CPU wheel by constraints.txt (pyproject leaves torch uncapped for users' own builds),
# so `torch>=2.2` is already satisfied when the project installs and pip never fetches a CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/conceptfix demo

test: install-test
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/ruff check debugger callbacks augment recipes tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
