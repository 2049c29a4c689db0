"""Under mpirun -n 2 (pytest --with-mpi): every rank gets the identical hpc result, equal
to the single-process multi-start."""
import numpy as np
import pytest

from conftest import SEED_BOUNDS, seed_data, seed_model
from nlsq_mpi import fit, rank, size
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
