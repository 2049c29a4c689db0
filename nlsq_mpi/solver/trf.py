"""Bounded Trust Region Reflective least squares as pure functions over an explicit state.

The algorithm is Branch, Coleman & Li (1999), step for step as in scipy's
``least_squares(method="trf", tr_solver="exact")`` (``_lsq/trf.py``), with one change of
shape: scipy's nested loop (outer: new Jacobian, inner: shrink the radius until a step is
accepted) is flattened into a single step, one function evaluation each, so a batch of
starts advances step by step (its lanes together under ``jax.vmap``, or one after another)
and can be stopped, saved and resumed between any two steps. Everything a start needs to
continue lives in ``SolverState``; the residuals and Jacobian at ``x`` are recomputed at the
start of each step from ``x`` alone, by the same compiled code, so a state reloaded from a
checkpoint continues bit for bit.

The subproblem uses the SVD of the augmented, scaled Jacobian like scipy, computed as the
triangular factor R of [J_h f; diag(diag_h)^1/2 0] followed by the SVD of the n-by-n R, which
gives the same singular values and U^T f in O(m n^2) without forming U. R comes from the
Gram matrix J^T J (Cholesky QR) where R is well conditioned, else from Householder QR.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import linalg
from .fastmath import only_cheap_ops, with_fast_trig
from .losses import loss_cost, scale_for_loss
from .status import EMPTY, FAILED, RUNNING


class Problem(NamedTuple):
    """Data and settings of one fit, passed as traced arguments (no recompile when they change)."""
    xdata: Any            # passed to the model unchanged
    ydata: jax.Array      # (m,)
    sigma: jax.Array      # (m,) standard deviations, (m, m) lower Cholesky factor, or (0,) none
    lb: jax.Array         # (n,)
    ub: jax.Array         # (n,)
    x_scale_inv: jax.Array  # (n,), unused with x_scale="jac"
    f_scale: jax.Array
    ftol: jax.Array
    xtol: jax.Array
    gtol: jax.Array
    max_nfev: jax.Array


class Options(NamedTuple):
    """Static choices: each distinct value compiles its own solver."""
    loss: str = "linear"
    jac_scale: bool = False
    sigma_kind: str = "none"   # "none", "1d", "2d"


class SolverState(NamedTuple):
    """Everything one start needs to continue (one row per lane when batched)."""
    x: jax.Array           # current iterate, strictly feasible
    cost: jax.Array        # 0.5 * sum(rho(f(x)))
    Delta: jax.Array       # trust-region radius
    alpha: jax.Array       # Levenberg-Marquardt parameter carried between subproblems
    scale_inv: jax.Array   # variable scaling (running max of column norms with x_scale="jac")
    optimality: jax.Array  # ||g * v||_inf at x
    nfev: jax.Array
    njev: jax.Array
    nit: jax.Array
    status: jax.Array      # RUNNING, EMPTY, FAILED or scipy's 0..4
    pending: jax.Array     # ftol/xtol status raised by the last trial, applied at the next step
    accepted: jax.Array    # the last trial was accepted: x is new
    fresh: jax.Array       # not stepped yet: cost, Delta and scale_inv still to initialise


@jax.jit
def init_state(x0, lb, ub, x_scale_inv):
    """States for a batch of start points x0 (k, n); x0 is moved strictly inside the bounds
    as scipy does. No model evaluation happens here: the first step does it. Jitted, so a
    fresh process loads it from the persistent compilation cache instead of compiling
    each operation eagerly."""
    x0 = jnp.asarray(x0, jnp.float64)
    k, n = x0.shape
    x = jax.vmap(lambda x: linalg.make_strictly_feasible(x, lb, ub, 1e-10))(x0)
    zeros = jnp.zeros(k, jnp.float64)
    izeros = jnp.zeros(k, jnp.int32)
    return SolverState(
        x=x, cost=zeros, Delta=zeros, alpha=zeros,
        scale_inv=jnp.broadcast_to(x_scale_inv, (k, n)).astype(jnp.float64),
        optimality=zeros, nfev=izeros, njev=izeros, nit=izeros,
        status=jnp.full(k, RUNNING, jnp.int32), pending=jnp.full(k, -1, jnp.int32),
        accepted=jnp.zeros(k, bool), fresh=jnp.ones(k, bool))


def empty_state(k, n):
    """A batch of k lanes holding no start (status EMPTY: never stepped), as host arrays."""
    zeros, izeros = np.zeros(k), np.zeros(k, np.int32)
    return SolverState(x=np.zeros((k, n)), cost=zeros, Delta=zeros, alpha=zeros,
                       scale_inv=np.ones((k, n)), optimality=zeros, nfev=izeros, njev=izeros,
                       nit=izeros, status=np.full(k, EMPTY, np.int32),
                       pending=np.full(k, -1, np.int32), accepted=np.zeros(k, bool),
                       fresh=np.zeros(k, bool))


# Below this many points the conditional in materialize() costs more than the recomputation
# it saves (NIST MGH09, m=11: 10% slower; the seed model at m=50: 30% faster).
MATERIALIZE_MIN_POINTS = 32


def materialize(values, always_true):
    """``values``, computed once and kept in memory: the consumers read them instead of
    recomputing them.

    Without this XLA fuses the model's transcendental functions (exp, cos, ...) into every
    consumer of the residuals and of each Jacobian column, and evaluated them six times per
    point and step (one step measured 261 -> 178 us per lane at m=2,000). A conditional on a
    runtime value is a boundary XLA does not fuse across; ``lax.optimization_barrier`` is
    not, since XLA's CPU pipeline removes it before fusion. ``always_true`` must be a traced
    scalar that is true at run time, so the branch cannot be folded away."""
    return lax.cond(always_true, lambda v: v, lambda v: jax.tree.map(jnp.zeros_like, v), values)


def make_residual_fns(model: Callable, jac: Callable | None, opts: Options, fast_trig=False):
    """(residual(problem, p), residual_and_jacobian_t(problem, p)) for ``model(x, *p)``; the
    Jacobian comes transposed, (n, m), one contiguous row per parameter.

    Residuals are whitened as in curve_fit: (model - y) / sigma for 1-D sigma, L^-1 (model - y)
    for a covariance C = L L^T. The Jacobian is forward-mode autodiff unless ``jac`` is given:
    the model is linearised once and the n basis vectors pushed through the linear map.
    With ``fast_trig`` the model's sin and cos are fastmath's, whose values XLA can no longer
    recompute inside the Jacobian's fusion (each comes out of a conditional); a model that
    has no other costly operation then skips ``materialize`` and its copies (one step at
    m=100,000: 4.0 -> 3.4 ms).
    """
    user_model = model
    if fast_trig:
        model, jac = with_fast_trig(model), jac and with_fast_trig(jac)

    def whiten(problem, r):
        if opts.sigma_kind == "1d":
            return r / problem.sigma if r.ndim == 1 else r / problem.sigma[:, None]
        if opts.sigma_kind == "2d":
            return jax.scipy.linalg.solve_triangular(problem.sigma, r, lower=True)
        return r

    def residual(problem, p):
        pred = jnp.reshape(model(problem.xdata, *[p[i] for i in range(p.shape[0])]), (-1,))
        return whiten(problem, pred - problem.ydata)

    def residual_and_jacobian_t(problem, p):
        if jac is not None:
            J = jnp.reshape(jnp.asarray(jac(problem.xdata, *[p[i] for i in range(p.shape[0])])),
                            (problem.ydata.shape[0], p.shape[0]))
            return residual(problem, p), whiten(problem, J).T
        f, linear = jax.linearize(lambda q: residual(problem, q), p)
        if problem.ydata.shape[0] >= MATERIALIZE_MIN_POINTS and not (fast_trig and only_cheap_ops(
                user_model, problem.xdata, *[p[i] for i in range(p.shape[0])])):
            leaves, tree = jax.tree.flatten(linear)
            f, leaves = materialize((f, leaves), problem.max_nfev > 0)
            linear = jax.tree.unflatten(tree, leaves)
        return f, jax.vmap(linear)(jnp.eye(p.shape[0], dtype=p.dtype))

    return residual, residual_and_jacobian_t


class Linearization(NamedTuple):
    """One lane's model at x: what the factorisation and the trial step need."""
    f: jax.Array           # residuals, scaled for the loss (m,)
    Jt: jax.Array          # Jacobian, scaled for the loss, transposed (n, m)
    g: jax.Array           # gradient J^T f
    cost: jax.Array
    finite: jax.Array
    scale_inv: jax.Array
    d: jax.Array           # v^1/2 * scale: the change of variables of the subproblem
    diag_h: jax.Array
    g_norm: jax.Array
    Delta: jax.Array
    alpha: jax.Array
    nfev: jax.Array
    njev: jax.Array
    status: jax.Array


