import numpy as np, jax.numpy as jnp
from nlsq_mpi import fit

def model(x, a, b, c, d, e):
    return a * jnp.exp(-b * x) * jnp.cos(c * x + d) + e

data = np.load("experiment_data.npz")
popt, pcov = fit(model, data["x"], data["y"], p0=[10, 1, 5, 0, 0], sigma=data["sigma"],
                 workflow="hpc", bounds=([0, 0, 0, -np.pi, -10], [100, 10, 20, np.pi, 10]),
                 n_starts=100, checkpoint_dir="ckpt", checkpoint_interval=10)
