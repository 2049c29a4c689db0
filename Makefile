# nlsq_mpi: `make test` and `make run` are the whole set-up on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
NP      ?= 2
# Open MPI as root (containers, CI) and more ranks than cores; harmless elsewhere.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
export HDF5_USE_FILE_LOCKING := FALSE
export NLSQ_MPI_JAX_CACHE ?= $(CURDIR)/.jax_cache
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-serial test-mpi run bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(MAKE) --no-print-directory test-serial test-mpi

test-serial:
	timeout 1500 $(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/mpi

test-mpi:
	timeout 900 mpirun -n $(NP) $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi tests/mpi

run: setup
	mkdir -p demo
	cd demo && ../$(PY) ../scripts/make_demo_data.py
	cd demo && timeout 900 mpirun -n $(NP) ../$(PY) -m nlsq_mpi ../examples/job.py

bench: setup
	timeout 3000 $(PY) scripts/bench.py

clean:
	rm -rf demo .jax_cache .pytest_cache
