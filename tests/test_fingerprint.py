"""The problem fingerprint a checkpoint must match: the same in every process for the same
problem (a memory address in it made every rerun of a functools.partial model, or of a
callable object, look like another problem), and different when any part differs."""
import functools
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from mpi_helpers import ROOT
from nlsq_mpi.api import problem_fingerprint


def decay(x, a, b, k=1.0):
    return k * a * jnp.exp(-b * x["t"])


class Decay:
    """A model that carries a parameter of its own."""

    def __init__(self, k):
        self.k = k

    def __call__(self, x, a, b):
        return self.k * a * jnp.exp(-b * x["t"])


def parts(model, shift=0.0):
    """The fingerprint parts of a problem whose xdata is a dict of arrays."""
    t = np.linspace(0, 1, 2000)
    t[1000] += shift   # deep inside the array, where a summarised repr shows "..."
    c = SimpleNamespace(xdata={"t": t}, ydata=np.ones(2000), sigma=np.ones(2000),
                        lb=np.zeros(2), ub=np.ones(2), n_starts=4)
    return problem_fingerprint(model, None, c, np.zeros((4, 2)), "linear", 1.0, "jac",
                               1e-8, 1e-8, 1e-8, None, 0)


def defined_without_a_source_file():
    """As in an interactive session or exec'd code, with a function defined inside it."""
    space = {"jnp": jnp}
    exec("def no_file(x, a, b):\n    shape = lambda t: jnp.exp(-b * t)\n"
         "    return a * shape(x['t'])\n", space)
    return space["no_file"]


def models():
    return {"partial": functools.partial(decay, k=2.0), "object": Decay(2.0),
            "jit": jax.jit(decay), "method": Decay(2.0).__call__, "closure": make_decay(2.0),
            "modules": HoldsModules(2.0), "exec": defined_without_a_source_file()}


def test_the_same_in_another_process():
    here = {name: parts(m)["model"] for name, m in models().items()}
    code = ("import json, sys; sys.path[:0] = ['tests']; import test_fingerprint as t; "
            "print(json.dumps({n: t.parts(m)['model'] for n, m in t.models().items()}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.splitlines()[-1]) == here


def test_each_part_tells_problems_apart():
    base = parts(functools.partial(decay, k=2.0))
    assert parts(functools.partial(decay, k=3.0))["model"] != base["model"]
    assert parts(Decay(3.0))["model"] != parts(Decay(2.0))["model"]
    changed = parts(functools.partial(decay, k=2.0), shift=1e-9)
    assert changed["xdata"] != base["xdata"] and changed["model"] == base["model"]


def test_a_bound_method_counts_its_object_and_a_cycle_ends():
    a, b = Decay(2.0), Decay(3.0)
    a.me = a
    assert parts(a.__call__)["model"] != parts(b.__call__)["model"]
    assert parts(a.__call__)["model"] == parts(a.__call__)["model"]


def make_decay(k):
    def closed(x, a, b):
        return k * a * jnp.exp(-b * x["t"])
    return closed


class Slotted:
    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k

    def __call__(self, x, a, b):
        return self.k * a * jnp.exp(-b * x["t"])


class HoldsModules:
    """A model object that keeps modules (and so, through them, the whole interpreter)."""

    def __init__(self, k):
        self.k, self.np, self.os = k, np, os

    def __call__(self, x, a, b):
        return self.k * a * jnp.exp(-b * x["t"])


def test_closures_slots_and_modules():
    assert parts(make_decay(2.0))["model"] != parts(make_decay(3.0))["model"]
    assert parts(Slotted(2.0))["model"] != parts(Slotted(3.0))["model"]
    t0 = time.monotonic()
    assert parts(HoldsModules(2.0))["model"] != parts(HoldsModules(3.0))["model"]
    assert time.monotonic() - t0 < 5   # modules count by name: no walk through sys.modules
