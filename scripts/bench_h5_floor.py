"""The floor of one checkpoint generation on this machine, for scripts/bench.py part 3: the
calls nlsq_mpi makes (nlsq_mpi.h5file.FileWriter on h5py's mpio driver), without JAX or any
of nlsq_mpi's own work, run under mpirun. Each generation creates a new file collectively
with five attributes and three datasets shaped like a 1,000-start checkpoint (each rank
writing its own 256 state rows, rank 0 the table) and closes it: what nlsq_mpi's
Checkpointer.write spends in HDF5 (the fsync and rename follow in a background thread).

Measured three times: back to back ("hot"); with GAP_MS of computation on every rank
before each generation ("cold"), as in a fit, where a generation follows an interval of
solving; and cold with what makes it durable done at once by rank 0 ("cold_durable": fsync,
rename into place, fsync of the directory, which nlsq_mpi does in a background thread).
The computation streams WORKING_SET_MB per rank, about what one rank's interval touches at
the default lanes (512 lanes x 2,000 points x 5 parameters of Jacobian, 8 bytes each: 41
MB), so that, as in a fit, it evicts HDF5's and MPI's code and data from the caches: on the
2-core test machine (32 MiB of L3) a generation took 0.6 ms after a loop that touched no
memory and 1.3 ms after one that streamed 64 MB, about what it takes inside a fit.
Rank 0 prints one JSON line: milliseconds per generation in each case.
usage: bench_h5_floor.py [DIR] [GAP_MS]"""
import json
import os
import sys
import tempfile
import time

from nlsq_mpi.parallel.comm import mpi_io_defaults

mpi_io_defaults()   # as nlsq_mpi starts MPI, before mpi4py does
import h5py  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from nlsq_mpi.checkpoint import SCHEMA_VERSION, durable_rename, state_dtype, table_dtype  # noqa: E402
from nlsq_mpi.h5file import FileWriter  # noqa: E402

GENERATIONS, STARTS, LANES, N = 40, 1000, 256, 5
WORKING_SET_MB = 48


def generations(comm, writer, directory, gap, durable=False):
    table, state = np.zeros(STARTS, table_dtype(N)), np.zeros(comm.size * LANES, state_dtype(N))
    attrs = {"schema_version": SCHEMA_VERSION, "fingerprint": "f" * 64, "checksum": "c" * 64, "round": 1,
             "meta": "m" * 1200}
    mine = slice(comm.rank * LANES, (comm.rank + 1) * LANES)
    scratch = np.zeros(WORKING_SET_MB * 2**20 // 8) if gap else None
    total = 0.0
    for i in range(GENERATIONS):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < gap:   # an interval's computation
            scratch += 1.0
        comm.Barrier()
        t0 = time.perf_counter()
        path = os.path.join(directory, f".tmp-{i}.h5")
        writer.write(path, attrs, {
            "table": (table.dtype, table.shape, [(table, 0)] if comm.rank == 0 else []),
            "state": (state.dtype, state.shape, [(state[mine], mine.start)]),
            "best_x": (np.dtype("f8"), (N,), [(np.zeros(N), 0)] if comm.rank == 0 else [])})
        if durable and comm.rank == 0:   # what Checkpointer._publish does before its clean-up
            final = path.replace(".tmp-", "gen-")
            durable_rename(path, final)
            path = final
        comm.Barrier()
        total += time.perf_counter() - t0
        if comm.rank == 0:
            os.remove(path)
    return round(1e3 * total / GENERATIONS, 3)


def main():
    comm = MPI.COMM_WORLD
    gap_ms = float(sys.argv[2]) if len(sys.argv) > 2 else 25.0
    directory = comm.bcast(tempfile.mkdtemp(dir=sys.argv[1] if len(sys.argv) > 1 else None)
                           if comm.rank == 0 else None)
    writer = FileWriter(h5py, comm)
    hot = generations(comm, writer, directory, 0.0)
    cold = generations(comm, writer, directory, gap_ms / 1e3)
    durable = generations(comm, writer, directory, gap_ms / 1e3, durable=True)
    if comm.rank == 0:
        os.rmdir(directory)
        print(json.dumps({"hot_ms": hot, "cold_ms": cold, "cold_durable_ms": durable,
                          "gap_ms": gap_ms}))


if __name__ == "__main__":
    main()
