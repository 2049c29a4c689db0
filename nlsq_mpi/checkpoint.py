"""Checkpoints: a versioned HDF5 schema, collective atomic writes, validated generations.

Schema (version 1), one file per generation ``gen-<round>.h5`` in checkpoint_dir:

  attrs   schema_version, fingerprint (sha256 of the problem), fingerprint/<part> (one hash
          per part: model, data, bounds, ... so a mismatch names what differs), round,
          steps (solver steps per start so far), n_starts, n_params, lane_width, ranks,
          created (epoch s), versions (JSON), checksum (sha256 over every dataset, in order)
  table/  x0 (n_starts, n), x, cost, status, nit, nfev        the per-start table
  state/  start (k,) and one dataset per SolverState field     every unfinished start's
          (k, ...)                                             complete solver state
  best/   x (n,), cost (), start ()                            the best so far (start -1: none)

Writes are atomic: the temporary name is chosen on rank 0 and broadcast, every rank opens it
(h5py's mpio driver when h5py has MPI support, each rank writing the state rows of its own
lanes; otherwise rank 0 writes the whole file), it is closed, fsynced and renamed into place;
the previous generation is kept, older ones and stale temporaries are removed.
Readable with plain h5py or h5dump.
"""
import glob
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NlsqError
from .solver import SolverState

SCHEMA_VERSION = 1
STATE_FIELDS = SolverState._fields
TABLE_FIELDS = ("x0", "x", "cost", "status", "nit", "nfev")


class CheckpointMismatch(NlsqError, ValueError):
    """The checkpoint in checkpoint_dir belongs to a different problem."""


class CheckpointCorrupt(NlsqError):
    """A checkpoint file failed validation."""


@dataclass
class Snapshot:
    """What a checkpoint holds, as host arrays (identical on every rank)."""
    round: int
    steps: int
    table: dict            # TABLE_FIELDS -> arrays
    states: dict           # "start" and STATE_FIELDS -> arrays, one row per unfinished start
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


def _checksum(table, states):
    return _hash(*[np.asarray(table[k]) for k in TABLE_FIELDS],
                 *[np.asarray(states[k]) for k in ("start", *STATE_FIELDS)])


def _versions():
    import h5py
    import jax
    from . import __version__
    return json.dumps({"nlsq_mpi": __version__, "jax": jax.__version__, "numpy": np.__version__,
                       "h5py": h5py.__version__})


def generations(directory):
    """Generation files, newest first."""
    return sorted(glob.glob(os.path.join(directory, "gen-*.h5")), reverse=True)


def best_of(table):
    ok = (table["status"] >= 0) & np.isfinite(table["cost"])
    if not ok.any():
        return -1
    idx = np.flatnonzero(ok)
    return int(idx[np.argmin(table["cost"][ok])])


