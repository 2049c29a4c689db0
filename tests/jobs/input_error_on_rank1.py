"""Test job: rank 1 alone raises an InputError while rank 0 waits in a collective."""
import nlsq_mpi
from nlsq_mpi.errors import InputError
from nlsq_mpi.parallel.comm import get_comm

if nlsq_mpi.rank() == 1:
    raise InputError("p0: deliberate error on rank 1")
get_comm().barrier()
