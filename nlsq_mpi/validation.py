"""Checks of fit()'s arguments, before any solver work. Every failure is an InputError (or a
ModelError for the model itself) naming the argument, so every rank raises the same message."""
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError, ModelError
from .preemption import parse_walltime
from .solver import LOSSES
from .starts import SAMPLERS

WORKFLOWS = ("local", "auto_global", "hpc")


class Checked(NamedTuple):
    xdata: object
    ydata: np.ndarray        # flattened
    y_shape: tuple
    sigma: np.ndarray        # (m,), (m, m) Cholesky factor, or (0,)
    sigma_kind: str
    lb: np.ndarray
    ub: np.ndarray
    p0: np.ndarray | None
    n: int
    x_scale_inv: np.ndarray
    jac_scale: bool
    sampler: object          # name or (n_starts, n) array
    n_starts: int


def _finite(name, a):
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(np.ravel(a)))
        raise InputError(f"{name}: contains NaN or inf (first at flat index {bad[0]}, "
                         f"{bad.size} in all); pass check_finite=False to skip this check")


def _as_float_array(name, a):
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: cannot be read as an array of floats ({exc})") from None


def model_param_count(model):
    """Number of parameters after x in model's signature, or None when it takes *args."""
    try:
        params = list(inspect.signature(model).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) - 1


def _bounds(bounds, n):
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise InputError("bounds: must be a pair (lower, upper) of scalars or arrays") from None
    lo, hi = _as_float_array("bounds lower", lo), _as_float_array("bounds upper", hi)
    for name, b in (("lower", lo), ("upper", hi)):
        if b.ndim > 1 or (b.ndim == 1 and n is not None and b.size != n):
            raise InputError(f"bounds: {name} has shape {b.shape}; expected a scalar or ({n},)")
        if np.any(np.isnan(b)):
            raise InputError(f"bounds: {name} contains NaN")
    return lo, hi


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: must be a positive integer{' or None' if allow_none else ''}, "
                         f"got {value!r}")