class Checkpointer:
    """Writes and reads the generations of one fit's checkpoint_dir (collectively)."""

    def __init__(self, comm, directory, parts, log):
        self.comm, self.dir, self.parts, self.log = comm, Path(directory), parts, log
        self.fingerprint = combined(parts)
        self.last_write_seconds = 0.0
        self.writes, self.write_seconds, self.last_bytes = 0, 0.0, 0
        import h5py
        self.h5py = h5py
        self.collective = bool(h5py.get_config().mpi) and comm.size > 1
        if comm.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in glob.glob(str(self.dir / ".tmp-*")):
                os.remove(stale)
            if comm.size > 1 and not self.collective:
                log.info("h5py has no MPI support: rank 0 writes the checkpoints")
        comm.barrier()

    # -- writing ------------------------------------------------------------------------
    def write(self, snap: Snapshot, my_rows):
        """Write generation ``snap.round``. Every rank holds the whole snapshot; ``my_rows``
        is the slice of snap.states rows that this rank's lanes hold (written by this rank
        in collective mode)."""
        t0 = time.perf_counter()
        name = self.comm.bcast(f".tmp-gen-{snap.round:09d}-{uuid.uuid4().hex[:12]}.h5"
                               if self.comm.rank == 0 else None)
        tmp = self.dir / name
        checksum = _checksum(snap.table, snap.states)
        attrs = {"schema_version": SCHEMA_VERSION, "fingerprint": self.fingerprint,
                 "round": snap.round, "steps": snap.steps,
                 "n_starts": len(snap.table["cost"]), "n_params": snap.table["x0"].shape[1],
                 "lane_width": snap.lane_width, "ranks": snap.ranks, "created": time.time(),
                 "versions": _versions(), "checksum": checksum,
                 **{f"fingerprint/{k}": v for k, v in self.parts.items()}}
        if self.collective:
            from mpi4py import MPI
            with self.h5py.File(tmp, "w", driver="mpio", comm=MPI.COMM_WORLD) as fh:
                dsets = self._create(fh, snap, attrs)
                lo, hi = my_rows
                if hi > lo:
                    for k in ("start", *STATE_FIELDS):
                        dsets["state/" + k][lo:hi] = snap.states[k][lo:hi]
                if self.comm.rank == 0:
                    self._write_replicated(dsets, snap)
        elif self.comm.rank == 0:
            with self.h5py.File(tmp, "w") as fh:
                dsets = self._create(fh, snap, attrs)
                for k in ("start", *STATE_FIELDS):
                    dsets["state/" + k][...] = snap.states[k]
                self._write_replicated(dsets, snap)
        if os.environ.get("NLSQ_MPI_FAULT") == f"kill-before-rename:{snap.round}":
            os.kill(os.getpid(), 9)   # fault injection for the tests: die mid-write
        if self.comm.rank == 0:
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            final = self.dir / f"gen-{snap.round:09d}.h5"
            os.replace(tmp, final)
            dfd = os.open(self.dir, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
            for old in generations(self.dir)[2:]:
                os.remove(old)
            self.last_bytes = os.path.getsize(final)
        self.comm.barrier()
        self.last_write_seconds = time.perf_counter() - t0
        self.writes += 1
        self.write_seconds += self.last_write_seconds

    @staticmethod
    def _create(fh, snap, attrs):
        for k, v in attrs.items():
            fh.attrs[k] = v
        dsets = {}
        for k in TABLE_FIELDS:
            a = np.asarray(snap.table[k])
            dsets["table/" + k] = fh.create_dataset("table/" + k, shape=a.shape, dtype=a.dtype)
        for k in ("start", *STATE_FIELDS):
            a = np.asarray(snap.states[k])
            dsets["state/" + k] = fh.create_dataset("state/" + k, shape=a.shape, dtype=a.dtype)
        n = snap.table["x0"].shape[1]
        for k, shape, dtype in (("x", (n,), "f8"), ("cost", (), "f8"), ("start", (), "i8")):
            dsets["best/" + k] = fh.create_dataset("best/" + k, shape=shape, dtype=dtype)
        return dsets

    @staticmethod
    def _write_replicated(dsets, snap):
        for k in TABLE_FIELDS:
            dsets["table/" + k][...] = snap.table[k]
        b = best_of(snap.table)
        dsets["best/start"][()] = b
        dsets["best/cost"][()] = snap.table["cost"][b] if b >= 0 else np.inf
        dsets["best/x"][...] = snap.table["x"][b] if b >= 0 else np.full(snap.table["x"].shape[1], np.nan)

    # -- reading ------------------------------------------------------------------------
    def load_latest(self):
        """The newest valid generation as a Snapshot (broadcast from rank 0), or None.
        Damaged generations are reported and skipped; a different problem raises."""
        result = None
        if self.comm.rank == 0:
            try:
                result = self._scan()
            except CheckpointMismatch as exc:
                result = exc
        result = self.comm.bcast(result)
        if isinstance(result, CheckpointMismatch):
            raise result
        return result

    def _scan(self):
        for path in generations(self.dir):
            try:
                snap, attrs = read_generation(path, self.h5py)
            except CheckpointCorrupt as exc:
                self.log.warning("checkpoint %s is damaged (%s); trying the previous generation", path, exc)
                continue
            if attrs["fingerprint"] != self.fingerprint:
                differs = [k for k, v in self.parts.items() if attrs.get(f"fingerprint/{k}") != v]
                raise CheckpointMismatch(
                    f"checkpoint_dir: {path} belongs to a different problem (differs in: "
                    f"{', '.join(differs) or 'fingerprint'}); nothing was overwritten. Use a new "
                    "checkpoint_dir, or resume=False to start over in this one")
            return snap
        return None

    def stats(self):
        """Writes so far, their total seconds, and the size of the last file (rank 0)."""
        return {"dir": str(self.dir), "writes": self.writes,
                "write_seconds": round(self.write_seconds, 6), "last_bytes": self.last_bytes}

    def clear(self):
        if self.comm.rank == 0:
            for path in generations(self.dir):
                os.remove(path)
        self.comm.barrier()


def read_generation(path, h5py=None):
    """(Snapshot, attrs) of one generation file; CheckpointCorrupt when it does not validate."""
    if h5py is None:
        import h5py
    try:
        with h5py.File(path, "r") as fh:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fh.attrs.items()}
            if attrs.get("schema_version") != SCHEMA_VERSION:
                raise CheckpointCorrupt(f"schema_version {attrs.get('schema_version')!r}, "
                                        f"expected {SCHEMA_VERSION}")
            table = {k: fh["table/" + k][...] for k in TABLE_FIELDS}
            states = {k: fh["state/" + k][...] for k in ("start", *STATE_FIELDS)}
    except CheckpointCorrupt:
        raise
    except Exception as exc:  # truncated or unreadable file: h5py raises several types
        raise CheckpointCorrupt(f"{type(exc).__name__}: {exc}") from None
    if _checksum(table, states) != attrs.get("checksum"):
        raise CheckpointCorrupt("checksum mismatch")
    snap = Snapshot(round=int(attrs["round"]), steps=int(attrs["steps"]), table=table,
                    states=states, lane_width=int(attrs["lane_width"]), ranks=int(attrs["ranks"]),
                    created=float(attrs["created"]), path=str(path))
    return snap, attrs
