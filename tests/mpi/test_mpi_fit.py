"""Under mpirun -n 2 (pytest --with-mpi): every rank gets the identical hpc result, equal
to the single-process multi-start."""
import itertools
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SEED_BOUNDS, seed_data, seed_model
from nlsq_mpi import fit, rank, size
from nlsq_mpi.checkpoint import Checkpointer, generations, in_flight, read_generation
from nlsq_mpi.parallel import driver
from nlsq_mpi.parallel.comm import get_comm


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("rebalance", [True, False])
def test_hpc_result_identical_on_every_rank(rebalance):
    x, y, s = seed_data()
    r = fit(seed_model, x, y, sigma=s, bounds=SEED_BOUNDS, workflow="hpc", n_starts=24,
            batch_size=4, checkpoint_interval=2, rebalance=rebalance)
    everyone = get_comm().allgather((r.best_start, r.popt, r.starts.x, r.starts.cost))
    for best, popt, xs, cost in everyone[1:]:
        assert best == everyone[0][0]
        np.testing.assert_array_equal(popt, everyone[0][1])
        np.testing.assert_array_equal(xs, everyone[0][2])
        np.testing.assert_array_equal(cost, everyone[0][3])
    serial = fit(seed_model, x, y, sigma=s, bounds=SEED_BOUNDS, workflow="auto_global",
                 n_starts=24, batch_size=4, checkpoint_interval=2)
    np.testing.assert_array_equal(serial.starts.x, r.starts.x)
    assert serial.best_start == r.best_start
    assert size() >= 2 and rank() == get_comm().rank


@pytest.mark.mpi(min_size=2)
def test_bad_input_raises_the_same_error_on_every_rank():
    x, y, s = seed_data()
    with pytest.raises(ValueError) as exc:
        fit(seed_model, x, y, workflow="hpc", n_starts=4)
    messages = get_comm().allgather(str(exc.value))
    assert len(set(messages)) == 1 and "bounds: workflow='hpc'" in messages[0]


@pytest.mark.mpi(min_size=2)
def test_a_serial_workflow_refuses_to_checkpoint_from_several_ranks():
    """Each rank would run the whole auto_global fit into one directory, and the ranks'
    publishers would remove each other's files: a clear error on every rank instead."""
    x, y, s = seed_data()
    shared = Path(tempfile.gettempdir()) / "nlsq_mpi-test-never-written"
    with pytest.raises(ValueError) as exc:
        fit(seed_model, x, y, sigma=s, bounds=SEED_BOUNDS, workflow="auto_global",
            n_starts=4, checkpoint_dir=str(shared))
    messages = get_comm().allgather(str(exc.value))
    assert len(set(messages)) == 1 and "workflow='auto_global' runs the whole fit on each " \
        f"of the {size()} MPI ranks" in messages[0]
    assert not shared.exists()


@pytest.mark.mpi(min_size=2)
def test_ranks_on_several_nodes_each_sync_their_rows_before_the_close(monkeypatch):
    """Every rank on a node of its own (as local_split would say): each syncs the collective
    file (H5Fflush, MPI_File_sync under mpio) before it closes, and the files validate."""
    import h5py
    comm = get_comm()
    monkeypatch.setattr(type(comm), "local_split", lambda self: (0, 1))
    flushes = []
    flush = h5py.h5f.flush
    monkeypatch.setattr(h5py.h5f, "flush", lambda fid, scope: flushes.append(scope) or
                        flush(fid, scope))
    base = Path(comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None))
    x, y, s = seed_data()
    r = fit(seed_model, x, y, sigma=s, bounds=SEED_BOUNDS, workflow="hpc", n_starts=24,
            batch_size=4, checkpoint_interval=2, progress_seconds=1e9,
            checkpoint_dir=str(base))
    collective = r.checkpoint["writes"] - r.checkpoint["solo_writes"]
    assert collective > 0 and comm.allgather(len(flushes)) == [collective] * comm.size
    # every rank stopped for those: the time the fit was held up, less than all writing
    assert 0 < r.checkpoint["collective_seconds"] < r.checkpoint["write_seconds"]
    assert set(flushes) == {h5py.h5f.SCOPE_GLOBAL}
    comm.barrier()
    if comm.rank == 0:
        for path in generations(base):
            read_generation(path)          # raises CheckpointCorrupt if a row went missing
        shutil.rmtree(base)
    comm.barrier()


@pytest.mark.mpi(min_size=2)
def test_checkpoint_attributes_agree_when_rank_clocks_differ(monkeypatch):
    """Parallel HDF5 writes attributes collectively, so every rank must pass the same values.
    Rank 1's clock here reads differently (and prints shorter): every generation must still
    validate, stamped with rank 0's time."""
    comm = get_comm()
    directory = comm.bcast(tempfile.mkdtemp(prefix="nlsq_mpi_clock_") if comm.rank == 0 else None)
    t_root = comm.bcast(time.time() if comm.rank == 0 else None)
    if comm.rank == 1:
        monkeypatch.setattr(time, "time", lambda: 1.5e9)
    x, y, s = seed_data()
    fit(seed_model, x, y, sigma=s, bounds=SEED_BOUNDS, workflow="hpc", n_starts=24,
        batch_size=4, checkpoint_interval=2, checkpoint_dir=directory, progress_seconds=1e9)
    comm.barrier()
    gens = generations(directory)
    assert len(gens) == 2
    for path in gens:
        snap, _ = read_generation(path)      # raises CheckpointCorrupt if the attributes broke
        assert abs(snap.created - t_root) < 600
    comm.barrier()
    if comm.rank == 0:
        shutil.rmtree(directory)


