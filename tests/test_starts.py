"""Start points depend only on (sampler, seed, bounds, index)."""
import numpy as np
import pytest
from scipy.stats import qmc

from nlsq_mpi.starts import SAMPLERS, _sobol_directions, start_points

LB, UB = np.array([0.0, -1, 10, 0, 0]), np.array([1.0, 1, 20, 5, 1e-3])


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "lhs"])
def test_start_i_is_independent_of_how_it_is_asked_for(sampler):
    whole = start_points(sampler, 7, LB, UB, np.arange(200), 200)
    pieces = np.concatenate([start_points(sampler, 7, LB, UB, np.arange(a, b), 999)
                             for a, b in ((0, 3), (3, 120), (120, 200))])
    np.testing.assert_array_equal(whole, pieces)
    assert np.all((whole > LB) & (whole < UB))
    assert not np.array_equal(whole, start_points(sampler, 8, LB, UB, np.arange(200), 200))


def test_lhs_is_a_latin_hypercube():
    pts = start_points("lhs", 1, LB, UB, np.arange(50), 50)
    cells = np.floor((pts - LB) / (UB - LB) * 50).astype(int)
    for j in range(LB.size):
        assert sorted(cells[:, j]) == list(range(50))
    np.testing.assert_array_equal(pts[10:20], start_points("lhs", 1, LB, UB, np.arange(10, 20), 50))


def test_p0_is_start_zero():
    pts = start_points("sobol", 0, LB, UB, np.arange(4), 4, p0=np.array([0.5, 0, 15, 1, 0]))
    np.testing.assert_array_equal(pts[0], [0.5, 0, 15, 1, 0])


def test_sobol_directions_match_scipy_unscrambled():
    dim, n = 12, 256
    v = _sobol_directions(dim)
    ours = np.zeros((n, dim), np.int64)
    for i in range(1, n):   # Gray-code order: point i = point i-1 xor v[lowest zero bit of i-1]
        c = (~(i - 1) & ((i - 1) + 1)).bit_length() - 1
        ours[i] = ours[i - 1] ^ v[:, c]
    ref = qmc.Sobol(dim, scramble=False).random(n)
    np.testing.assert_array_equal(ours / 2.0**30, ref)


def test_sobol_is_balanced():
    pts = start_points("sobol", 3, np.zeros(3), np.ones(3), np.arange(64), 64)
    for j in range(3):   # a scrambled (0, m, s)-net: each of 64 cells of one axis once
        assert sorted(np.floor(pts[:, j] * 64).astype(int)) == list(range(64))
