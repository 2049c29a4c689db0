"""Walltime parsing and the stop decision."""
import time

import pytest

from nlsq_mpi.preemption import StopControl, parse_walltime


@pytest.mark.parametrize("text, seconds", [(90, 90.0), ("90", 90.0), ("01:30", 90.0),
                                           ("02:00:00", 7200.0), ("1-00:00:10", 86410.0)])
def test_parse_walltime(text, seconds):
    assert parse_walltime(text) == seconds


def test_deadline_from_slurm_end_time_and_margin():
    stop = StopControl(environ={"SLURM_JOB_END_TIME": str(int(time.time()) + 3)}, margin=5)
    assert stop()                      # 3 s left, 5 s margin needed
    later = StopControl(environ={"SLURM_JOB_END_TIME": str(int(time.time()) + 3600)})
    assert not later()


def test_walltime_from_environment_and_signal_flag():
    stop = StopControl(environ={"NLSQ_MPI_WALLTIME": "1"}, margin=5)
    assert stop()
    quiet = StopControl(environ={})
    assert not quiet()
    quiet._handler(10, None)
    assert quiet() and quiet.signalled == "SIGUSR1"