@pytest.mark.mpi(min_size=2)
def test_tail_generations_written_by_one_idle_rank_resume_exactly(monkeypatch):
    """Once no start waits, a rank whose lanes are empty writes each checkpoint alone while
    the others go on solving. Such a generation is as good as a collective one: resuming
    from it gives the uninterrupted run's bits. A collective one is put in place by the
    least busy rank so far (never the last rank here, slowed down on purpose), which
    writes its table too."""
    comm = get_comm()
    base = Path(comm.bcast(tempfile.mkdtemp(prefix="nlsq_mpi_solo_") if comm.rank == 0
                           else None))
    (base / "kept").mkdir(exist_ok=True)
    solo = []   # the generations this rank wrote alone
    write, write_file, publish = Checkpointer.write, Checkpointer._write_file, Checkpointer._publish
    published = []   # the generations this rank put in place

    def recording_write(self, round_, snapshot, my_rows, alone=None, lead=0):
        write(self, round_, snapshot, my_rows, alone, lead)
        if alone == comm.rank:
            solo.append(round_)

    def keeping_write_file(self, tmp, snap, my_rows, lead, pause=None):
        # Every file one rank wrote whole (in its publisher thread), before it is published.
        write_file(self, tmp, snap, my_rows, lead, pause)
        if my_rows is None:
            shutil.copy(tmp, base / "kept" / f"gen-{snap.round:09d}.h5")

    def recording_publish(self, tmp, round_):
        publish(self, tmp, round_)
        published.append(round_)

    monkeypatch.setattr(Checkpointer, "write", recording_write)
    monkeypatch.setattr(Checkpointer, "_write_file", keeping_write_file)
    monkeypatch.setattr(Checkpointer, "_publish", recording_publish)
    # Every interval takes the last rank 20 ms longer, but for the second, which takes the
    # others 10 ms longer: the lead is the least busy rank over the fit so far, not in the
    # last interval alone.
    slow, intervals = comm.size - 1, itertools.count()

    def slowed_in_flight(batch):
        if (comm.rank == slow) != (next(intervals) == 1):
            time.sleep(0.02 if comm.rank == slow else 0.01)
        return in_flight(batch)

    monkeypatch.setattr(driver, "in_flight", slowed_in_flight)
    x, y, s = seed_data()
    kw = dict(sigma=s, bounds=SEED_BOUNDS, workflow="hpc", n_starts=24, batch_size=4,
              checkpoint_interval=2, progress_seconds=1e9)
    first = fit(seed_model, x, y, checkpoint_dir=str(base / "run"), **kw)
    solo_rounds = sorted(sum(comm.allgather(solo), []))
    assert solo_rounds and first.checkpoint["solo_writes"] == len(solo_rounds)
    assert first.checkpoint["writes"] > len(solo_rounds)   # the rest were collective
    # A collective file is put in place by one rank, never the slow one; a file one rank
    # wrote alone by that rank.
    by_rank = comm.allgather(published)
    collective = {r for rounds in by_rank for r in rounds} - set(solo_rounds)
    assert collective and not collective & set(by_rank[slow])
    assert sum(len(rounds) for rounds in by_rank) == len(set().union(*map(set, by_rank)))
    assert set(by_rank[comm.rank]) - collective <= set(solo)
    # The last generation, written alone by the highest rank, holds the fit's table.
    last, _ = read_generation(generations(base / "run")[0])
    assert last.round == max(solo_rounds) > max(collective)
    assert last.round in by_rank[comm.size - 1]
    np.testing.assert_array_equal(last.table["x"], first.starts.x)
    np.testing.assert_array_equal(last.table["nfev"], first.starts.nfev)
    # The first file written alone (a generation that waited unwritten in a publisher
    # thread is dropped for a newer one).
    picked = comm.bcast(min(f.name for f in (base / "kept").iterdir()) if comm.rank == 0
                        else None)
    if comm.rank == 0:
        (base / "resume").mkdir()
        shutil.copy(base / "kept" / picked, base / "resume" / picked)
    comm.barrier()
    again = fit(seed_model, x, y, checkpoint_dir=str(base / "resume"), **kw)
    assert Path(again.resumed_from).name == picked
    np.testing.assert_array_equal(again.starts.x, first.starts.x)
    np.testing.assert_array_equal(again.starts.nfev, first.starts.nfev)
    np.testing.assert_array_equal(again.popt, first.popt)
    comm.barrier()
    if comm.rank == 0:
        shutil.rmtree(base)
