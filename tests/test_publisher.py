"""The publisher thread that puts written generations in place, and the file writer's and
MPI start-up settings it relies on; one process, no JAX."""
import errno
import logging
import os
import threading

import h5py
import numpy as np
import pytest

from nlsq_mpi.checkpoint import (Checkpointer, CheckpointHook, Snapshot, generations,
                                 read_generation, state_dtype)
from nlsq_mpi.h5file import FileWriter
from nlsq_mpi.parallel.comm import SerialComm, mpi_io_defaults
from nlsq_mpi.result import StartsTable


def _checkpointer(directory):
    return Checkpointer(SerialComm(), directory, {}, logging.getLogger("test"))


def _written(directory, round_):
    tmp = directory / f".tmp-gen-{round_:09d}-test.h5"
    tmp.write_bytes(b"generation %d" % round_)
    return tmp


def test_a_generation_written_while_one_waits_replaces_it(tmp_path, monkeypatch):
    """Round 1 is being made durable when rounds 2 and 3 are written: round 2 is removed
    unpublished, round 3 goes in place after round 1, and the fit never waited."""
    ckpt = _checkpointer(tmp_path)
    started, release = threading.Event(), threading.Event()
    publish = Checkpointer._publish

    def slow_publish(self, tmp, round_):
        started.set()
        assert release.wait(30)
        publish(self, tmp, round_)

    monkeypatch.setattr(Checkpointer, "_publish", slow_publish)
    ckpt._submit(_written(tmp_path, 1), 1)
    assert started.wait(30)              # the thread holds round 1
    second = _written(tmp_path, 2)
    ckpt._submit(second, 2)              # waits behind round 1
    ckpt._submit(_written(tmp_path, 3), 3)   # replaces round 2, without waiting
    assert not second.exists() and ckpt.superseded == 1
    release.set()
    ckpt.flush()
    assert [p.rsplit("/", 1)[1] for p in generations(tmp_path)] == ["gen-000000003.h5",
                                                                   "gen-000000001.h5"]
    assert (tmp_path / "gen-000000003.h5").read_bytes() == b"generation 3"
    assert not list(tmp_path.glob(".tmp-*")) and ckpt.published[0] == 3
    assert ckpt.stats()["superseded"] == 1


def test_a_file_one_rank_writes_alone_is_written_by_its_publisher_thread(tmp_path, monkeypatch):
    """Where one rank writes a generation alone (one process here), write() returns before
    the file is written: the publisher thread writes it, from a copy of the table as it
    was, while the driver goes on updating the table; a generation still waiting unwritten
    when a newer one comes is dropped without being written."""
    started, release, written = threading.Event(), threading.Event(), []
    write_file = Checkpointer._write_file

    def slow_write_file(self, tmp, snap, my_rows, lead, pause=None):
        assert threading.current_thread() is not threading.main_thread() and my_rows is None
        started.set()
        assert release.wait(30)
        written.append(snap.round)
        write_file(self, tmp, snap, my_rows, lead, pause)

    monkeypatch.setattr(Checkpointer, "_write_file", slow_write_file)
    ckpt = _checkpointer(tmp_path)
    hook = CheckpointHook(ckpt, lane_width=4)
    table, no_states = StartsTable.empty(3, 2), [np.empty(0, state_dtype(2))]
    hook.write(1, 10, table, no_states, 0, created=0.0)
    assert started.wait(30)              # the thread writes round 1; write() has returned
    table.cost[0] = 5.0                  # the driver goes on
    hook.write(2, 20, table, no_states, 0, created=0.0)   # waits behind round 1
    hook.write(3, 30, table, no_states, 0, created=0.0)   # replaces round 2, unwritten
    assert ckpt.superseded == 1 and not list(tmp_path.glob("*-000000002-*"))
    release.set()
    ckpt.flush()
    assert written == [1, 3]
    newest, previous = (read_generation(path)[0] for path in generations(tmp_path))
    assert (newest.round, previous.round) == (3, 1)
    assert newest.table["cost"][0] == 5.0 and previous.table["cost"][0] == np.inf
    assert not list(tmp_path.glob(".tmp-*")) and ckpt.stats()["writes"] == 3


