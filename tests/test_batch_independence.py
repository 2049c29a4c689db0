"""Start i ends at the same x, bit for bit, whatever batch it runs in."""
import numpy as np

from conftest import SEED_BOUNDS, seed_model
from nlsq_mpi import fit
from nlsq_mpi.starts import start_points


def test_start_result_is_bitwise_independent_of_batch(seed_problem):
    x, y, s = seed_problem
    starts = start_points("sobol", 3, *SEED_BOUNDS, np.arange(100), 100)
    common = dict(sigma=s, bounds=SEED_BOUNDS, workflow="auto_global")
    full = fit(seed_model, x, y, sampler=starts, batch_size=100, **common)
    seven = fit(seed_model, x, y, sampler=starts[:7], batch_size=7, **common)
    for i in (0, 5, 42):
        alone = fit(seed_model, x, y, sampler=starts[i:i + 1], batch_size=1, **common)
        np.testing.assert_array_equal(alone.starts.x[0], full.starts.x[i])
        assert alone.starts.nfev[0] == full.starts.nfev[i]
    np.testing.assert_array_equal(seven.starts.x, full.starts.x[:7])
    np.testing.assert_array_equal(seven.starts.cost, full.starts.cost[:7])
    np.testing.assert_array_equal(seven.starts.status, full.starts.status[:7])
