"""Running jobs under mpirun from tests, always under a timeout."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = Path(__file__).parent / "jobs"

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "PYTHONUNBUFFERED": "1",
           "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}


def run(cmd, timeout=300, cwd=None, env=None):
    full_env = {**os.environ, **MPI_ENV, **(env or {})}
    full_env.setdefault("NLSQ_MPI_JAX_CACHE", str(ROOT / ".jax_cache"))
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def mpirun(n, *args, timeout=300, cwd=None, env=None):
    return run(["mpirun", "-n", str(n), sys.executable, *args], timeout=timeout, cwd=cwd, env=env)
