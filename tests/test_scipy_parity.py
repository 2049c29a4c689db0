"""Same start, same answer as scipy.optimize.least_squares(method="trf") and curve_fit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit, least_squares

import nist
from conftest import SEED_BOUNDS, seed_data, seed_model
from nlsq_mpi import fit


def scipy_fit(model, x, y, p0, bounds, sigma=None, **kw):
    w = 1.0 if sigma is None else 1.0 / sigma
    res = jax.jit(lambda p: (model(x, *p) - y) * w)
    jac = jax.jit(jax.jacfwd(lambda p: (model(x, *p) - y) * w))
    return least_squares(lambda p: np.asarray(res(jnp.asarray(p))), p0,
                         jac=lambda p: np.asarray(jac(jnp.asarray(p))), bounds=bounds,
                         method="trf", **kw)


def _bounded_problems():
    x, y, s = seed_data()
    yield "seed", seed_model, x, y, s, [10, 1, 5, 0, 0], SEED_BOUNDS
    for name, p0, bounds in (
            ("MGH09", [0.15, 0.39, 0.415, 0.39], ([0, 0, 0, 0], [0.18, 1, 1, 1])),
            ("Thurber", [1000, 1000, 400, 40, 0.7, 0.3, 0.03],
             ([500, 500, 100, 10, 0.1, 0.1, 0], [2000, 2000, 1000, 150, 2, 1, 0.2])),
            ("BoxBOD", [100, 0.45], ([0, 0], [200, 0.5])),
            ("Rat42", [60, 2.5, 0.07], ([0, 0, 0.06], [70, 10, 1])),
            ("Misra1a", [150, 1e-4], ([0, 0], [200, 1]))):
        P = nist.load(name)
        yield name, P.model, P.x, P.y, None, p0, bounds


PROBLEMS = list(_bounded_problems())


@pytest.mark.parametrize("case", PROBLEMS, ids=[c[0] for c in PROBLEMS])
def test_linear_loss_cost_matches_scipy(case):
    name, model, x, y, sigma, p0, bounds = case
    ours = fit(model, x, y, p0=p0, sigma=sigma, bounds=bounds)
    ref = scipy_fit(model, x, y, np.array(p0, float), bounds, sigma)
    assert ours.cost == pytest.approx(ref.cost, rel=1e-8)
    assert ours.status == ref.status
    np.testing.assert_array_equal(ours.active_mask, ref.active_mask)
    if name not in ("seed", "Thurber"):   # these are built to end on a bound
        assert np.any(ours.active_mask != 0), name


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan"])
@pytest.mark.parametrize("case", [PROBLEMS[0], PROBLEMS[4]], ids=["seed", "Rat42"])
def test_robust_loss_cost_matches_scipy(case, loss):
    name, model, x, y, sigma, p0, bounds = case
    y = y.copy()
    y[::17] += 5 * np.std(y)   # outliers, so the robust part of each loss is exercised
    ours = fit(model, x, y, p0=p0, sigma=sigma, bounds=bounds, loss=loss, f_scale=0.7)
    ref = scipy_fit(model, x, y, np.array(p0, float), bounds, sigma, loss=loss, f_scale=0.7)
    assert ours.cost == pytest.approx(ref.cost, rel=1e-8)


def test_jac_scaling_matches_scipy():
    _, model, x, y, sigma, p0, bounds = PROBLEMS[2]
    ours = fit(model, x, y, p0=p0, bounds=bounds, x_scale="jac")
    ref = scipy_fit(model, x, y, np.array(p0, float), bounds, x_scale="jac")
    assert ours.cost == pytest.approx(ref.cost, rel=1e-8)


def test_user_jacobian_matches_autodiff():
    _, model, x, y, sigma, p0, bounds = PROBLEMS[0]
    jac = jax.jacfwd(lambda p, xx: seed_model(xx, *p))
    user = fit(model, x, y, p0=p0, sigma=sigma, bounds=bounds,
               jac=lambda xx, *p: jac(jnp.stack(p), xx))
    auto = fit(model, x, y, p0=p0, sigma=sigma, bounds=bounds)
    assert user.cost == pytest.approx(auto.cost, rel=1e-12)
    np.testing.assert_allclose(user.popt, auto.popt, rtol=1e-9)


def _ar1_cov(sigma, rho=0.5):
    idx = np.arange(sigma.size)
    return np.outer(sigma, sigma) * rho ** np.abs(idx[:, None] - idx[None, :])


@pytest.mark.parametrize("absolute_sigma", [False, True])
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_pcov_matches_curve_fit(kind, absolute_sigma):
    x, y, s = seed_data()
    sigma = s * np.linspace(0.5, 1.5, s.size) if kind == "1d" else _ar1_cov(s)
    tol = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)
    p0 = [10, 1, 5, 0, 0]
    ours = fit(seed_model, x, y, p0=p0, sigma=sigma, absolute_sigma=absolute_sigma,
               bounds=SEED_BOUNDS, **tol)
    jac = jax.jit(jax.jacfwd(lambda p: seed_model(x, *p)))
    popt, pcov = curve_fit(lambda xx, *p: np.asarray(seed_model(xx, *p)), x, y, p0=p0,
                           sigma=sigma, absolute_sigma=absolute_sigma, bounds=SEED_BOUNDS,
                           method="trf", jac=lambda xx, *p: np.asarray(jac(jnp.asarray(p))), **tol)
    np.testing.assert_allclose(ours.popt, popt, rtol=1e-8)
    np.testing.assert_allclose(ours.pcov, pcov, rtol=1e-6)
    np.testing.assert_allclose(ours.perr, np.sqrt(np.diag(pcov)), rtol=1e-6)