class Factor(NamedTuple):
    """The subproblem's factorisation: R of the augmented scaled Jacobian, Q^T f, and the
    SVD of R."""
    R: jax.Array
    qf: jax.Array
    Ur: jax.Array
    s: jax.Array
    Vt: jax.Array


# Largest condition number of R for which the normal-equations factor is used: its
# smallest singular values then carry a relative error of about eps * cond^2 ~ 2e-8.
GRAM_MAX_CONDITION = 1e4


def gram_factor(lin: Linearization, G0):
    """R and Q^T f from the Gram matrix G0 = J^T J (Cholesky QR: R^T R = D G0 D + diag_h and
    R^T (Q^T f) = D g), with ``ok`` false where R is too ill-conditioned for that to be
    accurate. One product over the m points instead of the n reflections of Householder
    QR, each of which reads and writes the whole matrix (one step 175 -> 120 us per lane
    at m=2,000, n=5)."""
    d = lin.d
    L = jnp.linalg.cholesky(G0 * d[:, None] * d[None, :] + jnp.diag(lin.diag_h))
    qf = jax.scipy.linalg.solve_triangular(L, d * lin.g, lower=True)
    factor = svd_factor(L.T, qf)
    # False where Cholesky failed (not positive definite: NaN), whatever the SVD makes of it.
    ok = (factor.s[-1] * GRAM_MAX_CONDITION > factor.s[0]) & jnp.all(jnp.isfinite(L)) \
        & jnp.all(jnp.isfinite(qf))
    return factor, ok


