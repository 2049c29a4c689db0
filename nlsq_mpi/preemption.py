"""Stop requests: SIGTERM/SIGUSR1 (mpirun forwards both) and the walltime.

``StopControl`` is polled by the driver once per interval on every rank; the ranks agree on
stopping through the driver's per-interval collective, write a checkpoint and exit with
EXIT_PREEMPTED (75) so a job script can requeue. ``record_early_signals`` (the runner
calls it first thing) keeps a stop signal that arrives before a fit, during imports or
data loading, for the next fit to act on, instead of letting it kill the job unsaved.
"""
import math
import os
import re
import signal
import threading
import time

from .errors import InputError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# SLURM's time formats that carry a colon or a day count: [H:]M:S, D-H[:M[:S]].
_CLOCK = re.compile(r"(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                    r"|(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)")

_early = {"signal": None}   # a stop signal no fit has taken yet


def parse_walltime(value):
    """Seconds from a number of seconds or a SLURM time ("MM:SS", "HH:MM:SS", "D-HH",
    "D-HH:MM", "D-HH:MM:SS"; a bare number is seconds here, where SLURM reads minutes);
    None stays None. ValueError for anything else and for a time that is not positive."""
    if value is None:
        return None
    text = str(value).strip()
    clock = _CLOCK.fullmatch(text)
    if clock:
        t = {k: int(v or 0) for k, v in clock.groupdict().items()}
        seconds = (86400 * t["d"] + 3600 * (t["dh"] + t["h"]) + 60 * (t["dm"] + t["m"])
                   + t["ds"] + t["s"])
    else:
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{value!r} is not a positive time: give seconds, or [D-]HH:MM:SS "
                         "as SLURM writes it")
    return seconds


def record_early_signals():
    """Until a fit installs its own handlers (and again between fits), keep a SIGTERM or
    SIGUSR1 for the next fit, which then stops at the end of its first interval with a
    checkpoint and status 75. A second signal before a fit takes the first ends the
    process as Python's default would (a script with no fit left, or none at all, is not
    kept running until the scheduler's SIGKILL). Only for the runner's main thread: a
    library caller keeps Python's default handling."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _keep)


def forget_early_signals():
    """Python's default handling again (the runner's detect and inspect run no fit)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def _keep(signum, frame):
    if _early["signal"] is not None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    _early["signal"] = signal.Signals(signum).name


class StopControl:
    """Signal flag plus deadline. Use as a context manager around the fit loop."""

    def __init__(self, walltime=None, environ=os.environ, margin=5.0, watch_deadline=True):
        """``watch_deadline=False`` (a fit without checkpoint_dir: nothing to save, and a
        stop with status 75 would requeue it to start over, forever) leaves the walltime to
        the scheduler and stops on signals only."""
        self.signalled = None
        self.reason = ""   # why __call__ last said stop: the signal's name or "walltime"
        self.deadline = None
        if watch_deadline:
            self.deadline = _deadline(walltime, environ)
        self.margin = margin
        self.last_call = None
        self.longest_interval = 0.0
        self.write_seconds = 0.0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
            self.signalled, _early["signal"] = self.signalled or _early["signal"], None
        # The first interval is timed from here, so the walltime check after it already
        # counts that interval (with its compilation), not zero.
        self.last_call = time.time()
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
            self.reason = self.signalled
            return True
        if self.deadline is not None:
            needed = 2 * self.longest_interval + 2 * self.write_seconds + self.margin
            if now + needed >= self.deadline:
                self.reason = "walltime"
                return True
        return False


def _deadline(walltime, environ):
    """The epoch second to be done by: ``walltime`` (else NLSQ_MPI_WALLTIME) from now, or
    SLURM_JOB_END_TIME, whichever comes first; None without either. InputError (the same
    on every rank) for a value that is not a time."""
    deadline = None
    name, value = (("walltime", walltime) if walltime is not None
                   else ("NLSQ_MPI_WALLTIME", environ.get("NLSQ_MPI_WALLTIME")))
    try:
        wall = parse_walltime(value)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None
    if wall is not None:
        deadline = time.time() + wall
    end = environ.get("SLURM_JOB_END_TIME")
    if end:
        try:
            end = float(end)
        except ValueError:
            raise InputError(f"SLURM_JOB_END_TIME: {end!r} is not an epoch time in seconds") \
                from None
        deadline = min(deadline or math.inf, end)
    return deadline
