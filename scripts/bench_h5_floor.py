"""The floor of one checkpoint generation on this machine, for scripts/bench.py part 3: h5py
alone (mpio driver, no JAX, none of nlsq_mpi's own work), run under mpirun, with the calls
nlsq_mpi makes: one file access property list for all generations, h5py's low-level writes.
Each of 50 generations creates a new file collectively, creates three datasets shaped like
a 1,000-start checkpoint, writes each rank's rows, sets five attributes, closes it and
renames it into place. Rank 0 prints one JSON line: milliseconds per generation, in total
and per stage."""
import json
import os
import sys
import tempfile
import time

import h5py
import numpy as np
from mpi4py import MPI

GENERATIONS, STARTS, LANES, N = 50, 1000, 128, 5


def main():
    comm = MPI.COMM_WORLD
    record = np.dtype([("x0", "f8", (N,)), ("x", "f8", (N,)), ("cost", "f8"), ("status", "i4"),
                       ("nit", "i4"), ("nfev", "i4")])
    table = np.zeros(STARTS, record)
    directory = comm.bcast(tempfile.mkdtemp(dir=sys.argv[1] if len(sys.argv) > 1 else None)
                           if comm.rank == 0 else None)
    stages = dict.fromkeys(("open", "create", "write", "attrs", "close", "rename"), 0.0)
    rows = slice(comm.rank * LANES, (comm.rank + 1) * LANES)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fapl_mpio(comm, MPI.INFO_NULL)
    for i in range(GENERATIONS):
        tmp = os.path.join(directory, f".tmp-{i}.h5")
        t0 = time.perf_counter()
        fh = h5py.File(h5py.h5f.create(tmp.encode(), h5py.h5f.ACC_TRUNC, fapl=fapl))
        t1 = time.perf_counter()
        dsets = [fh.create_dataset("table", (STARTS,), record),
                 fh.create_dataset("state", (comm.size * LANES,), record),
                 fh.create_dataset("best_x", (N,), "f8")]
        t2 = time.perf_counter()
        space = dsets[1].id.get_space()
        space.select_hyperslab((rows.start,), (LANES,))
        dsets[1].id.write(h5py.h5s.create_simple((LANES,)), space, table[rows])
        if comm.rank == 0:
            dsets[0].id.write(h5py.h5s.ALL, h5py.h5s.ALL, table)
        t3 = time.perf_counter()
        for k in range(5):
            fh.attrs[f"a{k}"] = "x" * 200
        t4 = time.perf_counter()
        fh.close()
        t5 = time.perf_counter()
        if comm.rank == 0:
            os.replace(tmp, os.path.join(directory, "gen.h5"))
        comm.barrier()
        t6 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            stages[key] += dt
    if comm.rank == 0:
        os.remove(os.path.join(directory, "gen.h5"))
        os.rmdir(directory)
        ms = {k: round(1e3 * v / GENERATIONS, 3) for k, v in stages.items()}
        print(json.dumps({"ms_per_generation": round(sum(ms.values()), 3), "stages": ms}))


if __name__ == "__main__":
    main()