# Cholesky QR repeated once (CholeskyQR2; Fukaya, Nakatsukasa, Yanagisawa & Yamamoto, 2014)
# gives an R as accurate as Householder QR's while cond(R) stays well below eps^-1/2 ~ 7e7:
# lanes above GRAM_MAX_CONDITION and below this take it, worse ones Householder QR.
CHOLQR2_MAX_CONDITION = 1e7


def cholqr2_factor(lin: Linearization, first: Factor):
    """Refine ``gram_factor``'s R1 = first.R: Q1 = A R1^-1 for the augmented matrix
    A = [J D; diag(diag_h)^1/2], R2 from Q1^T Q1, R = R2 R1 and Q^T [f; 0] = R2^-T Q1^T f.
    One product and one Gram matrix over the m points, where Householder QR copies the
    augmented matrix and makes two passes per column: at m=100,000 a quarter of the seed
    bench's steps need a fallback, which Householder QR made cost as much as the step.
    ``ok`` false where R is too ill-conditioned for this, or a Cholesky factor failed."""
    n = first.R.shape[0]
    L1_inv = jax.scipy.linalg.solve_triangular(first.R.T, jnp.eye(n), lower=True)
    q_top = L1_inv @ (lin.Jt * lin.d[:, None])                 # (J D R1^-1)^T, n x m
    q_bottom = L1_inv * (lin.diag_h**0.5)[None, :]
    L2 = jnp.linalg.cholesky(q_top @ q_top.T + q_bottom @ q_bottom.T)
    qf = jax.scipy.linalg.solve_triangular(L2, q_top @ lin.f, lower=True)
    factor = svd_factor(L2.T @ first.R, qf)
    ok = (factor.s[-1] * CHOLQR2_MAX_CONDITION > factor.s[0]) & jnp.all(jnp.isfinite(L2)) \
        & jnp.all(jnp.isfinite(qf))
    return factor, ok


def exact_factor(lin: Linearization, first: Factor):
    """The factor of a lane whose Cholesky QR (``first``) is not accurate enough:
    CholeskyQR2 where that is, Householder QR where it is not."""
    factor, ok = cholqr2_factor(lin, first)
    return lax.cond(ok, lambda _: factor, householder_factor, lin)


