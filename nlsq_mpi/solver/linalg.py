"""Small dense kernels of the Trust Region Reflective method, as pure jax.numpy functions.

Each mirrors the scipy.optimize._lsq.common routine of the same name (Branch, Coleman & Li,
SIAM J. Sci. Comput. 21(1), 1999; Moré, "The Levenberg-Marquardt algorithm", 1978), rewritten
without data-dependent Python control flow so it can be jitted and vmapped. The quadratic
model is evaluated through the triangular factor R of the augmented Jacobian, since
||J_h s||^2 + s.diag_h.s = ||R s||^2; that keeps every step after the QR in O(n^2).
"""
import jax.numpy as jnp
from jax import lax

EPS = jnp.finfo(jnp.float64).eps


def cl_scaling_vector(x, g, lb, ub):
    """Coleman-Li scaling vector v and its derivative dv (BCL99, eq. 2.5)."""
    upper = (g < 0) & jnp.isfinite(ub)
    lower = (g > 0) & jnp.isfinite(lb)
    v = jnp.where(lower, x - lb, jnp.where(upper, ub - x, 1.0))
    dv = jnp.where(lower, 1.0, jnp.where(upper, -1.0, 0.0))
    return v, dv


def find_active_constraints(x, lb, ub, rtol):
    """-1 where x sits on its lower bound, +1 on its upper bound, 0 inside (rtol relative)."""
    lower_dist, upper_dist = x - lb, ub - x
    lower = jnp.isfinite(lb) & (lower_dist <= jnp.minimum(upper_dist, rtol * jnp.maximum(1, jnp.abs(lb))))
    upper = jnp.isfinite(ub) & (upper_dist <= jnp.minimum(lower_dist, rtol * jnp.maximum(1, jnp.abs(ub))))
    return jnp.where(lower, -1, jnp.where(upper, 1, 0))


def make_strictly_feasible(x, lb, ub, rstep):
    """Shift points on (or beyond) a bound into the interior; rstep=0 moves by one ulp."""
    active = find_active_constraints(x, lb, ub, rstep)
    if rstep == 0:
        x_new = jnp.where(active == -1, jnp.nextafter(lb, ub), x)
        x_new = jnp.where(active == 1, jnp.nextafter(ub, lb), x_new)
    else:
        x_new = jnp.where(active == -1, lb + rstep * jnp.maximum(1, jnp.abs(lb)), x)
        x_new = jnp.where(active == 1, ub - rstep * jnp.maximum(1, jnp.abs(ub)), x_new)
    tight = (x_new < lb) | (x_new > ub)   # only possible for finite bounds
    return jnp.where(tight, 0.5 * jnp.where(tight, lb + ub, 0.0), x_new)


def step_size_to_bound(x, s, lb, ub):
    """Largest t with x + t*s feasible, and the mask (signed) of the bounds reached at t."""
    nonzero = s != 0
    s_safe = jnp.where(nonzero, s, 1.0)
    steps = jnp.where(nonzero, jnp.maximum((lb - x) / s_safe, (ub - x) / s_safe), jnp.inf)
    min_step = jnp.min(steps)
    return min_step, (steps == min_step) * jnp.sign(s)


def intersect_trust_region(x, s, Delta):
    """Roots t1 <= t2 of ||x + t s|| = Delta (cancellation-free, Numerical Recipes 5.6)."""
    a = jnp.dot(s, s)
    b = jnp.dot(x, s)
    c = jnp.dot(x, x) - Delta**2
    d = jnp.sqrt(jnp.maximum(b * b - a * c, 0.0))
    q = -(b + jnp.where(b >= 0, d, -d))
    q = jnp.where(q == 0, -EPS, q)
    t1, t2 = q / a, c / q
    return jnp.minimum(t1, t2), jnp.maximum(t1, t2)


