"""sin and cos that XLA's CPU backend vectorises, for the models the lanes step one by one.

XLA evaluates float64 sin and cos on CPU one element at a time, at about 6 ns each: at
m=2,000 a quarter of a TRF step of the seed model. ``sin`` and ``cos`` here are Cephes'
(S. L. Moshier, Methods and Programs for Mathematical Functions, 1989; sin.c): reduction
by pi/4 with pi/4 split into three parts (Cody & Waite), then degree-13/14 polynomials on
[-pi/4, pi/4]; plain arithmetic that XLA vectorises, at about 1.9 ns per element. Within
|x| <= REDUCTION_LIMIT the results differ from correctly rounded ones by at most 2.2e-16
(absolute; 2 ulp where |sin| or |cos| is not small); an array holding a larger, infinite
or NaN argument goes to XLA's own sin and cos instead (``lax.cond``, evaluated per call).

``with_fast_trig(fn)`` is ``fn`` with every lax.sin and lax.cos it calls (also inside
nested jit) evaluated this way, their derivatives included.
"""
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Literal

# Cephes sin.c, IEEE double.
_SIN = (1.58962301576546568060E-10, -2.50507477628578072866E-8, 2.75573136213857245213E-6,
        -1.98412698295895385996E-4, 8.33333333332211858878E-3, -1.66666666666666307295E-1)
_COS = (-1.13585365213876817300E-11, 2.08757008419747316778E-9, -2.75573141792967388112E-7,
        2.48015872888517045348E-5, -1.38888888888730564116E-3, 4.16666666666665929218E-2)
_DP1, _DP2, _DP3 = 7.85398125648498535156E-1, 3.77489470793079817668E-8, 2.69515142907905952645E-15
_FOUR_OVER_PI = 1.27323954473516268615
# y * _DP1 stays exact up to here (the octant count y has at most 21 bits, _DP1 26).
REDUCTION_LIMIT = 2.0 ** 20


def _horner(z, coefficients):
    result = coefficients[0]
    for c in coefficients[1:]:
        result = result * z + c
    return result


def _kernel(x, want_cos):
    """Cephes' sin (or cos) of a float64 array with |x| <= REDUCTION_LIMIT."""
    a = jnp.abs(x)
    octant = jnp.floor(a * _FOUR_OVER_PI)
    j = octant - 8.0 * jnp.floor(octant * 0.125)           # octant mod 8
    odd = jnp.mod(j, 2.0) == 1.0                            # map zeros to the origin
    octant, j = jnp.where(odd, octant + 1.0, octant), jnp.where(odd, j + 1.0, j)
    j = jnp.where(j >= 8.0, j - 8.0, j)
    flip = j > 3.0
    j = jnp.where(flip, j - 4.0, j)
    z = ((a - octant * _DP1) - octant * _DP2) - octant * _DP3
    zz = z * z
    sin_z = z + z * (zz * _horner(zz, _SIN))
    cos_z = 1.0 - 0.5 * zz + zz * zz * _horner(zz, _COS)
    swap = (j == 1.0) | (j == 2.0)
    if want_cos:
        value, negative = jnp.where(swap, sin_z, cos_z), flip ^ (j > 1.0)
    else:
        value, negative = jnp.where(swap, cos_z, sin_z), flip ^ (x < 0)
    return jnp.where(negative, -value, value)


def _in_range(x):
    return jnp.all(jnp.abs(x) <= REDUCTION_LIMIT)   # False for inf and NaN too


@jax.custom_jvp
def sin(x):
    return lax.cond(_in_range(x), lambda v: _kernel(v, False), lax.sin, x)


@jax.custom_jvp
def cos(x):
    return lax.cond(_in_range(x), lambda v: _kernel(v, True), lax.cos, x)


@sin.defjvp
def _sin_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return sin(x), cos(x) * t


@cos.defjvp
def _cos_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return cos(x), -sin(x) * t


def _replacement(eqn):
    """The fast function for a float64 sin or cos equation at default accuracy, else None."""
    if eqn.primitive not in (lax.sin_p, lax.cos_p) or eqn.params.get("accuracy") is not None:
        return None
    if eqn.invars[0].aval.dtype != jnp.float64:
        return None
    return sin if eqn.primitive is lax.sin_p else cos


_NESTED_JIT = ("jit", "pjit")   # a nested jit's primitive, by JAX version


def _evaluate(jaxpr, consts, args):
    """Evaluate a jaxpr, with sin and cos replaced (nested jit inlined, other
    higher-order primitives bound as they are)."""
    env = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        fast = _replacement(eqn)
        if fast is not None:
            out = [fast(*values)]
        elif eqn.primitive.name in _NESTED_JIT:
            inner = eqn.params["jaxpr"]
            out = _evaluate(inner.jaxpr, inner.consts, values)
        else:
            out = eqn.primitive.bind(*values, **eqn.params)
            out = out if eqn.primitive.multiple_results else [out]
        for var, value in zip(eqn.outvars, out):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


# Primitives that cost about as little as a copy of their result, or that XLA does not fuse
# (a dot, a conditional): recomputing them is cheaper than materialising what they make.
# With exp (vectorised by XLA) and the sin and cos replaced here, the seed model's set.
CHEAP_PRIMITIVES = frozenset({
    "add", "sub", "mul", "div", "neg", "abs", "sign", "max", "min", "exp", "exp2",
    "integer_pow", "square", "sqrt", "rsqrt", "tanh", "logistic", "floor", "ceil",
    "round", "select_n", "clamp", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not",
    "convert_element_type", "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "concatenate", "transpose", "rev", "iota", "copy", "copy_p",
    "reduce_sum", "reduce_max", "reduce_min", "dot_general", "stop_gradient", "cond",
})


def only_cheap_ops(fn, *args):
    """Whether fn(*args) uses CHEAP_PRIMITIVES only, plus the sin and cos that
    ``with_fast_trig`` replaces (XLA's own, float32 or at a set accuracy, are not cheap),
    inside nested jit too."""
    def cheap(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in _NESTED_JIT:
                if not cheap(eqn.params["jaxpr"].jaxpr):
                    return False
            elif eqn.primitive.name not in CHEAP_PRIMITIVES and _replacement(eqn) is None:
                return False
        return True
    return cheap(jax.make_jaxpr(fn)(*args).jaxpr)


def with_fast_trig(fn):
    """``fn`` with its float64 sin and cos evaluated by this module's kernels (traced once
    per call into a jaxpr, then evaluated with the replacements)."""
    def fast_fn(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)
    return fast_fn
