"""Shared test set-up: one persistent JAX compilation cache for the whole run (tests and their
subprocesses), and models shared across tests so each compiles once."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLSQ_MPI_JAX_CACHE", str(ROOT / ".jax_cache"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def seed_model(x, a, b, c, d, e):
    """The model of examples/job.py: a damped cosine on a baseline."""
    return a * jnp.exp(-b * x) * jnp.cos(c * x + d) + e


SEED_BOUNDS = ([0, 0, 0, -np.pi, -10], [100, 10, 20, np.pi, 10])
SEED_TRUE = np.array([12.0, 0.5, 4.0, 0.3, 1.0])


def seed_data(m=200, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 10, m)
    y = np.asarray(seed_model(x, *SEED_TRUE)) + noise * rng.standard_normal(m)
    return x, y, np.full(m, noise)


@pytest.fixture(scope="session")
def seed_problem():
    return seed_data()
