"""Problems with many points step their lanes one after another on CPU
(``steps_lane_by_lane``): the same costs as scipy, a start's result bitwise independent of
the batch width, and exact continuation after a stop."""
import numpy as np
import pytest
from scipy.optimize import least_squares

from conftest import SEED_BOUNDS, seed_data, seed_model
from nlsq_mpi import fit
from nlsq_mpi.parallel.driver import EXIT_PREEMPTED
from nlsq_mpi.solver import steps_lane_by_lane
from nlsq_mpi.starts import start_points

M = 1200
STARTS = start_points("sobol", 3, *SEED_BOUNDS, np.arange(24), 24)
KEYS = ("x", "cost", "status", "nit", "nfev")


@pytest.fixture(scope="module")
def big():
    x, y, s = seed_data(m=M)
    common = dict(sigma=s, bounds=SEED_BOUNDS, workflow="auto_global", sampler=STARTS)
    return x, y, s, common, fit(seed_model, x, y, **common)


def test_many_points_step_lane_by_lane_on_cpu():
    assert steps_lane_by_lane(M) and not steps_lane_by_lane(200)


def test_same_cost_as_scipy_from_the_same_starts(big):
    x, y, s, _, r = big
    for i in (0, 1, 2):
        ref = least_squares(lambda p: (np.asarray(seed_model(x, *p)) - y) / s, STARTS[i],
                            bounds=SEED_BOUNDS, method="trf")
        assert r.starts.cost[i] == pytest.approx(ref.cost, rel=1e-8)


def test_start_result_is_bitwise_independent_of_the_batch_width(big):
    x, y, _, common, r = big
    for width in (1, 5):
        other = fit(seed_model, x, y, batch_size=width, **common)
        for key in KEYS:
            np.testing.assert_array_equal(getattr(other.starts, key), getattr(r.starts, key),
                                          err_msg=f"{key} at width {width}")
    alone = fit(seed_model, x, y, **{**common, "sampler": STARTS[7:8]})
    np.testing.assert_array_equal(alone.starts.x[0], r.starts.x[7])


def test_stop_then_resume_is_exact(big, tmp_path):
    x, y, _, common, r = big
    with pytest.raises(SystemExit) as stopped:   # the walltime is up after the first interval
        fit(seed_model, x, y, checkpoint_dir=tmp_path, walltime=1, **common)
    assert stopped.value.code == EXIT_PREEMPTED
    resumed = fit(seed_model, x, y, checkpoint_dir=tmp_path, **common)
    assert resumed.resumed_from is not None
    assert 0 < np.sum(resumed.starts.nfev) and resumed.best_start == r.best_start
    for key in KEYS:
        np.testing.assert_array_equal(getattr(resumed.starts, key), getattr(r.starts, key),
                                      err_msg=key)
