"""Per-start status codes: scipy's least_squares codes, plus the states of a lane in a batch."""

RUNNING = -3   # started, not finished
FAILED = -4    # residuals or Jacobian not finite at the start point
EMPTY = -5     # a batch lane with no start in it

MESSAGES = {
    EMPTY: "No start in this lane.",
    FAILED: "Residuals or Jacobian are not finite at the starting point.",
    RUNNING: "Not finished.",
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
}


def is_success(status):
    """A finished, converged start (scipy's success: status > 0)."""
    return status > 0
