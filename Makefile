# `make test`, `make experiments` and `make docs` each set up .venv on first use, so each is one command on
# a fresh machine. `make` alone (or `make help`) lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DOCS_OUT := docs/_build/html

.DEFAULT_GOAL := help
.PHONY: help test experiments docs docs-check clean

help:  ## list the targets
	@echo "numpy-moe: make TARGET"
	@echo "  test         the test suite (pytest: gradient checks, estimators, a quick run of each experiment), ~1-10 min"
	@echo "  experiments  every experiment in full (python -m experiments all): regenerates plots/, prints each table"
	@echo "  docs         the documentation site (Sphinx + sphinx-gallery, experiments in quick mode), offline, into"
	@echo "               $(DOCS_OUT); open $(DOCS_OUT)/index.html in a browser, no server needed"
	@echo "  docs-check   open every built page in headless Chromium (apt-get install chromium): figures, links, screenshots"
	@echo "  clean        remove .venv, caches and the built docs"
	@echo "The first target that needs it creates .venv and installs the package into it (about a minute)."
	@echo "Experiments run from this folder: python -m experiments lists them (see the README)."

$(VENV)/.installed: setup.cfg pyproject.toml
	@echo "Creating $(VENV) and installing numpy-moe with its test tools (NumPy, SciPy, matplotlib, scikit-learn,"
	@echo "pytest, mpi4py and the MPICH wheel; about a minute on first use, pip's progress below)..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip --progress-bar on
	$(PY) -m pip install -e '.[test,mpi]' --progress-bar on
	touch $@
	@echo "Installed into $(VENV)."

$(VENV)/.docs-installed: $(VENV)/.installed
	@echo "Installing the docs tools into $(VENV): Sphinx, sphinx-gallery, furo, numpydoc, myst-parser..."
	$(PY) -m pip install -e '.[docs]' --progress-bar on
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

experiments: $(VENV)/.installed
	MPLBACKEND=Agg $(PY) -m experiments all

docs: $(VENV)/.docs-installed
	@echo "Building the site: the gallery runs every experiment in quick mode (a few minutes), then the API pages."
	rm -rf $(DOCS_OUT)  # no stale page survives a rebuild (the gallery's cache of unchanged examples stays)
	MPLBACKEND=Agg $(PY) -m sphinx -E -b html docs $(DOCS_OUT)
	@echo "Done: open $(CURDIR)/$(DOCS_OUT)/index.html"

docs-check: docs
	$(PY) docs/check_site.py $(DOCS_OUT)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis docs/_build docs/_gallery_src docs/gallery docs/api docs/index.md