def test_a_failed_publish_is_raised_by_the_next_write(tmp_path, monkeypatch):
    """A full disk in the thread ends the fit at its next checkpoint, not at its end."""
    import nlsq_mpi.checkpoint as checkpoint

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    ckpt = _checkpointer(tmp_path)
    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    ckpt._submit(_written(tmp_path, 1), 1)
    with ckpt._lock:
        publisher = ckpt._publisher
    if publisher is not None:
        publisher.join()
    with pytest.raises(OSError, match="No space left on device"):
        ckpt._submit(_written(tmp_path, 2), 2)
    ckpt.flush()   # raised once, not twice


def test_files_are_created_new_and_a_stale_result_temporary_is_replaced(tmp_path):
    """FileWriter creates each file exclusively (an MPI file truncated at open costs a
    collective), so a result saved over the temporary a killed save left must remove it."""
    writer = FileWriter(h5py)
    path = tmp_path / "a.h5"
    rows = np.arange(3.0)
    writer.write(path, {"round": 1}, {"x": (rows.dtype, rows.shape, [(rows, 0)])})
    with pytest.raises(FileExistsError):
        writer.write(path, {"round": 2}, {"x": (rows.dtype, rows.shape, [(rows, 0)])})
    with h5py.File(path, "r") as fh:
        assert fh.attrs["round"] == 1

    from nlsq_mpi.result import FitResult, StartsTable
    table = StartsTable.empty(2, 1)
    result = FitResult(popt=np.ones(1), pcov=np.eye(1), perr=np.ones(1), cost=1.0, chi2=2.0,
                       dof=1, success=True, status=1, message="ok", nfev=3, nit=2,
                       optimality=0.0, active_mask=np.zeros(1, int), best_start=0, n_starts=2,
                       starts=table, fun=np.zeros(2), workflow="hpc")
    (tmp_path / ".result.h5.tmp").write_bytes(b"left by a killed save")
    result.save(tmp_path / "result.h5")
    with h5py.File(tmp_path / "result.h5", "r") as fh:
        assert fh.attrs["message"] == "ok"


def test_open_mpi_skips_the_shared_file_pointer_segment_unless_told_otherwise():
    env = {}
    mpi_io_defaults(env)
    assert env == {"OMPI_MCA_sharedfp": "^sm"}
    env = {"OMPI_MCA_sharedfp": "lockedfile"}
    mpi_io_defaults(env)
    assert env == {"OMPI_MCA_sharedfp": "lockedfile"}


def _published(ckpt, round_):
    for _ in range(1000):
        if ckpt.published[0] == round_:
            return True
        threading.Event().wait(0.01)
    return False


def _first_publish(tmp_path, monkeypatch, idle_seconds):
    """A Checkpointer whose publisher thread (idle for at most ``idle_seconds``) has been
    handed round 1; returns it and the thread."""
    import nlsq_mpi.checkpoint as checkpoint
    monkeypatch.setattr(checkpoint, "PUBLISHER_IDLE_SECONDS", idle_seconds)
    ckpt = _checkpointer(tmp_path)
    ckpt._submit(_written(tmp_path, 1), 1)
    with ckpt._lock:
        return ckpt, ckpt._publisher


def test_one_publisher_thread_publishes_file_after_file(tmp_path, monkeypatch):
    """Starting a thread costs 0.2 ms: one waits for the next file until flush() ends it."""
    ckpt, first = _first_publish(tmp_path, monkeypatch, 60.0)
    assert _published(ckpt, 1)   # round 1 in place, the thread waiting for more
    ckpt._submit(_written(tmp_path, 2), 2)
    with ckpt._lock:
        assert ckpt._publisher is first
    ckpt.flush()
    assert not first.is_alive() and ckpt.published[0] == 2
    assert [p.rsplit("/", 1)[1] for p in generations(tmp_path)] == ["gen-000000002.h5",
                                                                   "gen-000000001.h5"]


def test_an_idle_publisher_thread_ends_by_itself(tmp_path, monkeypatch):
    """A fit that ended by an error never flushes: its thread must not keep the process."""
    ckpt, thread = _first_publish(tmp_path, monkeypatch, 0.05)
    thread.join(30)
    assert not thread.is_alive() and ckpt.published[0] == 1


