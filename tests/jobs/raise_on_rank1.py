"""Test job: rank 1 raises while rank 0 waits in a collective."""
import nlsq_mpi
from nlsq_mpi.parallel.comm import get_comm

if nlsq_mpi.rank() == 1:
    raise RuntimeError("deliberate failure on rank 1")
get_comm().barrier()
