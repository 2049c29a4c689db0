"""Start i ends at the same x, bit for bit, whatever starts share its batch and whichever
lane holds it (at the problem's fixed lane width)."""
import numpy as np

from conftest import SEED_BOUNDS, seed_model
from nlsq_mpi import fit
from nlsq_mpi.starts import start_points


def test_start_result_is_bitwise_independent_of_batch(seed_problem):
    x, y, s = seed_problem
    starts = start_points("sobol", 3, *SEED_BOUNDS, np.arange(100), 100)
    common = dict(sigma=s, bounds=SEED_BOUNDS, workflow="auto_global")
    full = fit(seed_model, x, y, sampler=starts, **common)
    seven = fit(seed_model, x, y, sampler=starts[:7], **common)
    for i in (0, 5, 42):
        alone = fit(seed_model, x, y, sampler=starts[i:i + 1], **common)
        np.testing.assert_array_equal(alone.starts.x[0], full.starts.x[i])
        assert alone.starts.nfev[0] == full.starts.nfev[i]
    for key in ("x", "cost", "status", "nit", "nfev"):
        np.testing.assert_array_equal(getattr(seven.starts, key), getattr(full.starts, key)[:7])
    perm = np.random.default_rng(1).permutation(100)
    shuffled = fit(seed_model, x, y, sampler=starts[perm], **common)
    np.testing.assert_array_equal(shuffled.starts.x, full.starts.x[perm])
    np.testing.assert_array_equal(shuffled.starts.cost, full.starts.cost[perm])
