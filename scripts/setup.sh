#!/usr/bin/env bash
# Idempotent set-up for nlsq_mpi: system MPI + parallel HDF5 (Debian, as root only), the .venv,
# the package with its test extras, and h5py built against parallel HDF5.
#
# Honoured environment:
#   PYTHON      interpreter that creates the venv (default python3)
#   VENV        venv folder (default .venv)
#   JAX_SPEC    jax requirement, e.g. "jax[cuda12]" on a GPU cluster (default: CPU "jax")
#   MPICC       MPI compiler wrapper (default: mpicc on PATH, e.g. from `module load`)
#   HDF5_DIR    parallel HDF5 installation (cluster modules); else pkg-config hdf5-openmpi/hdf5-mpi
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
JAX_SPEC=${JAX_SPEC:-jax}
say() { echo "[setup] $*"; }

# 1. System packages: only as root on Debian/Ubuntu, only what is missing.
need_pkgs=()
if [ "$(id -u)" = 0 ] && command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
  for p in openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
  done
  # A module environment (HDF5_DIR or MPICC given) brings its own MPI and HDF5.
  if [ ${#need_pkgs[@]} -gt 0 ] && [ -z "${HDF5_DIR:-}" ] && [ -z "${MPICC:-}" ]; then
    say "installing system packages: ${need_pkgs[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null
  fi
fi

# 2. The virtual environment and the package.
stamp="$VENV/.nlsq_mpi-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-16) $JAX_SPEC"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing nlsq_mpi[test] and $JAX_SPEC into $VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "setuptools>=77" cython numpy pkgconfig mpi4py "$JAX_SPEC"
  "$PY" -m pip install -q --no-deps -e .
  "$PY" -m pip install -q "pytest>=7" "pytest-mpi>=0.6" "pytest-timeout>=2" "scipy>=1.10"
fi

# 3. h5py: against parallel HDF5 when there is one, never with build isolation (measured: an
#    isolated build compiles mpi4py from source, >20 GB of memory).
if ! "$PY" -c "import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)" 2>/dev/null; then
  MPICC=${MPICC:-mpicc}
  pc_name=""
  for n in hdf5-openmpi hdf5-mpich hdf5-mpi; do
    if pkg-config --exists "$n" 2>/dev/null; then pc_name=$n; break; fi
  done
  if command -v "$MPICC" >/dev/null && { [ -n "${HDF5_DIR:-}" ] || [ -n "$pc_name" ]; }; then
    say "building h5py against parallel HDF5 (${HDF5_DIR:-pkg-config $pc_name}), about 2 minutes"
    "$PY" -m pip uninstall -q -y h5py 2>/dev/null || true
    if [ -n "${HDF5_DIR:-}" ]; then
      CC="$MPICC" HDF5_MPI=ON HDF5_DIR="$HDF5_DIR" "$PY" -m pip install -q --no-cache-dir \
        --no-binary=h5py --no-build-isolation h5py
    else
      CC="$MPICC" HDF5_MPI=ON HDF5_PKGCONFIG_NAME="$pc_name" "$PY" -m pip install -q --no-cache-dir \
        --no-binary=h5py --no-build-isolation h5py
    fi
  elif ! "$PY" -c "import h5py" 2>/dev/null; then
    say "no parallel HDF5 found (no mpicc, HDF5_DIR or hdf5-mpi pkg-config): installing the serial h5py wheel; checkpoints are written by rank 0"
    "$PY" -m pip install -q h5py
  else
    say "h5py is serial (no parallel HDF5 found): checkpoints are written by rank 0"
  fi
fi
echo "$want" > "$stamp"
"$PY" - <<'PYEOF'
import h5py, jax, mpi4py
print(f"[setup] ready: jax {jax.__version__}, mpi4py {mpi4py.__version__}, h5py {h5py.__version__} (mpi={h5py.get_config().mpi})")
PYEOF
