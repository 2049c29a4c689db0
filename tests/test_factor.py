"""The subproblem's factorisation: Cholesky QR where it is accurate, Householder QR per lane
where it is not."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlsq_mpi.solver.trf import (CHOLQR2_MAX_CONDITION, GRAM_MAX_CONDITION, Linearization,
                                 cholqr2_factor, factorize, gram_factor)


def _lanes(Js, f, diag_h, d=None):
    """A batch of linearisations with Jacobians Js (k, m, n), one residual vector f, and
    per-lane diag_h and scaling d (k, n)."""
    k, m, n = Js.shape
    zeros = jnp.zeros(k)
    return Linearization(
        f=jnp.broadcast_to(f, (k, m)), Jt=jnp.swapaxes(Js, 1, 2),
        g=jnp.einsum("kmn,m->kn", Js, f), cost=zeros, finite=jnp.ones(k, bool),
        scale_inv=jnp.ones((k, n)), d=jnp.ones((k, n)) if d is None else d,
        diag_h=jnp.broadcast_to(diag_h, (k, n)), g_norm=zeros, Delta=zeros, alpha=zeros,
        nfev=zeros, njev=zeros, status=zeros)


def _reference(J, f, diag_h, d):
    """Singular values and |U^T f| of the augmented matrix [J D; diag(diag_h)^1/2], by LAPACK."""
    A = np.vstack([J * d, np.diag(diag_h ** 0.5)])
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    return s, np.abs(U.T @ np.concatenate([f, np.zeros(J.shape[1])]))


@pytest.mark.parametrize("lane_by_lane", [True, False])
def test_ill_conditioned_lane_falls_back_to_householder(lane_by_lane):
    rng = np.random.default_rng(0)
    m, n = 300, 4
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    well = rng.standard_normal((m, n))
    ill = U @ np.diag([1.0, 1e-2, 1e-4, 1e-7]) @ V.T          # cond 1e7: cond^2 eps ~ 1
    f = rng.standard_normal(m)
    diag_h = np.array([[0.0, 0.3, 0.0, 2.0], [0.0, 1e-20, 0.0, 0.0]])
    d = np.array([rng.uniform(0.5, 2.0, n), np.ones(n)])
    Js = jnp.asarray(np.stack([well, ill]))
    lin = _lanes(Js, jnp.asarray(f), jnp.asarray(diag_h), jnp.asarray(d))
    G0 = jnp.einsum("kmi,kmj->kij", Js, Js)
    gram, ok = jax.jit(jax.vmap(gram_factor))(lin, G0)
    assert bool(ok[0]) and not bool(ok[1])
    used = jax.jit(factorize, static_argnums=3)(lin, G0, jnp.array([True, True]), lane_by_lane)
    for lane, J in enumerate((well, ill)):
        s_ref, uf_ref = _reference(J, f, diag_h[lane], d[lane])
        np.testing.assert_allclose(used.s[lane], s_ref, rtol=1e-9)
        np.testing.assert_allclose(np.abs(used.Ur[lane].T @ used.qf[lane]), uf_ref, rtol=1e-7,
                                   atol=1e-12 * np.linalg.norm(f))
    # The well-conditioned lane kept its own Cholesky factor, whatever its neighbour needed...
    np.testing.assert_array_equal(used.R[0], gram.R[0])
    # ...and the fallback is what made the ill-conditioned lane accurate.
    s_ref, _ = _reference(ill, f, diag_h[1], d[1])
    assert abs(gram.s[1][-1] / s_ref[-1] - 1) > 1e-6 or not np.isfinite(gram.s[1][-1])
    assert s_ref[0] / s_ref[-1] > GRAM_MAX_CONDITION


@pytest.mark.parametrize("lane_by_lane", [True, False])
def test_lanes_not_running_never_trigger_householder(lane_by_lane):
    rng = np.random.default_rng(1)
    J = np.zeros((50, 3))                       # singular: the Cholesky factor is NaN
    lin = _lanes(jnp.asarray(J[None]), jnp.asarray(rng.standard_normal(50)), jnp.zeros(3))
    G0 = jnp.zeros((1, 3, 3))
    factor = jax.jit(factorize, static_argnums=3)
    idle = factor(lin, G0, jnp.array([False]), lane_by_lane)
    running = factor(lin, G0, jnp.array([True]), lane_by_lane)
    assert not np.all(np.isfinite(idle.R)) and np.all(np.isfinite(running.R))


def test_moderately_ill_conditioned_lanes_take_cholesky_qr2():
    """Between GRAM_MAX_CONDITION and CHOLQR2_MAX_CONDITION one more Cholesky QR pass makes
    R as accurate as Householder's; beyond, it reports itself not ok."""
    rng = np.random.default_rng(2)
    m, n = 400, 4
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    f = rng.standard_normal(m)
    diag_h = np.array([[0.0, 1e-9, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    d = np.array([rng.uniform(0.9, 1.1, n), np.ones(n)])
    moderate = U @ np.diag([1.0, 1e-1, 1e-3, 1e-6]) @ V.T      # cond 1e6
    hopeless = U @ np.diag([1.0, 1e-2, 1e-5, 1e-9]) @ V.T      # cond 1e9
    Js = jnp.asarray(np.stack([moderate, hopeless]))
    lin = _lanes(Js, jnp.asarray(f), jnp.asarray(diag_h), jnp.asarray(d))
    G0 = jnp.einsum("kmi,kmj->kij", Js, Js)
    first, first_ok = jax.jit(jax.vmap(gram_factor))(lin, G0)
    refined, ok = jax.jit(jax.vmap(cholqr2_factor))(lin, first)
    assert not bool(first_ok[0]) and bool(ok[0]) and not bool(ok[1])
    s_ref, uf_ref = _reference(moderate, f, diag_h[0], d[0])
    assert GRAM_MAX_CONDITION < s_ref[0] / s_ref[-1] < CHOLQR2_MAX_CONDITION
    np.testing.assert_allclose(refined.s[0], s_ref, rtol=1e-11)
    np.testing.assert_allclose(np.abs(refined.Ur[0].T @ refined.qf[0]), uf_ref, rtol=1e-9,
                               atol=1e-12 * np.linalg.norm(f))
    # The first pass alone was off in the smallest singular value.
    assert abs(first.s[0][-1] / s_ref[-1] - 1) > 1e-9
    # factorize (lanes in a batch: Householder QR) gives every running lane an accurate factor.
    used = jax.jit(factorize, static_argnums=3)(lin, G0, jnp.array([True, True]), True)
    for lane, J in enumerate((moderate, hopeless)):
        np.testing.assert_allclose(used.s[lane], _reference(J, f, diag_h[lane], d[lane])[0],
                                   rtol=1e-7)
