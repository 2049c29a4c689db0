"""Test job: a fit whose bounds are invalid, on every rank."""
import jax.numpy as jnp
import numpy as np

from nlsq_mpi import fit

x = np.linspace(0, 1, 20)
fit(lambda x, a, b: a * jnp.exp(-b * x), x, 2 * np.exp(-x), workflow="hpc", n_starts=4,
    bounds=([0, 5], [1, 5]))
