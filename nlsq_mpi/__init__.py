"""nlsq_mpi: bounded multi-start nonlinear least squares on JAX, over MPI, with checkpoints."""
import os
import sys

if sys.orig_argv[1:3] == ["-m", "nlsq_mpi"]:   # the runner: keep a stop signal from now on,
    from .preemption import record_early_signals   # through the seconds jax takes to load
    record_early_signals()

from .parallel.devices import bind_before_jax, host_devices, use_host_devices  # noqa: E402

_BINDING = bind_before_jax()

import jax  # noqa: E402

use_host_devices(host_devices())

jax.config.update("jax_enable_x64", True)
if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.environ.get("NLSQ_MPI_JAX_CACHE",
                                     os.path.join(os.path.expanduser("~"), ".cache", "nlsq_mpi", "jax")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

from .api import fit  # noqa: E402
from .checkpoint import (CheckpointCorrupt, CheckpointMismatch, CheckpointUnreadable,  # noqa: E402
                         CheckpointVersionError)
from .covariance import CovarianceWarning  # noqa: E402
from .errors import InputError, ModelError, NlsqError  # noqa: E402
from .result import FitResult, StartsTable  # noqa: E402
from .parallel.comm import get_comm as _get_comm  # noqa: E402


def rank():
    """This process's MPI rank (0 without MPI)."""
    return _get_comm().rank


def size():
    """The number of MPI ranks (1 without MPI)."""
    return _get_comm().size


def is_root():
    """True on rank 0: the rank that prints and writes files."""
    return _get_comm().rank == 0


__all__ = ["fit", "FitResult", "StartsTable", "InputError", "ModelError", "NlsqError",
           "CovarianceWarning", "rank", "size", "is_root"]
__version__ = "0.1.0"