def householder_r(At, reflections):
    """The triangular factor R (N x N) of A = At.T (M x N, M >= N) by Householder reflections
    (Golub & Van Loan, Matrix Computations, alg. 5.2.1), unrolled over the first
    ``reflections`` columns; columns after those are only transformed, which is all the
    TRF subproblem needs of its last column Q^T f.

    Written in jax.numpy on A^T, whose rows are contiguous, rather than calling LAPACK's
    geqrf: XLA fuses the Jacobian computation into the column-major copy that geqrf needs,
    which measured 10x slower than the factorisation itself. v is built without an indexed
    update, which XLA implements as a copy of the row. Signs of R's rows may differ from
    LAPACK's; R^T R = A^T A either way."""
    N, M = At.shape
    cols = jnp.arange(M)
    for k in range(reflections):
        col = jnp.where(cols >= k, At[k], 0.0)
        alpha = jnp.sqrt(jnp.sum(col * col))
        alpha = jnp.where(At[k, k] > 0, -alpha, alpha)
        v = col - jnp.where(cols == k, alpha, 0.0)
        vv = jnp.sum(v * v)
        beta = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0)
        At = At - (beta * (At @ v))[:, None] * v[None, :]
    return jnp.triu(At[:, :N].T)


def quadratic_value(R, g, s):
    """0.5 ||R s||^2 + g.s: the TRF model's change along s."""
    Rs = R @ s
    return 0.5 * jnp.dot(Rs, Rs) + jnp.dot(g, s)


def quadratic_1d(R, g, s, s0):
    """Coefficients of q(t) = a t^2 + b t + c, the model along s0 + t s."""
    v, u = R @ s, R @ s0
    return 0.5 * jnp.dot(v, v), jnp.dot(g, s) + jnp.dot(u, v), 0.5 * jnp.dot(u, u) + jnp.dot(g, s0)


def minimize_quadratic_1d(a, b, lb, ub, c):
    """Minimiser and minimum of a t^2 + b t + c on [lb, ub] (ties to the first candidate)."""
    extremum = -0.5 * b / jnp.where(a != 0, a, 1.0)
    use_ext = (a != 0) & (lb < extremum) & (extremum < ub)
    t = jnp.stack([lb, ub, jnp.where(use_ext, extremum, lb)])
    y = t * (a * t + b) + c
    y = y.at[2].set(jnp.where(use_ext, y[2], jnp.inf))
    i = jnp.argmin(y)
    return t[i], y[i]


def solve_lsq_trust_region(m, uf, s, V, Delta, initial_alpha, rtol=0.01, max_iter=10):
    """min ||J p + f|| subject to ||p|| <= Delta from the SVD J = U diag(s) V^T, uf = U^T f,
    by Newton iteration on the Levenberg-Marquardt parameter alpha (Moré 1978, sec. 5).
    Returns (p, alpha)."""
    n = s.shape[0]
    suf = s * uf
    full_rank = (s[-1] > EPS * m * s[0]) & (m >= n)   # m residuals, as scipy passes it
    s_safe = jnp.where(s > 0, s, 1.0)
    p_gn = -V @ (uf / s_safe)
    gauss_newton_ok = full_rank & (jnp.linalg.norm(p_gn) <= Delta)

    def phi_and_derivative(alpha):
        denom = s**2 + alpha
        p_norm = jnp.linalg.norm(suf / denom)
        return p_norm - Delta, -jnp.sum(suf**2 / denom**3) / p_norm

    alpha_upper = jnp.linalg.norm(suf) / Delta
    phi0, dphi0 = phi_and_derivative(jnp.where(full_rank, 0.0, 1.0))
    alpha_lower = jnp.where(full_rank, -phi0 / dphi0, 0.0)
    safeguard = lambda lo, up: jnp.maximum(0.001 * up, (lo * up) ** 0.5)
    restart = (~full_rank) & (initial_alpha == 0)
    alpha = jnp.where(restart, safeguard(alpha_lower, alpha_upper), initial_alpha)

    def body(_, carry):
        alpha, lo, up, done = carry
        alpha_s = jnp.where((alpha < lo) | (alpha > up), safeguard(lo, up), alpha)
        phi, dphi = phi_and_derivative(alpha_s)
        up_n = jnp.where(phi < 0, alpha_s, up)
        ratio = phi / dphi
        lo_n = jnp.maximum(lo, alpha_s - ratio)
        alpha_n = alpha_s - (phi + Delta) * ratio / Delta
        keep = lambda new, old: jnp.where(done, old, new)
        return (keep(alpha_n, alpha), keep(lo_n, lo), keep(up_n, up),
                done | (jnp.abs(phi) < rtol * Delta))

    alpha, _, _, _ = lax.fori_loop(0, max_iter, body, (alpha, alpha_lower, alpha_upper, False),
                                   unroll=True)
    p = -V @ (suf / (s**2 + alpha))
    p = p * (Delta / jnp.linalg.norm(p))
    return jnp.where(gauss_newton_ok, p_gn, p), jnp.where(gauss_newton_ok, 0.0, alpha)


