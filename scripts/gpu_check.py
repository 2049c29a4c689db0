"""Device binding and throughput of workflow="hpc" on the seed problem.

    python scripts/gpu_check.py [--starts 10000]            one process
    mpirun -n 4 python -m nlsq_mpi scripts/gpu_check.py      one rank per GPU

Each rank prints what it detected and which device JAX gives it; rank 0 then times a fit of
the model of examples/job.py (m=2,000) over --starts starts, after a compile run, and prints
starts per second. It runs on CPU too (the same numbers, for comparison).
"""
import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mpi_job import BOUNDS, data, model  # noqa: E402

import nlsq_mpi  # noqa: E402
from nlsq_mpi import _BINDING, fit  # noqa: E402
from nlsq_mpi.parallel.comm import get_comm  # noqa: E402
from nlsq_mpi.parallel.detect import detect  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=10_000)
    args = ap.parse_args()
    comm = get_comm()
    info = detect(comm)
    lines = comm.allgather(f"rank {info.rank}/{info.size} local {info.local_rank}/{info.local_size}: "
                           f"{_BINDING}; JAX devices {jax.devices()}, backend {jax.default_backend()}")
    if comm.rank == 0:
        print("\n".join(lines))
    x, y, s = data()
    common = dict(sigma=s, bounds=BOUNDS, workflow="hpc", progress_seconds=1e9)
    fit(model, x, y, n_starts=min(args.starts, 64), **common)
    comm.barrier()
    t0 = time.perf_counter()
    r = fit(model, x, y, n_starts=args.starts, **common)
    dt = time.perf_counter() - t0
    if nlsq_mpi.is_root():
        print(f"{args.starts} starts on {comm.size} rank(s): {dt:.2f} s, {args.starts / dt:.0f} starts/s, "
              f"best cost {r.cost:.10g} (start {r.best_start})")


if __name__ == "__main__":
    main()
