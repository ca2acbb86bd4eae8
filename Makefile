# Two entry points, both self-installing on a fresh machine with Python 3.11:
#   make demo   generate the embedded dataset, write the info files, print what was made
#   make test   install what the tests need and run pytest
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DATA_ROOT ?= data/synthetic
VERSION ?= v1.0-mini
PYTEST_ARGS ?=

.PHONY: demo test install clean-data

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py requirements/runtime.txt requirements/tests.txt requirements/constraints.txt
	$(PIP) install -c requirements/constraints.txt -r requirements/runtime.txt -r requirements/tests.txt
	$(PIP) install -c requirements/constraints.txt --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) tools/demo.py --root-path $(DATA_ROOT) --version $(VERSION)

clean-data:
	rm -rf $(DATA_ROOT)
