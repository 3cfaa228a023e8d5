# Two commands on a fresh machine:
#   make demo  - set up .venv and run the whole job offline on the embedded default
#   make test  - set up .venv and run the test suite
# The venv is created once and reused; it is reinstalled when pyproject.toml or
# constraints.txt change. constraints.txt pins torch to the local CPU build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev,hf]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lorastory demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
