"""Bounded Trust Region Reflective solver: pure functions over a state pytree.

``compiled_solver(model, jac, options)`` returns the jitted pieces for one model, cached so
that repeated fits of the same model reuse compiled code (jit then caches per shape).
"""
from functools import lru_cache
from typing import NamedTuple, Callable

import jax
import jax.numpy as jnp

from .linalg import cl_scaling_vector, find_active_constraints
from .losses import LOSSES, loss_cost, scale_for_loss
from .status import EMPTY, FAILED, MESSAGES, RUNNING, is_success
from .trf import (Options, Problem, SolverState, empty_state, init_state, make_advance,
                  make_residual_fns, steps_lane_by_lane)


class CompiledSolver(NamedTuple):
    advance: Callable    # (problem, state, n_steps) -> state, batched over lanes
    finalize: Callable   # (problem, x) -> Final, at one point


class Final(NamedTuple):
    """What the result needs at the solution: residuals, the (loss-scaled) Jacobian for pcov,
    the cost, scipy's first-order optimality and the active constraints."""
    fun: jax.Array
    jac: jax.Array
    cost: jax.Array
    optimality: jax.Array
    active_mask: jax.Array


def make_finalize(model, jac, options: Options):
    _, residual_and_jacobian_t = make_residual_fns(model, jac, options)

    def finalize(problem: Problem, x) -> Final:
        f, Jt = residual_and_jacobian_t(problem, x)
        fs, Jts = scale_for_loss(options.loss, f, Jt, problem.f_scale)
        g = Jts @ fs
        v, _ = cl_scaling_vector(x, g, problem.lb, problem.ub)
        return Final(f, Jts.T, loss_cost(options.loss, f, problem.f_scale), jnp.max(jnp.abs(g * v)),
                     find_active_constraints(x, problem.lb, problem.ub, problem.xtol))

    return jax.jit(finalize)


@lru_cache(maxsize=64)
def compiled_solver(model, jac, options: Options) -> CompiledSolver:
    return CompiledSolver(make_advance(model, jac, options), make_finalize(model, jac, options))


__all__ = ["LOSSES", "EMPTY", "FAILED", "MESSAGES", "RUNNING", "is_success", "Options", "Problem",
           "SolverState", "empty_state", "init_state", "compiled_solver", "CompiledSolver",
           "steps_lane_by_lane"]