def householder_factor(lin: Linearization):
    """R and Q^T f by Householder QR of [J_h f; diag(diag_h)^1/2 0], for any conditioning."""
    n = lin.d.shape[0]
    # The augmented matrix is built transposed, (n+1, m+n), one contiguous row per column.
    left = jnp.concatenate([lin.Jt * lin.d[:, None], lin.f[None, :]], axis=0)
    right = jnp.concatenate([jnp.diag(lin.diag_h**0.5), jnp.zeros((1, n))], axis=0)
    R_full = linalg.householder_r(jnp.concatenate([left, right], axis=1), n)
    return svd_factor(R_full[:n, :n], R_full[:n, n])


def factorize(lin: Linearization, G0, running, lane_by_lane=None):
    """The factor of every lane of a batch: Cholesky QR, except in the running lanes where it
    is too ill-conditioned, which are refactored by Householder QR. (Lanes stepped one by
    one take ``exact_factor`` instead: CholeskyQR2 there builds on this batched Cholesky
    factor, which made a start's bits depend on the lanes beside it.)

    About 6% of the seed problem's steps need that, so most 16-lane batch steps have such a
    lane. On CPU they are refactored one lane at a time (the cost is what those lanes need:
    the seed bench on one core 0.46 -> 0.34 s against refactoring the batch); an
    accelerator refactors the whole batch in one go when any lane needs it. Either way each
    lane's factor depends on that lane alone. ``lane_by_lane`` (default: on CPU) chooses."""
    factor, ok = jax.vmap(gram_factor)(lin, G0)
    fallback = running & ~ok
    if lane_by_lane is None:
        lane_by_lane = jax.default_backend() == "cpu"
    if not lane_by_lane:
        exact = lax.cond(jnp.any(fallback), jax.vmap(householder_factor), lambda _: factor, lin)
        return select_lanes(fallback, exact, factor)

    def refactor(i, factor):
        exact = householder_factor(jax.tree.map(lambda a: a[i], lin))
        return jax.tree.map(lambda a, e: a.at[i].set(e), factor, exact)

    return lax.fori_loop(0, fallback.shape[0], lambda i, factor: lax.cond(
        fallback[i], refactor, lambda _, factor: factor, i, factor), factor)


def svd_factor(R, qf):
    Ur, s, Vt = jnp.linalg.svd(R)
    return Factor(R, qf, Ur, s, Vt)


# From this many points on, on CPU, the lanes of a batch step one after another rather
# than together (vmap); below it the per-lane loop costs more than it saves.
LANE_LOOP_MIN_POINTS = 1000


def steps_lane_by_lane(m):
    """Whether a batch of problems with m residuals steps its lanes one at a time.

    Under vmap every lane costs a full step until the whole batch is done, so lanes that
    finished, and the straggler a batch waits for, cost as much as working ones (at
    m=2,000, 100 starts: a third of the lane-steps); one after another, a lane that is not
    running costs nothing, and each lane runs the same unbatched code whatever the batch
    width, so its result cannot depend on the width (seed bench: 0.23 -> 0.17 s). Below
    LANE_LOOP_MIN_POINTS the loop's overhead per lane costs more (NIST MGH09, m=11: +50%;
    the seed model at m=1,000: even). An accelerator always steps the batch together."""
    return jax.default_backend() == "cpu" and m >= LANE_LOOP_MIN_POINTS