def check(model, xdata, ydata, p0, sigma, bounds, workflow, n_starts, sampler, loss, f_scale,
          x_scale, ftol, xtol, gtol, max_nfev, check_finite, checkpoint_interval, batch_size=None,
          walltime=None, checkpoint_seconds=None):
    if not callable(model):
        raise InputError(f"model: must be callable as model(x, *params), got {type(model).__name__}")
    if workflow not in WORKFLOWS:
        raise InputError(f"workflow: unknown workflow {workflow!r}; choose one of {', '.join(WORKFLOWS)}")
    if loss not in LOSSES:
        raise InputError(f"loss: unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise InputError(f"sampler: unknown sampler {sampler!r}; choose one of "
                             f"{', '.join(SAMPLERS)} or pass a (n_starts, n_params) array")
    else:
        sampler = _as_float_array("sampler", sampler)
        if sampler.ndim != 2:
            raise InputError(f"sampler: an explicit start array must be 2-D (n_starts, n_params), "
                             f"got shape {sampler.shape}")

    # Parameter count: p0, bounds, explicit starts and the signature must agree.
    counts = {}
    sig_n = model_param_count(model)
    if sig_n is not None:
        counts["model signature"] = sig_n
    if p0 is not None:
        p0 = _as_float_array("p0", p0).ravel()
        counts["p0"] = p0.size
    lo, hi = _bounds(bounds, None)
    for name, b in (("bounds lower", lo), ("bounds upper", hi)):
        if b.ndim == 1:
            counts[name] = b.size
    if isinstance(sampler, np.ndarray):
        counts["sampler array columns"] = sampler.shape[1]
    if not counts:
        raise InputError("p0: cannot tell the number of parameters (model takes *args); "
                         "pass p0 or array bounds")
    if len(set(counts.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in counts.items())
        raise InputError(f"p0: the number of parameters disagrees: {desc}")
    n = next(iter(counts.values()))
    if n < 1:
        raise InputError("model: takes no parameters after x")
    lb, ub = np.broadcast_to(lo, (n,)).astype(float), np.broadcast_to(hi, (n,)).astype(float)
    for i in range(n):
        if not lb[i] < ub[i]:
            raise InputError(f"bounds: lower[{i}]={lb[i]:g} is not below upper[{i}]={ub[i]:g}")
    if p0 is not None:
        if not np.all(np.isfinite(p0)):
            raise InputError(f"p0: must be finite, got {p0.tolist()}")
        for i in range(n):
            if not lb[i] <= p0[i] <= ub[i]:
                raise InputError(f"p0: p0[{i}]={p0[i]:g} is outside bounds [{lb[i]:g}, {ub[i]:g}]")

    ydata_arr = _as_float_array("ydata", ydata)
    y_shape = ydata_arr.shape
    y = ydata_arr.ravel()
    m = y.size
    if m == 0:
        raise InputError("ydata: is empty")
    if isinstance(xdata, (np.ndarray, jax.Array, list)) and np.ndim(xdata) >= 1:
        xs = np.shape(xdata)
        if len(y_shape) == 1 and xs[0] != m and xs[-1] != m:
            raise InputError(f"xdata: shape {xs} does not match ydata's {m} points "
                             f"(neither its first nor its last axis has length {m})")
    if check_finite:
        _finite("ydata", y)
        if isinstance(xdata, (np.ndarray, jax.Array, list, tuple)):
            try:
                xa = np.asarray(xdata, dtype=np.float64)
            except (TypeError, ValueError):
                xa = None
            if xa is not None:
                _finite("xdata", xa)

    sigma_kind, sig = "none", np.zeros(0)
    if sigma is not None:
        s = _as_float_array("sigma", sigma)
        if check_finite:
            _finite("sigma", s)
        if s.shape == (m,):
            if np.any(s <= 0):
                i = int(np.flatnonzero(s <= 0)[0])
                raise InputError(f"sigma: must be positive, sigma[{i}]={s[i]:g}")
            sigma_kind, sig = "1d", s
        elif s.shape == (m, m):
            try:
                sig = np.linalg.cholesky(s)
            except np.linalg.LinAlgError:
                raise InputError("sigma: the 2-D covariance matrix is not positive definite") from None
            if not np.allclose(s, s.T, rtol=1e-12, atol=0):
                raise InputError("sigma: the 2-D covariance matrix is not symmetric")
            sigma_kind = "2d"
        else:
            raise InputError(f"sigma: shape {s.shape} does not match ydata; expected ({m},) "
                             f"standard deviations or a ({m}, {m}) covariance matrix")

    if workflow != "local":
        if not (np.all(np.isfinite(lb)) and np.all(np.isfinite(ub))):
            bad = int(np.flatnonzero(~(np.isfinite(lb) & np.isfinite(ub)))[0])
            raise InputError(f"bounds: workflow={workflow!r} samples starts inside the bounds, so "
                             f"every bound must be finite; parameter {bad} has "
                             f"[{lb[bad]:g}, {ub[bad]:g}]")
        if isinstance(sampler, np.ndarray):
            if n_starts is not None and n_starts != sampler.shape[0]:
                raise InputError(f"n_starts: {n_starts} differs from the {sampler.shape[0]} rows "
                                 "of the sampler array")
            n_starts = sampler.shape[0]
            outside = ~(np.isfinite(sampler) & (sampler >= lb) & (sampler <= ub))
            if outside.any():   # as p0 would be: a start must lie inside the bounds
                i, j = map(int, np.argwhere(outside)[0])
                raise InputError(f"sampler: start {i} has x[{j}]={sampler[i, j]:g} outside bounds "
                                 f"[{lb[j]:g}, {ub[j]:g}] ({int(outside.any(axis=1).sum())} "
                                 "start(s) in all)")
        elif n_starts is None:
            n_starts = 64
    else:
        if p0 is None:
            raise InputError("p0: workflow='local' fits from p0; pass p0 or use "
                             "workflow='auto_global' with finite bounds")
        if n_starts not in (None, 1):
            raise InputError(f"n_starts: workflow='local' runs one start (p0), got n_starts={n_starts}")
        n_starts = 1
    _positive_int("n_starts", n_starts)

    if isinstance(x_scale, str):
        if x_scale != "jac":
            raise InputError(f"x_scale: must be 'jac' or positive numbers, got {x_scale!r}")
        jac_scale, x_scale_inv = True, np.ones(n)
    else:
        xs = np.broadcast_to(_as_float_array("x_scale", x_scale), (n,)) if np.ndim(x_scale) == 0 \
            else _as_float_array("x_scale", x_scale)
        if xs.shape != (n,) or not np.all(np.isfinite(xs)) or np.any(xs <= 0):
            raise InputError(f"x_scale: must be 'jac' or {n} positive finite numbers, got {x_scale!r}")
        jac_scale, x_scale_inv = False, 1.0 / xs
    if not (np.isfinite(f_scale) and f_scale > 0):
        raise InputError(f"f_scale: must be positive, got {f_scale!r}")
    for name, tol in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if not (tol is not None and np.isfinite(tol) and tol >= 0):
            raise InputError(f"{name}: must be a non-negative number, got {tol!r}")
    if max(ftol, xtol, gtol) < np.finfo(float).eps:
        raise InputError(f"ftol, xtol, gtol: at least one must be >= {np.finfo(float).eps:.3g}")
    _positive_int("max_nfev", max_nfev, allow_none=True)
    _positive_int("checkpoint_interval", checkpoint_interval)
    _positive_int("batch_size", batch_size, allow_none=True)
    if checkpoint_seconds is not None and not (np.isfinite(checkpoint_seconds) and checkpoint_seconds > 0):
        raise InputError(f"checkpoint_seconds: must be None or a positive number, got {checkpoint_seconds!r}")
    try:
        parse_walltime(walltime)
    except ValueError as exc:
        raise InputError(f"walltime: {exc}") from None

    return Checked(xdata, y, y_shape, sig, sigma_kind, lb, ub, p0, n, x_scale_inv, jac_scale,
                   sampler, int(n_starts))


def check_model_output(model, xdata, y_shape, p):
    """Trace the model once (no computation) and check its output shape against ydata."""
    try:
        out = jax.eval_shape(lambda x, q: model(x, *[q[i] for i in range(q.shape[0])]),
                             xdata, jnp.asarray(p))
    except Exception as exc:  # the user's code: report it as a model error with its cause
        raise ModelError(f"model: calling model(x, *p) failed: {type(exc).__name__}: {exc}") from exc
    shape = getattr(out, "shape", None)
    if shape is None or tuple(shape) != tuple(y_shape):
        raise ModelError(f"model: returned shape {shape}, but ydata has shape {tuple(y_shape)}")
