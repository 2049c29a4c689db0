"""nlsq_mpi: bounded multi-start nonlinear least squares on JAX, over MPI, with checkpoints."""
import os

import jax

jax.config.update("jax_enable_x64", True)
if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.environ.get("NLSQ_MPI_JAX_CACHE",
                                     os.path.join(os.path.expanduser("~"), ".cache", "nlsq_mpi", "jax")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from .api import fit  # noqa: E402
from .covariance import CovarianceWarning  # noqa: E402
from .errors import InputError, ModelError, NlsqError  # noqa: E402
from .result import FitResult, StartsTable  # noqa: E402

__all__ = ["fit", "FitResult", "StartsTable", "InputError", "ModelError", "NlsqError",
           "CovarianceWarning"]
__version__ = "0.1.0"
