"""Test job: the model itself fails (a typo a user might make), on every rank."""
import jax.numpy as jnp
import numpy as np

from nlsq_mpi import fit


def model(x, a, b):
    return a * jnp.exp(-b * x) / undefined_name  # noqa: F821


x = np.linspace(0, 1, 20)
fit(model, x, 2 * np.exp(-x), workflow="hpc", n_starts=4, bounds=([0, 0], [5, 5]))
