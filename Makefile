# Two entry points, both self-installing on a fresh machine with Python 3.11:
#   make demo   generate the embedded dataset, train the teacher, a camera baseline and the TiG
#               student (torchpack dist-run -np $(NP) where OpenMPI is present), evaluate, render
#   make test   install what the tests need and run pytest
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DATA_ROOT ?= data/synthetic
VERSION ?= v1.0-mini
PYTEST_ARGS ?=
DEMO_EPOCHS ?= 6
NP ?= 2

.PHONY: demo test install clean-data

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py requirements/runtime.txt requirements/tests.txt requirements/constraints.txt
	$(PIP) install -c requirements/constraints.txt -r requirements/runtime.txt -r requirements/tests.txt
	$(PIP) install -c requirements/constraints.txt --no-deps --no-build-isolation -e .
	touch $(STAMP)

# torchpack dist-run needs OpenMPI 4 (Debian's openmpi-bin); installed when missing and we are root.
MPI_STAMP := $(VENV)/.mpi
$(MPI_STAMP): | $(PY)
	@if command -v mpirun >/dev/null 2>&1; then echo "mpirun: $$(mpirun --version 2>&1 | head -n 1)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin >/dev/null && echo "installed openmpi-bin"; \
	else echo "warning: mpirun not found and cannot install openmpi-bin (not root): dist-run tests will be skipped"; fi
	touch $(MPI_STAMP)

install: $(STAMP) $(MPI_STAMP)

test: $(STAMP) $(MPI_STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS) tests

demo: $(STAMP) $(MPI_STAMP)
	$(PY) tools/demo.py --root-path $(DATA_ROOT) --version $(VERSION) --epochs $(DEMO_EPOCHS) --np $(NP)

clean-data:
	rm -rf $(DATA_ROOT)
