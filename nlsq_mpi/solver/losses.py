"""Robust loss functions rho(z), z = (f / f_scale)**2, with their first two derivatives.

The same five losses, formulas and f_scale convention as scipy.optimize.least_squares
(``construct_loss_function``), so costs agree with scipy to rounding.
"""
import jax.numpy as jnp

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def _rho(loss, z):
    if loss == "linear":
        return z, jnp.ones_like(z), jnp.zeros_like(z)
    if loss == "soft_l1":
        t = 1 + z
        return 2 * (t**0.5 - 1), t**-0.5, -0.5 * t**-1.5
    if loss == "huber":
        inner = z <= 1
        zs = jnp.where(inner, 1.0, z)  # keeps the unused branch finite
        return (jnp.where(inner, z, 2 * zs**0.5 - 1), jnp.where(inner, 1.0, zs**-0.5),
                jnp.where(inner, 0.0, -0.5 * zs**-1.5))
    if loss == "cauchy":
        t = 1 + z
        return jnp.log1p(z), 1 / t, -1 / t**2
    if loss == "arctan":
        t = 1 + z**2
        return jnp.arctan(z), 1 / t, -2 * z / t**2
    raise ValueError(f"loss: unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


def loss_cost(loss, f, f_scale):
    """0.5 * sum(rho(f)): the objective the solver minimises."""
    if loss == "linear":
        return 0.5 * jnp.dot(f, f)
    rho0, _, _ = _rho(loss, (f / f_scale) ** 2)
    return 0.5 * f_scale**2 * jnp.sum(rho0)


def scale_for_loss(loss, f, Jt, f_scale):
    """Residuals and Jacobian rescaled so that the Gauss-Newton model of the robust cost is
    an ordinary least-squares one (Triggs et al., "Bundle adjustment", 1999; scipy's
    ``scale_for_robust_loss_function``). Jt is the transposed Jacobian (n, m). Identity for
    the linear loss."""
    if loss == "linear":
        return f, Jt
    _, rho1, rho2 = _rho(loss, (f / f_scale) ** 2)
    rho2 = rho2 / f_scale**2
    j_scale = rho1 + 2 * rho2 * f**2
    j_scale = jnp.where(j_scale < jnp.finfo(f.dtype).eps, jnp.finfo(f.dtype).eps, j_scale) ** 0.5
    return f * rho1 / j_scale, Jt * j_scale[None, :]
