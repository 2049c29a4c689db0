"""Stop requests: SIGTERM/SIGUSR1 (mpirun forwards both) and the walltime.

``StopControl`` is polled by the driver once per interval on every rank; the ranks agree on
stopping through the driver's per-interval collective, write a checkpoint and exit with
EXIT_PREEMPTED (75) so a job script can requeue.
"""
import os
import signal
import threading
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def parse_walltime(value):
    """Seconds from a number or "[[D-]HH:]MM:SS"; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    days, _, rest = str(value).rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds + (float(days) * 86400 if days else 0.0)


class StopControl:
    """Signal flag plus deadline. Use as a context manager around the fit loop."""

    def __init__(self, walltime=None, environ=os.environ, margin=5.0):
        self.signalled = None
        self.deadline = None
        wall = parse_walltime(walltime if walltime is not None else environ.get("NLSQ_MPI_WALLTIME"))
        if wall is not None:
            self.deadline = time.time() + wall
        end = environ.get("SLURM_JOB_END_TIME")
        if end:
            self.deadline = min(self.deadline or float("inf"), float(end))
        self.margin = margin
        self.last_call = None
        self.longest_interval = 0.0
        self.write_seconds = 0.0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handler(self, signum, frame):
        self.signalled = signal.Signals(signum).name

    def __call__(self):
        """True when this rank should stop at the end of the current interval."""
        now = time.time()
        if self.last_call is not None:
            self.longest_interval = max(self.longest_interval, now - self.last_call)
        self.last_call = now
        if self.signalled:
            return True
        if self.deadline is not None:
            needed = 2 * self.longest_interval + 2 * self.write_seconds + self.margin
            return now + needed >= self.deadline
        return False