@pytest.mark.skipif(not hasattr(os, "sched_yield"), reason="no sched_yield")
def test_an_idle_rank_yields_its_core_between_the_steps_of_a_file_while_others_solve(
        tmp_path, monkeypatch):
    """An idle rank's file with starts still in flight elsewhere is written with a yield of
    the core (to the rank's main thread, waiting in the driver's collective) after each
    step; the fit's last file (nothing in flight), which the fit waits for, and a file
    written beside this rank's own solver are written in one go. All three are valid."""
    yields, done = [], threading.Semaphore(0)
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(threading.get_ident()))
    publish = Checkpointer._publish

    def counting_publish(self, tmp, round_):
        publish(self, tmp, round_)
        done.release()

    monkeypatch.setattr(Checkpointer, "_publish", counting_publish)
    ckpt = _checkpointer(tmp_path)
    table = StartsTable.empty(3, 2).as_dict()
    in_flight, none = np.zeros(1, state_dtype(2)), np.empty(0, state_dtype(2))
    counts = []
    for round_, states, beside_solver in ((1, in_flight, False), (2, none, False),
                                          (3, in_flight, True)):
        before = len(yields)
        snap = Snapshot(round_, 10 * round_, table, states, lane_width=4, ranks=2)
        ckpt._submit(tmp_path / f".tmp-gen-{round_:09d}-test.h5", round_,
                     beside_solver=beside_solver, snap=snap)
        assert done.acquire(timeout=30)
        counts.append(len(yields) - before)
    ckpt.flush()
    # After the table, the checksum, the file's creation, 5 attributes, 3 datasets, the close.
    assert counts == [12, 0, 0]
    assert threading.get_ident() not in yields   # only the publisher thread yields
    assert read_generation(tmp_path / "gen-000000003.h5")[0].states.shape == (1,)
    assert read_generation(tmp_path / "gen-000000002.h5")[0].round == 2


@pytest.mark.skipif(not hasattr(os, "sched_yield"), reason="no sched_yield")
def test_an_idle_rank_gives_up_a_file_half_written_when_the_fits_last_one_waits(
        tmp_path, monkeypatch):
    """The fit's last generation, submitted while the thread is in the middle of a
    courteous file, is not kept waiting: that file is given up (closed, removed, counted
    as superseded) and the last one put in place."""
    started, release = threading.Event(), threading.Event()

    def first_yield_waits():
        started.set()
        assert release.wait(30)

    monkeypatch.setattr(os, "sched_yield", first_yield_waits)
    ckpt = _checkpointer(tmp_path)
    table = StartsTable.empty(3, 2).as_dict()
    for round_, states in ((1, np.zeros(1, state_dtype(2))), (2, np.empty(0, state_dtype(2)))):
        snap = Snapshot(round_, 10 * round_, table, states, lane_width=4, ranks=2)
        ckpt._submit(tmp_path / f".tmp-gen-{round_:09d}-test.h5", round_, snap=snap)
        assert started.wait(30)   # round 1 is half written when round 2 comes
    release.set()
    ckpt.flush()
    assert [p.rsplit("/", 1)[1] for p in generations(tmp_path)] == ["gen-000000002.h5"]
    assert not list(tmp_path.glob(".tmp-*")) and ckpt.superseded == 1
    assert read_generation(tmp_path / "gen-000000002.h5")[0].round == 2


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_a_collective_file_is_published_without_preempting_the_solver(tmp_path, monkeypatch):
    """A file whose rank goes on solving is published as SCHED_BATCH (a batch thread does
    not preempt the solver on its core when it wakes), one an idle rank wrote alone as
    SCHED_OTHER; the process's own policy is unchanged."""
    seen, done = [], threading.Semaphore(0)
    publish = Checkpointer._publish

    def noting_publish(self, tmp, round_):
        seen.append((threading.get_ident(), os.sched_getscheduler(threading.get_native_id())))
        publish(self, tmp, round_)
        done.release()

    monkeypatch.setattr(Checkpointer, "_publish", noting_publish)
    ckpt = _checkpointer(tmp_path)
    for round_, beside_solver in ((1, True), (2, False), (3, True)):
        ckpt._submit(_written(tmp_path, round_), round_, beside_solver=beside_solver)
        assert done.acquire(timeout=30)   # one thread publishes all three, in turn
    ckpt.flush()
    assert len({thread for thread, _ in seen}) == 1
    assert [policy for _, policy in seen] == [os.SCHED_BATCH, os.SCHED_OTHER, os.SCHED_BATCH]
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
