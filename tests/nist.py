"""NIST StRD nonlinear regression problems (tests/data/nist, public domain): loader and models."""
import math
import re
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

DATA = Path(__file__).parent / "data" / "nist"


def _gauss(x, b1, b2, b3, b4, b5, b6, b7, b8):
    return (b1 * jnp.exp(-b2 * x) + b3 * jnp.exp(-((x - b4) ** 2) / b5**2)
            + b6 * jnp.exp(-((x - b7) ** 2) / b8**2))


def _lanczos(x, b1, b2, b3, b4, b5, b6):
    return b1 * jnp.exp(-b2 * x) + b3 * jnp.exp(-b4 * x) + b5 * jnp.exp(-b6 * x)


def _exp_rise(x, b1, b2):
    return b1 * (1 - jnp.exp(-b2 * x))


def _enso(x, b1, b2, b3, b4, b5, b6, b7, b8, b9):
    w = 2 * jnp.pi * x
    return (b1 + b2 * jnp.cos(w / 12) + b3 * jnp.sin(w / 12) + b5 * jnp.cos(w / b4)
            + b6 * jnp.sin(w / b4) + b8 * jnp.cos(w / b7) + b9 * jnp.sin(w / b7))


MODELS = {
    "BoxBOD": _exp_rise,
    "Chwirut2": lambda x, b1, b2, b3: jnp.exp(-b1 * x) / (b2 + b3 * x),
    "DanWood": lambda x, b1, b2: b1 * x**b2,
    "ENSO": _enso,
    "Gauss1": _gauss, "Gauss2": _gauss, "Gauss3": _gauss,
    "Lanczos1": _lanczos, "Lanczos2": _lanczos, "Lanczos3": _lanczos,
    "MGH09": lambda x, b1, b2, b3, b4: b1 * (x**2 + x * b2) / (x**2 + x * b3 + b4),
    "MGH17": lambda x, b1, b2, b3, b4, b5: b1 + b2 * jnp.exp(-x * b4) + b3 * jnp.exp(-x * b5),
    "Misra1a": _exp_rise,
    "Misra1b": lambda x, b1, b2: b1 * (1 - (1 + b2 * x / 2) ** (-2)),
    "Misra1c": lambda x, b1, b2: b1 * (1 - (1 + 2 * b2 * x) ** (-0.5)),
    "Nelson": lambda x, b1, b2, b3: b1 - b2 * x[0] * jnp.exp(-b3 * x[1]),
    "Rat42": lambda x, b1, b2, b3: b1 / (1 + jnp.exp(b2 - b3 * x)),
    "Roszman1": lambda x, b1, b2, b3, b4: b1 - b2 * x - jnp.arctan(b3 / (x - b4)) / jnp.pi,
    "Thurber": lambda x, b1, b2, b3, b4, b5, b6, b7: ((b1 + b2 * x + b3 * x**2 + b4 * x**3)
                                                       / (1 + b5 * x + b6 * x**2 + b7 * x**3)),
}


@dataclass
class NistProblem:
    name: str
    x: np.ndarray          # (m,) or, for Nelson, (2, m)
    y: np.ndarray          # (m,); log(y) for Nelson, which NIST fits in log space
    starts: np.ndarray     # (2, n)
    certified: np.ndarray  # (n,)
    certified_sd: np.ndarray
    rss: float

    @property
    def model(self):
        return MODELS[self.name]


def load(name):
    lines = (DATA / f"{name}.dat").read_text().splitlines()
    params = []
    for line in lines[40:60]:
        mt = re.match(r"\s*b\d+\s*=\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", line)
        if mt:
            params.append([float(v) for v in mt.groups()])
    params = np.array(params)
    rss = next(float(ln.split(":")[1]) for ln in lines if ln.startswith("Residual Sum of Squares"))
    data = np.array([[float(v) for v in ln.split()] for ln in lines[60:] if ln.strip()])
    y = data[:, 0]
    x = data[:, 1] if data.shape[1] == 2 else data[:, 1:].T.copy()
    if name == "Nelson":
        y = np.log(y)
    return NistProblem(name, x, y, params[:, :2].T.copy(), params[:, 2], params[:, 3], rss)


def names():
    return sorted(MODELS)


def lre(estimate, certified):
    """Log relative error: the number of correct significant digits (McCullough 1998)."""
    estimate, certified = np.asarray(estimate, float), np.asarray(certified, float)
    err = np.abs(estimate - certified) / np.abs(certified)
    with np.errstate(divide="ignore"):
        return np.where(err == 0, 15.0, -np.log10(err))
