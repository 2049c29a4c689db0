"""Walltime parsing and the stop decision."""
import os
import signal
import time

import pytest

from nlsq_mpi.errors import InputError
from nlsq_mpi.preemption import StopControl, parse_walltime, record_early_signals


@pytest.mark.parametrize("text, seconds", [
    (90, 90.0), ("90", 90.0), ("90.5", 90.5), ("01:30", 90.0), ("02:00:00", 7200.0),
    ("1-00:00:10", 86410.0), ("1-12", 129600.0), ("1-12:30", 131400.0), (" 0:0:1 ", 1.0)])
def test_parse_walltime_reads_seconds_and_slurm_times(text, seconds):
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["-5", "0", "00:00", "abc", "1:2:3:4", "1-", "inf", "nan",
                                  "", "1-2:3:4:5", "-1-00:00:00"])
def test_parse_walltime_refuses_what_is_not_a_positive_time(text):
    with pytest.raises(ValueError, match="is not a positive time"):
        parse_walltime(text)


def test_bad_walltime_in_the_environment_is_an_input_error():
    with pytest.raises(InputError, match=r"NLSQ_MPI_WALLTIME: '0' is not a positive time"):
        StopControl(environ={"NLSQ_MPI_WALLTIME": "0"})
    with pytest.raises(InputError, match=r"SLURM_JOB_END_TIME: 'soon' is not an epoch time"):
        StopControl(environ={"SLURM_JOB_END_TIME": "soon"})


def test_deadline_from_slurm_end_time_and_margin():
    stop = StopControl(environ={"SLURM_JOB_END_TIME": str(int(time.time()) + 3)}, margin=5)
    assert stop()                      # 3 s left, 5 s margin needed
    later = StopControl(environ={"SLURM_JOB_END_TIME": str(int(time.time()) + 3600)})
    assert not later()


def test_walltime_argument_before_environment_and_the_earlier_of_it_and_slurm():
    now = time.time()
    stop = StopControl(walltime=100, environ={"NLSQ_MPI_WALLTIME": "10"})
    assert stop.deadline == pytest.approx(now + 100, abs=1)
    both = StopControl(walltime="00:10:00", environ={"SLURM_JOB_END_TIME": str(now + 60)})
    assert both.deadline == pytest.approx(now + 60, abs=1)


def test_without_a_checkpoint_the_deadline_is_left_to_the_scheduler():
    stop = StopControl(walltime=1, environ={"SLURM_JOB_END_TIME": "1"}, margin=5,
                       watch_deadline=False)
    assert stop.deadline is None and not stop()


def test_time_needed_counts_the_longest_interval_and_write_twice():
    """Stop when what is left would not hold two more intervals and writes plus the
    margin (the next interval runs before the stop is agreed, then the stop's own)."""
    stop = StopControl(environ={}, margin=5)
    stop.last_call = time.time() - 20           # an interval of 20 s just ended
    stop.write_seconds = 3
    stop.deadline = time.time() + 2 * 20 + 2 * 3 + 5 + 1    # one second to spare
    assert not stop()
    assert stop.longest_interval == pytest.approx(20, abs=0.5)
    stop.deadline -= 2                                      # one second short
    assert stop()


def test_walltime_from_environment_and_signal_flag():
    stop = StopControl(environ={"NLSQ_MPI_WALLTIME": "1"}, margin=5)
    assert stop() and stop.reason == "walltime"
    quiet = StopControl(environ={})
    assert not quiet() and quiet.reason == ""
    quiet._handler(10, None)
    assert quiet() and quiet.signalled == quiet.reason == "SIGUSR1"


@pytest.fixture
def restore_stop_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_before_the_fit_is_kept_for_it(restore_stop_handlers):
    record_early_signals()
    os.kill(os.getpid(), signal.SIGTERM)       # while the job still loads its data
    with StopControl(environ={}) as stop:
        assert stop() and stop.signalled == "SIGTERM"
    with StopControl(environ={}) as later:     # taken by the first fit only
        assert not later()


def test_a_second_signal_before_any_fit_ends_the_process():
    """The runner keeps one stop signal for the next fit; a second one ends a script that
    has no fit left to take it, as Python's default would, instead of running on."""
    import subprocess
    import sys
    code = ("import os, signal, time; from nlsq_mpi.preemption import record_early_signals; "
            "record_early_signals(); os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1); "
            "print('kept', flush=True); os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); "
            "print('still running')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGTERM and p.stdout == "kept\n", p.stderr[-2000:]


def test_a_write_counts_with_the_publish_that_puts_it_in_place():
    """A stop waits for its generation's fsync and rename too (a background thread's work
    the rest of the time): the longest write the walltime check plans for includes it."""
    from nlsq_mpi.checkpoint import CheckpointHook

    class Written:   # what CheckpointHook reads of the Checkpointer after a write
        last_write_seconds, last_publish_seconds = 0.5, 2.0

        def write(self, *args):
            pass

    stop = StopControl(environ={})
    hook = CheckpointHook(Written(), lane_width=4, stop=stop)
    hook.write(1, 10, None, [[], []], 0, created=0.0)
    assert stop.write_seconds == pytest.approx(2.5)