def select_step(x, R, diag_h, g_h, p, p_h, d, Delta, lb, ub, theta):
    """Choose among the reflected trust-region step, the step truncated at the bound, and
    the constrained Cauchy step, whichever lowers the model most (BCL99, sec. 3; scipy's
    ``trf.select_step``). Returns (step, step_h, predicted_reduction)."""
    inside = jnp.all((x + p >= lb) & (x + p <= ub))
    value_inside = quadratic_value(R, g_h, p_h)

    p_stride, hits = step_size_to_bound(x, p, lb, ub)
    r_h = jnp.where(hits != 0, -p_h, p_h)
    r = d * r_h
    p_b, p_h_b = p * p_stride, p_h * p_stride
    x_on_bound = x + p_b
    _, to_tr = intersect_trust_region(p_h_b, r_h, Delta)
    to_bound, _ = step_size_to_bound(x_on_bound, r, lb, ub)
    r_stride = jnp.minimum(to_bound, to_tr)
    positive = r_stride > 0
    r_stride_safe = jnp.where(positive, r_stride, 1.0)
    r_lo = jnp.where(positive, (1 - theta) * p_stride / r_stride_safe, 0.0)
    r_up = jnp.where(positive, jnp.where(r_stride == to_bound, theta * to_bound, to_tr), -1.0)
    a, b, c = quadratic_1d(R, g_h, r_h, p_h_b)
    t_r, r_value = minimize_quadratic_1d(a, b, r_lo, r_up, c)
    r_value = jnp.where(r_lo <= r_up, r_value, jnp.inf)
    r_h_step = r_h * t_r + p_h_b
    r_step = r_h_step * d

    p_t, p_h_t = p_b * theta, p_h_b * theta
    p_value = quadratic_value(R, g_h, p_h_t)

    ag_h = -g_h
    ag = d * ag_h
    to_tr_ag = Delta / jnp.linalg.norm(ag_h)
    to_bound_ag, _ = step_size_to_bound(x, ag, lb, ub)
    ag_stride = jnp.where(to_bound_ag < to_tr_ag, theta * to_bound_ag, to_tr_ag)
    a, b, _ = quadratic_1d(R, g_h, ag_h, jnp.zeros_like(ag_h))
    t_ag, ag_value = minimize_quadratic_1d(a, b, 0.0, ag_stride, 0.0)
    ag_h, ag = ag_h * t_ag, ag * t_ag

    pick_p = (p_value < r_value) & (p_value < ag_value)
    pick_r = (~pick_p) & (r_value < p_value) & (r_value < ag_value)
    choose = lambda vp, vr, va: jnp.where(pick_p, vp, jnp.where(pick_r, vr, va))
    step = jnp.where(inside, p, choose(p_t, r_step, ag))
    step_h = jnp.where(inside, p_h, choose(p_h_t, r_h_step, ag_h))
    value = jnp.where(inside, value_inside, choose(p_value, r_value, ag_value))
    return step, step_h, -value


def update_tr_radius(Delta, actual_reduction, predicted_reduction, step_norm, bound_hit):
    """Trust-region radius update from the reduction ratio (Moré 1978; scipy's rule)."""
    ratio = jnp.where(predicted_reduction > 0,
                      actual_reduction / jnp.where(predicted_reduction > 0, predicted_reduction, 1.0),
                      jnp.where((predicted_reduction == 0) & (actual_reduction == 0), 1.0, 0.0))
    Delta = jnp.where(ratio < 0.25, 0.25 * step_norm,
                      jnp.where((ratio > 0.75) & bound_hit, 2.0 * Delta, Delta))
    return Delta, ratio


def check_termination(dF, F, dx_norm, x_norm, ratio, ftol, xtol):
    """scipy's status for the ftol/xtol tests: 2 ftol, 3 xtol, 4 both, -1 neither."""
    ftol_ok = (dF < ftol * F) & (ratio > 0.25)
    xtol_ok = dx_norm < xtol * (xtol + x_norm)
    return jnp.where(ftol_ok & xtol_ok, 4, jnp.where(ftol_ok, 2, jnp.where(xtol_ok, 3, -1)))
