"""Checkpoints: a versioned HDF5 schema, collective atomic writes, validated generations.

Schema (version 3), one file per generation ``gen-<round>.h5`` in checkpoint_dir:

  attrs        schema_version, fingerprint (sha256 of the problem), checksum (sha256 over
               the datasets table and state and the other attributes: ``checksum``),
               round, and meta: JSON with fingerprint_parts (one hash per part: model,
               xdata, ydata, bounds, ... so a mismatch names what differs), steps (solver
               steps per start so far), n_starts, n_params, lane_width, ranks, created
               (epoch s), versions, best_start (-1: none), best_cost
  table        (n_starts,) compound, one record per start: x0 (n), x (n), cost (inf: failed
               or not finished), status, nit, nfev
  state        (k,) compound, one record per unfinished start: start, and its complete
               solver state x (n), scale_inv (n), cost, Delta, alpha, optimality, nfev, njev,
               nit, status, pending, accepted, fresh
  best_x       (n,)            the best parameters so far

Two compound datasets (named fields: h5py and h5dump show them as records) keep a write to
a few HDF5 objects.

Writes are atomic, under a temporary name (from a run id chosen on rank 0 and broadcast
once). Every rank opens it with h5py's mpio driver and writes the state rows of its own
lanes, and one rank, the lead, the table: the rank that spent least time in the interval
(driver.least_busy; where h5py has no MPI support, rank 0 writes the whole file). In a
fit's tail, when no start waits and some rank has no running lanes, that rank writes the
whole file alone while the others compute, and the highest rank writes the fit's last
generation alone while rank 0 saves the result (driver.idle_writer). A file one rank writes
alone is written in that rank's publisher thread, a background thread that overlaps the
next interval; the same thread of the lead of a collective file fsyncs and renames it into
place (ranks on several nodes first sync their own rows, each, as the collective file
closes: one node's fsync covers its own writes only). A generation made while the one
before still waits for that thread replaces it, so the fit never waits for the disk. The
previous generation is kept, older ones and stale temporaries are removed. Readable with
plain h5py or h5dump (files written by h5file.FileWriter).
"""
import contextlib
import functools
import glob
import hashlib
import inspect
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import InputError, NlsqError
from .h5file import file_writer, no_pause
from .result import writing_cost
from .solver import SolverState, empty_state

SCHEMA_VERSION = 3   # 3: the checksum covers the attributes too
ADVICE_SHARE = 0.10   # checkpoints holding a fit up longer than this share: it says so
PUBLISHER_IDLE_SECONDS = 1.0   # a publisher thread with no file to publish for this long ends
STATE_FIELDS = SolverState._fields


class CheckpointMismatch(NlsqError, ValueError):
    """The checkpoint in checkpoint_dir belongs to a different problem."""


class CheckpointVersionError(CheckpointMismatch):
    """The checkpoint was written with another schema version: kept as it is, never set aside
    or overwritten, so the version that wrote it can still finish the job."""


class CheckpointCorrupt(NlsqError):
    """A checkpoint file failed validation."""


class CheckpointUnreadable(NlsqError):
    """The operating system refused to read a checkpoint file (permissions, an I/O error):
    not damage, so nothing is set aside and the fit does not start over."""


@dataclass
class Snapshot:
    """What a checkpoint holds, as host arrays (identical on every rank)."""
    round: int
    steps: int
    table: dict            # x0, x, cost, status, nit, nfev -> arrays
    states: np.ndarray     # state_dtype records, one per unfinished start
    lane_width: int
    ranks: int
    created: float = 0.0
    path: str = ""


