"""Timed hpc fit for scripts/bench.py: run under mpirun; rank 0 prints one JSON line.

usage: bench_mpi_job.py STARTS.npy [--no-rebalance] [--checkpoint DIR [--pairs K]]
                        [--problem seed|mgh09] [--batch-size LANES]
The starts array fixes the work. A warm-up fit in the same configuration (checkpointing into
DIR/warmup) compiles first and pays the once-per-process costs, so only the run is timed;
``import_h5py_seconds`` reports the largest of those, importing h5py. With ``--pairs K``
the process times 2K+1 fits back to back, alternating: one without checkpoints, then K
times one with them into DIR and one without (``checkpoint_seconds``: K, ``plain_seconds``:
K+1). Each checkpointed fit is compared with the plain fits either side of it: in one
process they see the same spell of a noisy machine (separate processes differed by 5-10%),
and the mean of the fit before and the fit after cancels a machine that speeds up or slows
down steadily, which a fixed order within a pair would count as overhead.
"""
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import nlsq_mpi
from nlsq_mpi import fit
from nlsq_mpi.parallel.comm import get_comm
from nlsq_mpi.parallel.devices import wait_for_builds


def model(x, a, b, c, d, e):
    return a * jnp.exp(-b * x) * jnp.cos(c * x + d) + e


def data(m=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 10, m)
    y = 12 * np.exp(-0.5 * x) * np.cos(4 * x + 0.3) + 1 + 0.2 * rng.standard_normal(m)
    return x, y, np.full(m, 0.2)


# Enough starts that every rank fills its lanes during the warm-up, at any width up to 128
# on up to 4 ranks: a rank that gets none compiles inside the timed run.
WARMUP_STARTS = 512
BOUNDS = ([0, 0, 0, -np.pi, -10], [100, 10, 20, np.pi, 10])
MGH09_BOUNDS = ([-5] * 4, [5] * 4)


def problem(name):
    """(model, x, y, fit kwargs) of a benchmark problem: the seed model at m=2000, or NIST
    MGH09 in [-5, 5]^4, whose starts need from 10 to 400 evaluations."""
    if name == "seed":
        x, y, s = data()
        return model, x, y, dict(sigma=s, bounds=BOUNDS)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import nist
    P = nist.load("MGH09")
    return P.model, P.x, P.y, dict(bounds=MGH09_BOUNDS)


if __name__ == "__main__":
    starts = np.load(sys.argv[1])
    rebalance = "--no-rebalance" not in sys.argv
    ckpt = sys.argv[sys.argv.index("--checkpoint") + 1] if "--checkpoint" in sys.argv else None
    name = sys.argv[sys.argv.index("--problem") + 1] if "--problem" in sys.argv else "seed"
    fn, x, y, kw = problem(name)
    width = (int(sys.argv[sys.argv.index("--batch-size") + 1]) if "--batch-size" in sys.argv
             else None)
    common = dict(workflow="hpc", progress_seconds=1e9, rebalance=rebalance, batch_size=width, **kw)
    t0 = time.perf_counter()
    import h5py  # noqa: F401  (what the first checkpointed fit of a process imports)
    import_h5py = time.perf_counter() - t0
    fit(fn, x, y, sampler=starts[:WARMUP_STARTS], resume=False,   # compile on every rank
        checkpoint_dir=ckpt and str(Path(ckpt) / "warmup"), **common)
    wait_for_builds()   # other host devices' programs, built in the background
    pairs = int(sys.argv[sys.argv.index("--pairs") + 1]) if "--pairs" in sys.argv else 0
    plain, checkpointed = [], []

    def timed(directory):
        get_comm().barrier()
        t0 = time.perf_counter()
        r = fit(fn, x, y, sampler=starts, checkpoint_dir=directory, resume=False, **common)
        return r, time.perf_counter() - t0

    if pairs:
        fit(fn, x, y, sampler=starts[:WARMUP_STARTS], **common)   # the plain side's warm-up
        plain.append(timed(None)[1])
        for _ in range(pairs):   # plain, then (checkpointed, plain) K times
            r, seconds = timed(ckpt)
            checkpointed.append(seconds)
            plain.append(timed(None)[1])
        elapsed = checkpointed[-1]
    else:
        r, elapsed = timed(ckpt)
    if nlsq_mpi.is_root():
        print(json.dumps({"ranks": nlsq_mpi.size(), "seconds": elapsed, "best": r.best_start,
                          "cost": r.cost, "total_nfev": int(r.starts.nfev.sum()),
                          "checkpoint": r.checkpoint, "import_h5py_seconds": import_h5py,
                          "plain_seconds": plain, "checkpoint_seconds": checkpointed}))
