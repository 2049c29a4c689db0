"""The vectorised sin and cos of the lane loop (nlsq_mpi.solver.fastmath): accuracy against
correctly rounded values, XLA's own functions beyond the reduction range and for inf/NaN,
derivatives, and the replacement inside a model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nlsq_mpi.solver import fastmath

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("fast, ref", [(fastmath.sin, np.sin), (fastmath.cos, np.cos)])
@pytest.mark.parametrize("scale", [1.0, 50.0, 1e3, 1e5, fastmath.REDUCTION_LIMIT])
def test_within_one_rounding_of_the_true_value(fast, ref, scale):
    x = RNG.uniform(-scale, scale, 100_000)
    x[:4] = [0.0, -0.0, np.pi / 2, -np.pi]
    got = np.asarray(jax.jit(fast)(x))
    want = ref(x)   # numpy's: within 1 ulp of the true value
    assert np.max(np.abs(got - want)) <= 2.3e-16
    big = np.abs(want) > 0.5
    assert np.max(np.abs(got - want)[big] / np.spacing(np.abs(want[big]))) <= 2


@pytest.mark.parametrize("fast, xla", [(fastmath.sin, jnp.sin), (fastmath.cos, jnp.cos)])
def test_out_of_range_or_non_finite_arrays_use_xla(fast, xla):
    for odd in (2.0 * fastmath.REDUCTION_LIMIT, np.inf, np.nan, -1e300):
        x = np.array([0.3, 1.7, odd])
        np.testing.assert_array_equal(np.asarray(jax.jit(fast)(x)), np.asarray(xla(x)))


def test_derivatives_are_the_fast_functions_themselves():
    x = jnp.linspace(-7.0, 7.0, 101)
    t = jnp.ones_like(x)
    s, ds = jax.jvp(fastmath.sin, (x,), (t,))
    c, dc = jax.jvp(fastmath.cos, (x,), (t,))
    np.testing.assert_array_equal(ds, c)
    np.testing.assert_array_equal(dc, -s)
    np.testing.assert_allclose(jax.grad(lambda v: fastmath.sin(v).sum())(x), np.cos(x),
                               atol=2.3e-16)


def _trig_model(x, a, b, c):
    inner = jax.jit(lambda u: jnp.cos(u))            # nested jit is inlined too
    return a * jnp.sin(b * x) + inner(c * x) + lax.cond(a > 0, jnp.sin, jnp.cos, x)


def test_model_sin_and_cos_are_replaced_with_their_derivatives():
    x = jnp.linspace(0.0, 10.0, 50)
    p = (1.5, 2.0, 0.7)
    fast_model = fastmath.with_fast_trig(_trig_model)
    np.testing.assert_allclose(fast_model(x, *p), _trig_model(x, *p), rtol=0, atol=1e-15)
    jac = jax.jacfwd(lambda q: fast_model(x, *q))(jnp.array(p))
    ref = jax.jacfwd(lambda q: _trig_model(x, *q))(jnp.array(p))
    np.testing.assert_allclose(jac, ref, rtol=0, atol=1e-13)
    # The replaced calls are the kernels' range checks (a cond each); the user's own
    # lax.cond is bound as it is, with XLA's sin and cos inside.
    jaxpr = str(jax.make_jaxpr(fast_model)(x, *p))
    assert jaxpr.count("cond[") == 3
    plain = str(jax.make_jaxpr(_trig_model)(x, *p))
    assert plain.count("cond[") == 1


def test_float32_and_explicit_accuracy_are_left_to_xla():
    x32 = jnp.linspace(0.0, 1.0, 8, dtype=jnp.float32)
    fast = fastmath.with_fast_trig(lambda v: jnp.sin(v))
    assert "cond[" not in str(jax.make_jaxpr(fast)(x32))
    tolerance = lax.Tolerance(atol=0.0, rtol=0.0, ulps=1)
    exact = fastmath.with_fast_trig(lambda v: lax.sin(v, accuracy=tolerance))
    assert "cond[" not in str(jax.make_jaxpr(exact)(jnp.linspace(0.0, 1.0, 8)))


def test_models_of_cheap_operations_are_told_from_costly_ones():
    x = jnp.linspace(0.0, 1.0, 8)
    seed = lambda x, a, b, c, d, e: a * jnp.exp(-b * x) * jnp.cos(c * x + d) + e
    assert fastmath.only_cheap_ops(seed, x, 1.0, 2.0, 3.0, 4.0, 5.0)
    assert fastmath.only_cheap_ops(_trig_model, x, 1.5, 2.0, 0.7)   # nested jit, lax.cond
    assert not fastmath.only_cheap_ops(lambda x, a, b: a * x ** b, x, 1.0, 2.5)   # pow
    assert not fastmath.only_cheap_ops(jax.jit(lambda x, a: jnp.log(a * x)), x, 2.0)
    # A sin that stays XLA's (float32 here) is not cheap: its copies are what materialize saves.
    assert not fastmath.only_cheap_ops(lambda x, a: jnp.sin(a * x), x.astype(jnp.float32), 2.0)
