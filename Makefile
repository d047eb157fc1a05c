# Fresh-machine entry points: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
RUNDIR ?= runs/demo
MPI_TIMEOUT ?= 900

.PHONY: venv build demo test lint test-serial test-mpi bench clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "Cython>=3.0" "numpy>=1.26"
	$(PY) -m pip install -q --no-build-isolation -e '.[mpich,test,bench]'
	touch $@

venv: $(VENV)/.deps

# Rebuild the Cython kernels in place whenever a .pyx changes.
build: venv
	$(PY) setup.py -q build_ext --inplace

# The whole chain, then the run's validation against its truth (a failed threshold is shown, not fatal
# here) and the HTML report, whose path is printed last.
demo: build
	$(MPIEXEC) -n 3 $(VENV)/bin/twinkles-hpc run jobs/demo.toml -o $(RUNDIR)
	$(VENV)/bin/twinkles-hpc status $(RUNDIR)
	-$(VENV)/bin/twinkles-hpc validate $(RUNDIR) --summary --json $(RUNDIR)/validation.json
	$(VENV)/bin/twinkles-hpc report $(RUNDIR) --validation $(RUNDIR)/validation.json

test: build lint test-serial test-mpi

# ruff (configured in pyproject.toml): a lint error fails the test command
lint: venv
	$(VENV)/bin/ruff check .

test-serial:
	$(PY) -m pytest -q tests --ignore=tests/mpi

# Every MPI test file runs under -n 2 and -n 3 (oversubscribed on 2 cores), with a hard timeout
# so that a failure can never hang CI. Ranks gather pass/fail before asserting (tests/mpi/conftest.py).
test-mpi:
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n 2 tests/mpi/run-pytest $(PY) -m pytest -q -p no:cacheprovider tests/mpi
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n 3 tests/mpi/run-pytest $(PY) -m pytest -q -p no:cacheprovider tests/mpi

bench: build
	$(VENV)/bin/twinkles-hpc bench imsim

clean:
	rm -rf build $(VENV) twinkles_hpc/*.so ext/*.c
