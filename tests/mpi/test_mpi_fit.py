"""Under mpirun -n 2 (pytest --with-mpi): every rank gets the identical hpc result, equal
to the single-process multi-start."""
import shutil
import tempfile
import time

import numpy as np
import pytest

from conftest import SEED_BOUNDS, seed_data, seed_model
from nlsq_mpi import fit, rank, size
from nlsq_mpi.checkpoint import generations, read_generation
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
