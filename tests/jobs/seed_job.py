"""Test job: hpc fit of the seed model; saves the result to argv[1] (from rank 0).
argv[2]: starts (40), argv[3]: data points (200; from 1,000 on the lanes step one by one)."""
import sys

import jax.numpy as jnp
import numpy as np

from nlsq_mpi import fit


def model(x, a, b, c, d, e):
    return a * jnp.exp(-b * x) * jnp.cos(c * x + d) + e


rng = np.random.default_rng(0)
x = np.linspace(0, 10, int(sys.argv[3]) if len(sys.argv) > 3 else 200)
y = 12 * np.exp(-0.5 * x) * np.cos(4 * x + 0.3) + 1 + 0.2 * rng.standard_normal(x.size)
n_starts = int(sys.argv[2]) if len(sys.argv) > 2 else 40
r = fit(model, x, y, sigma=np.full(x.size, 0.2), workflow="hpc", n_starts=n_starts,
        bounds=([0, 0, 0, -np.pi, -10], [100, 10, 20, np.pi, 10]), batch_size=4,
        checkpoint_interval=3)
r.save(sys.argv[1])