def make_step(model: Callable, jac: Callable | None, opts: Options):
    """One TRF step for a batch of lanes: ``step(problem, state) -> state``.

    Per lane: linearise the model at x, factor the subproblem (``gram_factor``, falling
    back to ``exact_factor`` one lane at a time, to Householder QR in a batch), take one
    trial step; the lanes together or one after another (``steps_lane_by_lane``). Lanes
    that are not running are left as they are."""
    def step_parts(residual, residual_and_jacobian_t):
        """(linearize, trial) over the given residual functions."""
        def linearize(problem: Problem, st: SolverState):
            lb, ub = problem.lb, problem.ub
            f_true, Jt = residual_and_jacobian_t(problem, st.x)
            cost = jnp.where(st.fresh, loss_cost(opts.loss, f_true, problem.f_scale), st.cost)
            f, Jt = scale_for_loss(opts.loss, f_true, Jt, problem.f_scale)
            g = Jt @ f
            G0 = Jt @ Jt.T
            # A non-finite entry of f or J always makes g = J^T f non-finite (inf*0 and NaN*x are
            # NaN; a sum with an inf or NaN term is never finite), so the n entries of g stand for
            # the m*(n+1) of f and J: XLA fused that test with another evaluation of the model
            # and its Jacobian (one step 340 -> 255 us per lane at m=2,000). g also fails when
            # J^T f overflows, which leaves nothing to step on either.
            finite = jnp.all(jnp.isfinite(g))

            if opts.jac_scale:
                col_norms = jnp.diag(G0) ** 0.5
                scale_inv = jnp.where(st.fresh, jnp.where(col_norms == 0, 1.0, col_norms),
                                      jnp.where(st.accepted, jnp.maximum(col_norms, st.scale_inv),
                                                st.scale_inv))
            else:
                scale_inv = problem.x_scale_inv
            scale = 1 / scale_inv

            v, dv = linalg.cl_scaling_vector(st.x, g, lb, ub)
            g_norm = jnp.max(jnp.abs(g * v))
            v = jnp.where(dv != 0, v * scale_inv, v)
            Delta0 = jnp.linalg.norm(st.x * scale_inv / v**0.5)
            nfev = jnp.where(st.fresh, 1, st.nfev)

            # The test at the top of scipy's outer loop.
            status = jnp.where(g_norm < problem.gtol, 1,
                               jnp.where(st.pending >= 0, st.pending,
                                         jnp.where(nfev >= problem.max_nfev, 0, RUNNING)))
            lin = Linearization(
                f=f, Jt=Jt, g=g, cost=cost, finite=finite,
                scale_inv=jnp.broadcast_to(scale_inv, st.x.shape), d=v**0.5 * scale,
                diag_h=g * dv * scale, g_norm=g_norm,
                Delta=jnp.where(st.fresh, jnp.where(Delta0 == 0, 1.0, Delta0), st.Delta),
                alpha=jnp.where(st.fresh, 0.0, st.alpha), nfev=nfev,
                njev=jnp.where(st.fresh, 1, st.njev + st.accepted.astype(jnp.int32)),
                status=jnp.where(st.fresh & ~finite, FAILED, status))
            return lin, G0

        def trial(problem: Problem, st: SolverState, lin: Linearization, factor: Factor):
            lb, ub = problem.lb, problem.ub
            m = lin.f.shape[0]
            Delta, alpha, cost, nfev = lin.Delta, lin.alpha, lin.cost, lin.nfev
            d = lin.d
            g_h = d * lin.g
            theta = jnp.maximum(0.995, 1 - lin.g_norm)
            p_h, alpha_trial = linalg.solve_lsq_trust_region(
                m, factor.Ur.T @ factor.qf, factor.s, factor.Vt.T, Delta, alpha)
            p = d * p_h
            step_x, step_h, predicted = linalg.select_step(
                st.x, factor.R, lin.diag_h, g_h, p, p_h, d, Delta, lb, ub, theta)
            x_new = linalg.make_strictly_feasible(st.x + step_x, lb, ub, 0)
            f_new = residual(problem, x_new)
            step_h_norm = jnp.linalg.norm(step_h)
            cost_new = loss_cost(opts.loss, f_new, problem.f_scale)
            # As above, the sum stands for f_new's entries, except where rho is bounded (arctan).
            new_finite = jnp.isfinite(cost_new)
            if opts.loss == "arctan":
                new_finite = new_finite & jnp.all(jnp.isfinite(f_new))
            reduction = cost - cost_new
            Delta_new, ratio = linalg.update_tr_radius(
                Delta, reduction, predicted, step_h_norm, step_h_norm > 0.95 * Delta)
            term = linalg.check_termination(reduction, cost, jnp.linalg.norm(step_x),
                                            jnp.linalg.norm(st.x), ratio, problem.ftol,
                                            problem.xtol)
            term = jnp.where(new_finite, term, -1)
            accept = new_finite & (reduction > 0)
            Delta_next = jnp.where(~new_finite, 0.25 * step_h_norm,
                                   jnp.where(term >= 0, Delta, Delta_new))
            alpha_next = jnp.where(new_finite & (term < 0), alpha_trial * Delta / Delta_new,
                                   alpha_trial)
            nfev_next = nfev + 1
            outer_done = accept | (term >= 0) | (nfev_next >= problem.max_nfev)

            running = lin.status == RUNNING
            keep = lambda trial, here: jnp.where(running, trial, here)
            return SolverState(
                x=keep(jnp.where(accept, x_new, st.x), st.x),
                cost=keep(jnp.where(accept, cost_new, cost), jnp.where(lin.finite, cost, jnp.inf)),
                Delta=keep(Delta_next, Delta),
                alpha=keep(alpha_next, alpha),
                scale_inv=lin.scale_inv,
                optimality=lin.g_norm,
                nfev=keep(nfev_next, nfev),
                njev=lin.njev,
                nit=st.nit + (running & outer_done).astype(jnp.int32),
                status=lin.status,
                pending=keep(term, st.pending),
                accepted=running & accept,
                fresh=jnp.zeros_like(st.fresh),
            )

        return linearize, trial

    linearize, trial = step_parts(*make_residual_fns(model, jac, opts))
    # One lane at a time, sin and cos run vectorised (fastmath): XLA's own take 6 ns a point.
    lane_linearize, lane_trial = step_parts(*make_residual_fns(model, jac, opts, fast_trig=True))

    def lane_step(problem: Problem, st: SolverState) -> SolverState:
        lin, G0 = lane_linearize(problem, st)
        factor, ok = gram_factor(lin, G0)
        factor = lax.cond((lin.status == RUNNING) & ~ok, exact_factor, lambda _, first: first,
                          lin, factor)
        return lane_trial(problem, st, lin, factor)

    def step(problem: Problem, st: SolverState) -> SolverState:
        if steps_lane_by_lane(problem.ydata.shape[0]):
            return step_running_lanes(lane_step, problem, st)
        lin, G0 = jax.vmap(linearize, in_axes=(None, 0))(problem, st)
        # Running before the step (EMPTY and FAILED lanes may look RUNNING to linearize).
        factor = factorize(lin, G0, (st.status == RUNNING) & (lin.status == RUNNING))
        return jax.vmap(trial, in_axes=(None, 0, 0, 0))(problem, st, lin, factor)

    return step


