"""Bounded multi-start finds the certified global optimum without p0."""
import numpy as np
import pytest

import nist
from nlsq_mpi import fit

BOUNDS = {"MGH09": ([-5] * 4, [5] * 4),
          "Thurber": ([500, 500, 100, 10, 0.1, 0.1, 0], [2000, 2000, 1000, 150, 2, 1, 0.2])}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_auto_global_reaches_certified_rss(name):
    P = nist.load(name)
    for seed in range(5):
        r = fit(P.model, P.x, P.y, bounds=BOUNDS[name], workflow="auto_global", n_starts=64, seed=seed)
        assert r.n_starts == 64 and r.starts.x.shape == (64, len(P.certified))
        assert 2 * r.cost == pytest.approx(P.rss, rel=1e-6), f"seed {seed}"
        assert r.best_start == r.starts.best()
        np.testing.assert_array_equal(r.popt, r.starts.x[r.best_start])
