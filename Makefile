# `make test` and `make experiments` each set up .venv on first use, so either is one command on a
# fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test experiments clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,mpi]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

experiments: $(VENV)/.installed
	MPLBACKEND=Agg $(PY) -m experiments all

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