def step_running_lanes(lane_step, problem, st):
    """``lane_step`` applied to each running lane of the batch ``st``, one lane after
    another; lanes that are not running are not visited, so a wide batch costs no more
    than its running lanes (a lax.map over all lanes cost 1.6 us per idle lane and step)."""
    running = st.status == RUNNING
    lanes = jnp.nonzero(running, size=running.shape[0], fill_value=0)[0]

    def one_lane(j, st):
        i = lanes[j]
        lane = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, i, keepdims=False), st)
        return jax.tree.map(lambda a, b: lax.dynamic_update_index_in_dim(a, b, i, 0),
                            st, lane_step(problem, lane))

    return lax.fori_loop(0, jnp.sum(running), one_lane, st)


def select_lanes(mask, on_true, on_false):
    """Per lane (leading axis), the pytree ``on_true`` where ``mask`` holds, else ``on_false``."""
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b),
        on_true, on_false)


def make_advance(model: Callable, jac: Callable | None, opts: Options):
    """``advance(problem, state, n_steps)``: up to n_steps TRF steps on every running lane of a
    batch, stopping early once none runs. Lanes that are not running never change."""
    step = make_step(model, jac, opts)

    def advance(problem: Problem, state: SolverState, n_steps) -> SolverState:
        def active(st):
            return st.status == RUNNING

        def body(carry):
            i, st = carry
            new = step(problem, st)
            live = active(st)
            new = select_lanes(live, new, st)
            return i + 1, new

        def cond(carry):
            i, st = carry
            return (i < n_steps) & jnp.any(active(st))

        _, state = lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), state))
        return state

    return jax.jit(advance)
