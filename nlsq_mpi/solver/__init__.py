"""Bounded Trust Region Reflective solver: pure functions over a state pytree.

``compiled_solver(model, jac, options)`` returns the jitted pieces for one model, cached so
that repeated fits of the same model reuse compiled code (jit then caches per shape).
"""
from functools import lru_cache
from typing import NamedTuple, Callable

import jax

from .losses import LOSSES
from .status import EMPTY, FAILED, MESSAGES, RUNNING, is_success
from .trf import Options, Problem, SolverState, empty_state, init_state, make_advance, make_residual_fns


class CompiledSolver(NamedTuple):
    advance: Callable            # (problem, state, n_steps) -> state, batched over lanes
    residual_and_jacobian_t: Callable  # (problem, p) -> (f, J^T), whitened, one point


@lru_cache(maxsize=64)
def compiled_solver(model, jac, options: Options) -> CompiledSolver:
    _, residual_and_jacobian_t = make_residual_fns(model, jac, options)
    return CompiledSolver(make_advance(model, jac, options), jax.jit(residual_and_jacobian_t))


__all__ = ["LOSSES", "EMPTY", "FAILED", "MESSAGES", "RUNNING", "is_success", "Options", "Problem",
           "SolverState", "empty_state", "init_state", "compiled_solver", "CompiledSolver"]