def _hash(*arrays_or_text):
    h = hashlib.sha256()
    for a in arrays_or_text:
        if isinstance(a, str):
            h.update(a.encode())
        else:
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def identity(value, _seen=None, _depth=0):
    """What ``value`` (a model, its parameters, an x_scale) is, as text that is the same in
    every process that builds the same value: source code for functions (also under
    functools.partial or jax.jit), with the values their closures hold and, for a method,
    the object it is bound to; a digest for arrays; recursion into containers and into a
    callable object's attributes (or slots). Modules count by name, an object met twice by
    its first appearance, and the walk stops 12 levels deep. Never a repr with a memory
    address, which would make every rerun look like another problem."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if hasattr(value, "__array__") or isinstance(value, np.generic):
        return f"array {_hash(np.asarray(value))}"
    if inspect.ismodule(value):
        return f"module {value.__name__}"
    seen = {} if _seen is None else _seen
    if id(value) in seen:     # shared, or referring back to itself
        return f"<object {seen[id(value)]}>"
    if _depth > 12:
        return f"<{type(value).__qualname__} too deep>"
    seen[id(value)] = len(seen)
    inner = functools.partial(identity, _seen=seen, _depth=_depth + 1)
    if isinstance(value, functools.partial):
        return (f"partial({inner(value.func)}, args={inner(value.args)}, "
                f"keywords={inner(value.keywords)})")
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[{', '.join(map(inner, value))}]"
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}{{{', '.join(sorted(map(inner, value)))}}}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{inner(k)}: {inner(value[k])}"
                               for k in sorted(value, key=repr)) + "}"
    function = inspect.unwrap(value) if callable(value) else value
    if inspect.ismethod(function):
        return f"{inner(function.__func__)} bound to {inner(function.__self__)}"
    if inspect.isroutine(function):
        code = getattr(function, "__code__", None)
        try:
            text = inspect.getsource(function)
        except (OSError, TypeError):   # no source file (an interactive session, exec)
            text = (f"{getattr(function, '__module__', '')}.{function.__qualname__}"
                    + (f" {_code_identity(code)}" if code else ""))
        cells = getattr(function, "__closure__", None) or ()
        return text + (f" closure {inner([c.cell_contents for c in cells])}" if cells else "")
    kind = type(value)
    try:
        described = inspect.getsource(kind)
    except (OSError, TypeError):
        described = f"{kind.__module__}.{kind.__qualname__}"
    fields = dict(vars(value)) if hasattr(value, "__dict__") else {}
    for name in getattr(kind, "__slots__", ()):
        if hasattr(value, name):
            fields[name] = getattr(value, name)
    return described + inner(fields)


def _code_identity(code):
    """A function's compiled code, with the code of the functions defined inside it."""
    consts = [_code_identity(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]
    return _hash(code.co_code.hex(), *consts)


def fingerprint_parts(**parts):
    """One hash per named part of the problem (arrays, strings or numbers)."""
    out = {}
    for name, value in parts.items():
        if isinstance(value, (str, np.ndarray)):
            out[name] = _hash(value)
        elif isinstance(value, (list, tuple)):
            out[name] = _hash(*[v if isinstance(v, (str, np.ndarray)) else repr(v) for v in value])
        else:
            out[name] = _hash(repr(value))
    return out


def combined(parts):
    return _hash(*[f"{k}={v}" for k, v in sorted(parts.items())])


def checksum(datasets, attrs):
    """The ``checksum`` attribute: sha256 over the datasets and the attributes that say what
    they are (a flipped byte in the fingerprint would otherwise read as another problem,
    one in the meta as another lane width)."""
    header = "\n".join(f"{k}={attrs[k]}" for k in ("schema_version", "fingerprint", "round",
                                                    "meta"))
    return _hash(header, *[datasets[k] for k in sorted(datasets)])


@lru_cache(maxsize=1)
def _versions():
    import h5py
    import jax
    from . import __version__
    return {"nlsq_mpi": __version__, "jax": jax.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__}


def table_dtype(n):
    """One record of the per-start table (n parameters)."""
    return np.dtype([("x0", "f8", (n,)), ("x", "f8", (n,)), ("cost", "f8"),
                     ("status", "i4"), ("nit", "i4"), ("nfev", "i4")])


@lru_cache(maxsize=8)
def state_dtype(n):
    """One record per unfinished start: its index and every SolverState field, with the
    dtype and per-start shape the solver's host state uses (``empty_state``). The driver
    gathers the in-flight states in these records (``in_flight``), so a write concatenates
    the ranks' records and packs only the table."""
    return np.dtype([("start", "i8")] + [(f, a.dtype, a.shape[1:])
                                         for f, a in zip(STATE_FIELDS, empty_state(0, n))])


def table_records(table):
    """The schema's ``table`` dataset from the per-start table's dict of arrays."""
    records = np.empty(len(table["cost"]), table_dtype(np.shape(table["x0"])[1]))
    for field in records.dtype.names:
        records[field] = table[field]
    return records


def generations(directory):
    """Generation files, newest first."""
    return sorted(glob.glob(os.path.join(directory, "gen-*.h5")), reverse=True)


def _fsync(path):
    """fsync a file or a directory; returns its size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def durable_rename(tmp, final):
    """Put the written file ``tmp`` in place as ``final`` for good: fsync it, rename it,
    fsync the directory (so the rename survives a crash too). Returns its size."""
    size = _fsync(tmp)
    os.replace(tmp, final)
    _fsync(os.path.dirname(final) or ".")
    return size


class SolverFirst:
    """The publisher thread's scheduling policy (Linux). While it handles a file whose
    rank goes on solving on the same core (it publishes a collective file's lead, or writes
    and publishes the file of a rank that writes every generation alone: one process, or
    h5py without MPI), it runs as SCHED_BATCH: at the same priority, so never starved, but
    a batch thread does not preempt the running one when it wakes (from each fsync), it
    waits for the solver's time slice to end. A file an idle rank writes alone is written
    and published as the thread started (SCHED_OTHER), and sooner: that core has nothing
    else to do but wait in the driver's collective, which the thread yields to between the
    steps of the file (_Job.courteous). A thread that did not start as SCHED_OTHER (a job
    run with chrt, say) is left as it is. On the bench (one process, alternating 16 fits
    each) the checkpoint overhead was 6.4% with the thread at normal priority throughout
    and 4.8% this way; a collective file then took 2.6 ms (median) to 36 ms (95th
    percentile) from its write to its place."""

    def __init__(self):
        self.thread = threading.get_native_id()
        self.normal, self.batch = False, False
        if hasattr(os, "SCHED_BATCH"):
            with contextlib.suppress(OSError):
                self.normal = os.sched_getscheduler(self.thread) == os.SCHED_OTHER

    def defer(self, to_solver):
        """SCHED_BATCH with ``to_solver``, else SCHED_OTHER (where the thread started there)."""
        if self.normal and to_solver != self.batch:
            with contextlib.suppress(OSError):   # never a reason to fail a checkpoint
                os.sched_setscheduler(self.thread, os.SCHED_BATCH if to_solver
                                      else os.SCHED_OTHER, os.sched_param(0))
                self.batch = to_solver


@dataclass
class _Job:
    """A generation waiting for the publisher thread: the temporary file ``tmp`` of round
    ``round_``, already written unless ``snap`` holds the Snapshot the thread must write
    there first; ``beside_solver`` as in SolverFirst."""
    tmp: Path
    round_: int
    beside_solver: bool
    snap: Snapshot | None = None

    @property
    def courteous(self):
        """A file an idle rank writes while other ranks still solve (starts in flight). That
        rank's main thread only waits in the driver's per-interval collective then,
        spinning on the same core, and each moment it is off its core when the others
        arrive delays them all; so the thread yields the core after each step of the file
        (Checkpointer._pause). On the seed bench (2 ranks, means of 24 fits) the tail's 18
        intervals took 3.7 ms longer than without checkpoints with the thread writing each
        file in one go, 1.9 ms yielding, 1.7 ms with no tail files at all."""
        return not self.beside_solver and self.snap is not None and len(self.snap.states) > 0


class _Dropped(Exception):
    """A courteous file given up half written: the fit waits for a newer one (_pause)."""


def _fault_kills(round_, idle):
    """Fault injection for the tests (NLSQ_MPI_FAULT): die with SIGKILL once generation
    ``round_`` is written and before it is renamed: ``kill-before-rename:<round>``, or
    ``kill-before-rename:idle`` at the first file an idle rank wrote alone."""
    kind, arg = _fault()
    return kind == "kill-before-rename" and (arg == str(round_) or (idle and arg == "idle"))


def _fault_stalls(round_):
    """Fault injection for the tests (NLSQ_MPI_FAULT=slow-after:<round>): each generation
    from ``round_`` on, every rank sleeps 0.25 s, so a test's stop signal lands while
    starts are still in flight however slowly mpirun forwards it (SIGTERM took 1.3 s here,
    as long as the rest of the test job's fit)."""
    kind, arg = _fault()
    if kind == "slow-after" and round_ >= int(arg):
        time.sleep(0.25)


def _fault():
    """NLSQ_MPI_FAULT as (kind, argument): "kind:argument", or ("", "") when unset."""
    kind, _, arg = os.environ.get("NLSQ_MPI_FAULT", "").partition(":")
    return kind, arg


def best_of(table):
    ok = (table["status"] >= 0) & np.isfinite(table["cost"])
    if not ok.any():
        return -1
    idx = np.flatnonzero(ok)
    return int(idx[np.argmin(table["cost"][ok])])


class Checkpointer:
    """Writes and reads the generations of one fit's checkpoint_dir (collectively)."""

    def __init__(self, comm, directory, parts, log, start_over=False):
        """Open checkpoint_dir on every rank: rank 0 makes it, removes stale temporaries
        (and with ``start_over``, for resume=False, sets every generation aside as one, for
        _discard) and broadcasts, in one collective, what every rank must share: its problem
        parts (the attributes written collectively must agree), the run id that names the
        temporary files, and any error (raised on every rank alike)."""
        self.comm, self.dir, self.log = comm, Path(directory), log
        self.last_write_seconds = 0.0
        self.last_publish_seconds = 0.0   # a stop waits for its generation's publish too
        self.generations = 0      # written by this run
        self.solo_files = 0       # of those, written by this rank alone (driver.idle_writer)
        self.seconds = {"together": 0.0, "alone": 0.0}   # this rank's time writing them
        self.published = (-1, 0)  # (round, bytes) of the last file this rank put in place
        self.superseded = 0       # dropped unpublished for a newer one (_submit)
        # The publisher thread, the file waiting for it, its error: shared under _lock.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)   # a file waits, or flush() asks
        self._publisher, self._waiting, self._publish_error = None, None, None
        self._closing = False
        import h5py
        self.h5py = h5py
        self.collective = bool(h5py.get_config().mpi) and comm.size > 1
        # Ranks on several nodes: the publisher's fsync covers its own node's page cache
        # only, so in a collective write every rank syncs its own rows before the close.
        self.nodes_apart = comm.size > 1 and comm.local_split()[1] < comm.size
        self._serial_writer = file_writer(h5py)
        self._collective_writer = file_writer(h5py, comm) if self.collective else None
        shared = None
        self._set_aside = []   # rank 0: the generations start_over renamed away (_discard)
        if comm.rank == 0:
            problem, run_id = None, uuid.uuid4().hex[:12]
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                if not os.access(self.dir, os.W_OK | os.X_OK):
                    raise PermissionError(f"no permission to write in {self.dir}")
                for old in glob.glob(str(self.dir / ".tmp-*")):
                    os.remove(old)
                # Renamed, not removed, here: every rank waits for this broadcast, and a
                # rename costs 0.01 ms where an unlink costs 0.1-0.3 ms. A temporary's name
                # is no generation's, so the new run's generations cannot mix with them;
                # _discard removes them at the end, a later open if the fit dies first.
                for old in generations(self.dir) if start_over else []:
                    aside = self.dir / f".tmp-old-{run_id}-{Path(old).name}"
                    os.rename(old, aside)
                    self._set_aside.append(aside)
            except OSError as exc:
                problem = f"checkpoint_dir: cannot use {str(self.dir)!r}: {exc}"
            if comm.size > 1 and not self.collective and problem is None:
                log.info("h5py has no MPI support: one rank writes each checkpoint (rank 0, or "
                         "in the tail a rank with no starts left)")
            shared = (parts, run_id, problem)
        parts, self.run_id, problem = comm.bcast(shared)
        if problem:
            raise InputError(problem)
        self.parts, self.fingerprint = parts, combined(parts)

    # -- writing ------------------------------------------------------------------------
    def write(self, round_, snapshot, my_rows, alone=None, lead=0):
        """Write generation ``round_``; every rank calls this, ``snapshot()`` building the
        Snapshot where this rank writes. With ``alone`` (an idle rank the driver chose), or
        where h5py has no MPI support (rank 0), one rank writes the whole file by itself,
        in its publisher thread, which then puts it in place; every rank returns at once, so
        the ranks still solving never wait for that file (in the seed bench's tail an interval
        of the one rank still solving took 2.5-5 ms and a file 2.5-3 ms, sometimes 100 ms).
        Otherwise all ranks write it together with h5py's mpio driver, each the slice
        ``my_rows`` of the snapshot's states that its own lanes hold, and the rank ``lead``
        (the same on every rank: the driver's ``least_busy``) the per-start table too;
        ``lead`` then puts the file in place."""
        _fault_stalls(round_)
        idle_rank = alone   # the driver's choice
        if alone is None and not self.collective:
            alone = 0
        tmp = self.dir / f".tmp-gen-{round_:09d}-{self.run_id}.h5"   # same name on every rank
        self.generations += 1
        if alone is not None:
            if self.comm.rank == alone:
                self.solo_files += int(idle_rank is not None)
                snap = snapshot()
                # The thread writes the table as it is now; the caller goes on updating it.
                snap = replace(snap, table={k: np.array(v) for k, v in snap.table.items()})
                self._submit(tmp, round_, beside_solver=idle_rank is None, snap=snap)
            return
        t0 = time.perf_counter()
        self._write_file(tmp, snapshot(), my_rows, lead)
        if _fault_kills(round_, idle=False):
            self.comm.barrier()       # every rank dies only once the file is written
            os.kill(os.getpid(), 9)
        if self.comm.rank == lead:
            self._submit(tmp, round_, beside_solver=True)
        self.last_write_seconds = time.perf_counter() - t0
        self.seconds["together"] += self.last_write_seconds

    def _write_alone(self, tmp, snap, idle, pause=None):
        """The whole file ``tmp`` from this rank (in the publisher thread); ``idle``: this
        rank has no lanes left to solve; ``pause`` as in _pause."""
        t0 = time.perf_counter()
        self._write_file(tmp, snap, None, 0, pause)
        if _fault_kills(snap.round, idle):
            os.kill(os.getpid(), 9)
        self.last_write_seconds = time.perf_counter() - t0
        self.seconds["alone"] += self.last_write_seconds

    def _write_file(self, tmp, snap, my_rows, lead, pause=None):
        """The file's attributes and datasets: with ``my_rows``, this rank's part of a
        collective write (``lead`` writes the table and best_x); with None, the whole
        file from this rank alone, calling ``pause`` (if any) between its steps."""
        pause = pause or no_pause
        data = {"table": table_records(snap.table), "state": snap.states}
        pause()
        best = best_of(snap.table)
        meta = {"fingerprint_parts": self.parts, "steps": snap.steps,
                "n_starts": len(snap.table["cost"]), "n_params": snap.table["x0"].shape[1],
                "lane_width": snap.lane_width, "ranks": snap.ranks, "created": snap.created,
                "versions": _versions(), "best_start": best,
                "best_cost": float(snap.table["cost"][best]) if best >= 0 else None}
        attrs = {"schema_version": SCHEMA_VERSION, "fingerprint": self.fingerprint,
                 "round": snap.round, "meta": json.dumps(meta)}
        attrs["checksum"] = checksum(data, attrs)
        pause()
        best_x = snap.table["x"][best] if best >= 0 else np.full(snap.table["x"].shape[1], np.nan)
        whole = my_rows is None
        lo, hi = (0, len(data["state"])) if whole else my_rows
        mine = whole or self.comm.rank == lead
        writer = self._serial_writer if whole else self._collective_writer
        writer.write(tmp, attrs, {
            "table": (data["table"].dtype, data["table"].shape,
                      [(data["table"], 0)] if mine else []),
            "state": (data["state"].dtype, data["state"].shape, [(data["state"][lo:hi], lo)]),
            "best_x": (best_x.dtype, best_x.shape, [(best_x, 0)] if mine else [])},
            sync=self.nodes_apart and not whole, pause=pause)

    def _submit(self, tmp, round_, beside_solver=False, snap=None):
        """Hand ``tmp`` to this rank's publisher thread, which puts it in place while the
        next interval computes (``beside_solver``: this rank solves in it too, see
        SolverFirst); with ``snap``, the thread first writes that Snapshot there, whole. A
        job still waiting there is newer than what is in place but older than this one: it
        is dropped (its file removed unpublished, if it was written), so the fit never
        waits for the disk between intervals (in a fit's tail an idle rank makes a
        generation every 1.5-5 ms on the test machine; fsync, rename and directory fsync
        take about 2 ms). Raises what went wrong with an earlier job (a full disk)."""
        with self._lock:
            error, self._publish_error = self._publish_error, None
            if error is None:
                if self._waiting is not None:
                    if self._waiting.snap is None:   # a written file
                        os.remove(self._waiting.tmp)
                    self.superseded += 1
                self._waiting = _Job(tmp, round_, beside_solver, snap)
                if self._publisher is None:   # starting a thread costs 0.2 ms: it stays
                    self._publisher = threading.Thread(target=self._publish_waiting,
                                                       name="nlsq_mpi-checkpoint", daemon=False)
                    self._publisher.start()
                else:
                    self._wake.notify()
        if error is not None:
            raise error

    def _publish_waiting(self):
        """The publisher thread: write (where it was handed a Snapshot) and publish the
        newest waiting file, then wait for the next; it ends when flush() asks, or after
        PUBLISHER_IDLE_SECONDS without work (so a fit that ends by an error never leaves it
        behind). An error stops it too; the next _submit or flush() raises it instead of it
        vanishing here."""
        policy = SolverFirst()
        while True:
            with self._lock:
                if self._waiting is None and not self._closing:
                    self._wake.wait(PUBLISHER_IDLE_SECONDS)
                job, self._waiting = self._waiting, None
                if job is None:
                    self._publisher = None
                    return
            try:
                policy.defer(job.beside_solver)
                if job.snap is not None:
                    self._write_alone(job.tmp, job.snap, idle=not job.beside_solver,
                                      pause=self._pause if job.courteous else None)
                self._publish(job.tmp, job.round_)
            except _Dropped:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(job.tmp)
                with self._lock:
                    self.superseded += 1
            except BaseException as exc:
                with self._lock:
                    self._publish_error = exc
                    if self._waiting is not None:   # left as a stale temporary
                        self._waiting = None
                    self._publisher = None
                return

    def _pause(self):
        """Between the steps of a courteous file (_Job.courteous): yield the core to this
        rank's main thread; give the file up (_Dropped) once a job waits that is not
        courteous itself, the fit's last generation or a stop's, which the fit waits for
        and which holds all this one does (at the end of the seed bench's fit the thread
        was often in the middle of a tail file: finishing it and its fsync first made the
        end 0.6 ms slower)."""
        waiting = self._waiting   # read without the lock: a stale answer costs one step
        if waiting is not None and not waiting.courteous:
            raise _Dropped
        getattr(os, "sched_yield", no_pause)()

    def _publish(self, tmp, round_):
        """fsync, rename into place, fsync the directory, drop generations older than the
        previous one. Runs in the publisher thread (os.fsync releases the GIL) of the rank
        that wrote the file alone, or of the lead of a collective write, while the next
        interval computes; the end of the fit, a stop and stats() wait for it."""
        t0 = time.perf_counter()
        size = durable_rename(tmp, self.dir / f"gen-{round_:09d}.h5")
        # A publisher that ran late (one rank's, still in its fsync while another rank put
        # two newer generations in place) removes its own file here, as it should.
        for old in generations(self.dir)[2:]:
            # Another rank's publisher may be removing the same one.
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)
        self.published = (round_, size)
        self.last_publish_seconds = time.perf_counter() - t0

    # -- reading ------------------------------------------------------------------------
    def load_latest(self):
        """The newest valid generation as a Snapshot (broadcast from rank 0), or None.
        Damaged generations are reported and skipped; a different problem raises."""
        result = None
        if self.comm.rank == 0:
            try:
                result = self._scan()
            except (CheckpointMismatch, CheckpointUnreadable) as exc:
                result = exc
        result = self.comm.bcast(result)   # every rank raises the same error
        if isinstance(result, NlsqError):
            raise result
        return result

    def _scan(self):
        for path in generations(self.dir):
            try:
                snap, attrs = read_generation(path, self.h5py)
            except CheckpointCorrupt as exc:
                # Set aside (not deleted, for inspection) so it never shadows the new generations.
                os.replace(path, path + ".damaged")
                self.log.warning("checkpoint %s is damaged (%s); kept as %s.damaged, trying the "
                                 "previous generation", path, exc, Path(path).name)
                continue
            if attrs["fingerprint"] != self.fingerprint:
                stored = attrs["meta"].get("fingerprint_parts", {})
                differs = [k for k, v in self.parts.items() if stored.get(k) != v]
                raise CheckpointMismatch(
                    f"checkpoint_dir: {path} belongs to a different problem (differs in: "
                    f"{', '.join(differs) or 'fingerprint'}); nothing was overwritten. Use a new "
                    "checkpoint_dir, or resume=False to start over in this one")
            return snap
        return None

    @contextlib.contextmanager
    def flushing(self):
        """Flush when the fit loop ends by an exception (Preempted, say), so the stop's
        checkpoint is in place before the process exits. A fit that finishes flushes in
        stats(), its last publish overlapping the result's assembly meanwhile."""
        try:
            yield self
        except BaseException:
            self.flush()
            raise

    def flush(self):
        """Wait until the newest generation this rank publishes is durable and in place;
        raise what went wrong if it could not be."""
        with self._lock:
            publisher, self._closing = self._publisher, True
            self._wake.notify()
        if publisher is not None:   # it ends once nothing waits (only this thread submits)
            publisher.join()
        self._discard()
        with self._lock:
            error, self._publish_error, self._closing = self._publish_error, None, False
        if error is not None:
            raise error

    def stats(self):
        """This run's writing, the same on every rank (all call it): generations written;
        write_seconds, the time writing them (the longest any rank spent in the collective
        writes, collective_seconds, that every rank stops for, plus every file one rank
        wrote alone, in its background thread while the others went on); how many one
        rank wrote alone (driver.idle_writer: in the tail while the others computed, and
        the last one); how many were dropped unpublished because a newer one came before
        their turn (_submit); the size of the newest file put in place."""
        self.flush()
        per_rank = self.comm.allgather((self.seconds, self.solo_files, self.published,
                                        self.superseded))
        together = max(s["together"] for s, *_ in per_rank)
        seconds = together + sum(s["alone"] for s, *_ in per_rank)
        return {"dir": str(self.dir), "writes": self.generations,
                "write_seconds": round(seconds, 6), "collective_seconds": round(together, 6),
                "solo_writes": sum(n for _, n, _, _ in per_rank),
                "superseded": sum(n for *_, n in per_rank),
                "last_bytes": max(p for _, _, p, _ in per_rank)[1]}

    def _discard(self):
        """Remove the generations the open set aside (rank 0, in the flush at the fit's end,
        while the highest rank still puts the last generation in place)."""
        for aside in self._set_aside:
            with contextlib.suppress(FileNotFoundError):
                os.remove(aside)
        self._set_aside = []

    def clear(self):
        self.flush()
        self.comm.barrier()   # every rank's publisher is done
        if self.comm.rank == 0:
            for path in generations(self.dir):
                os.remove(path)
        self.comm.barrier()


def writing_advice(stats, interval, every_seconds=None):
    """The warning a fit logs when its checkpoints held it up for more than ADVICE_SHARE of
    its time (``stats``: Checkpointer.stats() plus the fit's ``fit_seconds``; the held-up
    share as in result.writing_cost), else None; ``interval`` and ``every_seconds`` as the
    fit's checkpoint_interval and checkpoint_seconds. A write every interval suits
    intervals long against a write: at batch_size=16 the seed bench's 1,000 starts on 2
    ranks wrote 72 generations, 71 of them collective, of about 4 ms against 20-22 ms of
    computation each, which held the fit up for 14% of its time (at the default 256 lanes
    6 collective writes of 25: 2%). checkpoint_seconds at 20 writes' time keeps writing near 5%
    whatever an interval costs."""
    each, _, held_up = writing_cost(stats)
    if held_up <= ADVICE_SHARE:
        return None
    writes, fit_seconds = stats["writes"], stats["fit_seconds"]
    now = (f"checkpoint_seconds={every_seconds:g}" if every_seconds is not None
           else f"every {interval} solver steps")
    return (f"checkpoints held up this fit for {100 * held_up:.0f}% of its time: {writes} "
            f"writes of {1e3 * each:.1f} ms ({now}), about {1e3 * fit_seconds / writes:.0f} ms "
            f"of the fit each; to write less often, set checkpoint_seconds="
            f"{max(0.1, 20 * each):.2g} (a write takes about 5% then) or more")


class CheckpointHook:
    """What the driver calls: ``wants_write()`` on rank 0 (every interval, or every
    ``every_seconds``), then ``write(...)`` on every rank with the in-flight states that all
    ranks contributed to the driver's per-interval collective."""

    def __init__(self, checkpointer, lane_width, every_seconds=None, stop=None):
        self.ckpt, self.lane_width, self.every_seconds, self.stop = \
            checkpointer, lane_width, every_seconds, stop
        self.last = time.monotonic()

    def wants_write(self):
        return self.every_seconds is None or time.monotonic() - self.last >= self.every_seconds

    def write(self, round_, steps, table, parts, rank, created, alone=None, lead=0):
        """``created`` is rank 0's clock, so every rank writes identical attributes;
        ``alone``: the idle rank the driver chose to write this generation by itself, or
        None; ``lead``: the rank that writes the table of a collective generation and puts
        it in place."""
        def snapshot():   # built only where this rank writes
            return Snapshot(round_, steps, table.as_dict(), np.concatenate(parts),
                            self.lane_width, len(parts), created)

        lo = sum(len(p) for p in parts[:rank])
        self.ckpt.write(round_, snapshot, (lo, lo + len(parts[rank])), alone, lead)
        if self.stop is not None:
            self.stop.write_seconds = max(self.stop.write_seconds, self.ckpt.last_write_seconds
                                          + self.ckpt.last_publish_seconds)
        self.last = time.monotonic()


def in_flight(batch):
    """This rank's unfinished starts and their solver states: the checkpoint's ``state``
    records (the driver's collective carries their bytes)."""
    lanes = np.flatnonzero(batch.start_of_lane >= 0)
    records = np.empty(len(lanes), state_dtype(np.shape(batch.state.x)[1]))
    records["start"] = batch.start_of_lane[lanes]
    for field in STATE_FIELDS:
        records[field] = np.asarray(getattr(batch.state, field))[lanes]
    return records


def read_generation(path, h5py=None):
    """(Snapshot, attrs) of one generation file; CheckpointCorrupt when it does not validate,
    CheckpointVersionError when a valid file has another schema version, CheckpointUnreadable
    when the operating system refuses to read it."""
    if h5py is None:
        import h5py
    try:
        # No lock where HDF5 can do without (1.10.7 on): a lock that fails (a file system
        # without one, another job reading the file) is no reason to think the file damaged.
        unlocked = {"locking": False} if hasattr(h5py.h5p.PropFAID, "set_file_locking") else {}
        with h5py.File(path, "r", **unlocked) as fh:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fh.attrs.items()}
            version = attrs.get("schema_version")
            if isinstance(version, (int, np.integer)) and version != SCHEMA_VERSION:
                raise CheckpointVersionError(
                    f"checkpoint_dir: {path} has checkpoint schema version {version}; this "
                    f"nlsq_mpi reads version {SCHEMA_VERSION}. Finish the job with the nlsq_mpi "
                    "that wrote it, or start over: resume=False, a new checkpoint_dir, or "
                    f"remove the gen-*.h5 files in {os.path.dirname(path) or '.'}; nothing was "
                    "overwritten")
            if version != SCHEMA_VERSION:
                raise CheckpointCorrupt(f"schema_version {version!r}, expected {SCHEMA_VERSION}")
            data = {k: fh[k][...] for k in ("table", "state")}
            if checksum(data, attrs) != attrs.get("checksum"):
                raise CheckpointCorrupt("checksum mismatch")
            attrs["meta"] = json.loads(attrs["meta"])
    except (CheckpointCorrupt, CheckpointVersionError, AttributeError, NameError):
        raise   # ours, or a bug: never a reason to set a file aside
    except OSError as exc:
        if exc.errno is not None:   # the operating system's error (h5py sets errno then)
            raise CheckpointUnreadable(
                f"checkpoint_dir: cannot read {path} ({exc}); nothing was changed. Check the "
                "file's permissions and the file system, then run again") from None
        raise CheckpointCorrupt(f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # truncated or damaged file: h5py raises several types
        raise CheckpointCorrupt(f"{type(exc).__name__}: {exc}") from None
    table = {f: np.ascontiguousarray(data["table"][f]) for f in data["table"].dtype.names}
    states = data["state"]
    meta = attrs["meta"]
    snap = Snapshot(round=int(attrs["round"]), steps=int(meta["steps"]), table=table,
                    states=states, lane_width=int(meta["lane_width"]), ranks=int(meta["ranks"]),
                    created=float(meta["created"]), path=str(path))
    return snap, attrs
