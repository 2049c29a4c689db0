"""fit(): validation, workflow choice, result assembly."""
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import starts as starts_mod
from .covariance import covariance
from .errors import InputError, ModelError
from .parallel.comm import SerialComm, get_comm, launched_by_mpi
from .checkpoint import (CheckpointHook, Checkpointer, fingerprint_parts, identity,
                         writing_advice)
from .parallel.devices import compute_devices
from .parallel.driver import Resume, run_starts
from .preemption import StopControl
from .result import FitResult, StartsTable
from .solver import (EMPTY, MESSAGES, Options, Problem, compiled_solver, is_success,
                     steps_lane_by_lane)
from .validation import check, check_model_output

log = logging.getLogger("nlsq_mpi")


def default_batch_width(m, n):
    """Lanes per jitted call (per device). Where the lanes step together (vmap), it is fixed
    for a problem whatever n_starts: XLA's code, and so the last bits of each start's
    result, may depend on the batch width, never on which starts share the batch or which
    lane holds them.

    On CPU, small problems (m < LANE_LOOP_MIN_POINTS) step 16 lanes together: a lane costs
    about the same at any width, so wider batches only amortise a step's fixed cost and
    waste work on lanes that finished early. Larger ones step their lanes one after
    another, where a lane that is not running costs nothing and the width only sets how
    many starts a call holds: up to LANE_LOOP_POINTS points in flight (256 lanes at
    m=2,000, 16 from m=32,000 on), so an interval does enough work to amortise its
    collective and its checkpoint (1,000 starts on 2 ranks: 72 rounds at 16 lanes, 6 of
    25 writes collective at 256 against 11 at 128; checkpoint overhead 10.4% at 128 lanes,
    5.6% at 256 and 5.8% at 512, same plain time) while it stays short enough to stop
    promptly (about 0.1 s an interval there). An accelerator needs wide
    batches: up to 1024 lanes within ~256 MB of Jacobians."""
    if jax.default_backend() == "cpu":
        if steps_lane_by_lane(m):
            return int(np.clip(LANE_LOOP_POINTS // m, 16, 256))
        return 16
    return int(np.clip(256e6 // (8 * 3 * (m + n) * (n + 1)), 1, 1024))


# Points of data in flight per device on CPU when lanes step one after another.
LANE_LOOP_POINTS = 512_000


def lanes_and_devices(width, n_starts, ranks, devices, spread):
    """(lanes per device, the devices used) for a rank that sees ``devices`` (GPUs, or host
    devices for its cores). With ``spread`` (lanes stepping one after another at the
    default width) the width shrinks to what an even share of the starts needs
    (``spread_width``) and every device a start can fill keeps its lanes: the running
    ones are dealt over the devices each interval. Otherwise each device gets ``width``
    lanes and the devices the starts cannot fill are left out."""
    if spread:
        width = spread_width(width, n_starts, ranks * len(devices))
        return width, devices[:max(1, min(len(devices), -(-n_starts // ranks)))]
    return width, devices[:max(1, min(len(devices), -(-n_starts // (ranks * width))))]


def spread_width(width, n_starts, devices):
    """Lanes per device when lanes step one after another, where the width cannot change a
    lane's result: at most ``width``, and no more than each of ``devices`` (over all ranks)
    needs to hold an even share of n_starts, rounded up to a power of two so that few
    shapes get compiled (a lane that is not running costs nothing; the driver shares the
    starts out evenly and deals the running lanes over a rank's devices)."""
    share = -(-n_starts // devices)
    return min(width, 1 << (share - 1).bit_length())


def fit(model, xdata, ydata, p0=None, sigma=None, absolute_sigma=False, bounds=(-np.inf, np.inf),
        workflow="local", n_starts=None, sampler="sobol", seed=0, checkpoint_dir=None,
        checkpoint_interval=10, loss="linear", f_scale=1.0, x_scale=1.0, ftol=1e-8, xtol=1e-8,
        gtol=1e-8, max_nfev=None, check_finite=True, jac=None, batch_size=None, rebalance=True,
        progress_seconds=5.0, resume=True, keep_checkpoints=True, walltime=None,
        checkpoint_seconds=None):
    """Bounded nonlinear least squares of ``model(xdata, *p)`` to ``ydata``, from one start
    (workflow="local", from p0) or many (workflow="auto_global"/"hpc", inside finite bounds).

    The solver is scipy's Trust Region Reflective method (``least_squares(method="trf")``),
    jitted and batched over starts. ``pcov`` is computed as scipy's ``curve_fit``
    does. Returns a FitResult that unpacks as ``popt, pcov``.

    workflow="hpc" spreads the starts over the MPI ranks (each rank keeps ``batch_size``
    lanes per device busy, refilled every ``checkpoint_interval`` steps, with pending starts
    rebalanced across ranks); every rank returns the same result. Rank 0 logs progress at
    most every ``progress_seconds`` and a summary at the end (with what checkpointing cost,
    and a warning that names a ``checkpoint_seconds`` where it held the fit up for over
    10% of its time). With ``checkpoint_dir`` (any
    workflow, but only "hpc" under several MPI ranks; all ranks together, or one idle rank
    in the fit's tail) it writes a checkpoint every interval (with ``checkpoint_seconds``,
    instead at the first interval end that many seconds after the last write), resumes
    from the newest valid one unless ``resume=False``, stops cleanly on SIGTERM/SIGUSR1 or
    before ``walltime`` (seconds or "[D-]HH:MM:SS"; else NLSQ_MPI_WALLTIME; and
    SLURM_JOB_END_TIME) with exit status 75, and stores the final result as
    checkpoint_dir/result.h5; ``keep_checkpoints=False`` then removes the generations.
    Without ``checkpoint_dir`` an "hpc" fit still stops on SIGTERM/SIGUSR1 with status 75
    (nothing saved) and leaves the walltime to the scheduler.
    """
    c = check(model, xdata, ydata, p0, sigma, bounds, workflow, n_starts, sampler, loss, f_scale,
              x_scale, ftol, xtol, gtol, max_nfev, check_finite, checkpoint_interval, batch_size,
              walltime, checkpoint_seconds)
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise InputError(f"checkpoint_dir: must be a path (str or os.PathLike), got "
                         f"{checkpoint_dir!r}")
    if walltime is not None and checkpoint_dir is None:
        raise InputError("walltime: a fit without checkpoint_dir has nothing to save before the "
                         "limit; give a checkpoint_dir too, or leave the limit to the scheduler")
    if workflow != "hpc" and checkpoint_dir is not None and launched_by_mpi() \
            and get_comm().size > 1:
        raise InputError(
            f"checkpoint_dir: workflow={workflow!r} runs the whole fit on each of the "
            f"{get_comm().size} MPI ranks, and they would all write {checkpoint_dir}; use "
            "workflow='hpc' to share the starts and one checkpoint, or run one process")
    x0 = starts_mod.start_points(c.sampler, seed, c.lb, c.ub, np.arange(c.n_starts), c.n_starts, c.p0) \
        if workflow != "local" else c.p0[None, :]
    check_model_output(model, c.xdata, c.y_shape, x0[0])

    opts = Options(loss=loss, jac_scale=c.jac_scale, sigma_kind=c.sigma_kind)
    solver = compiled_solver(model, jac, opts)
    problem = make_problem(c, f_scale, ftol, xtol, gtol, max_nfev)
    width = batch_size or default_batch_width(c.ydata.size, c.n)

    comm = get_comm() if workflow == "hpc" else SerialComm()
    if workflow == "hpc":
        ensure_log_handler()
    # Without a checkpoint a stop saves nothing: signals still stop an "hpc" fit (status 75,
    # to be requeued), but the walltime is left to the scheduler, or each requeued run
    # would stop before the limit and start over again. Made before the checkpoint is
    # opened, so a bad NLSQ_MPI_WALLTIME is refused before resume=False clears anything.
    stop = StopControl(walltime, watch_deadline=checkpoint_dir is not None) \
        if workflow == "hpc" or checkpoint_dir is not None else None
    ckpt = snap = None
    if checkpoint_dir is not None:
        ckpt, snap = open_checkpoint(comm, checkpoint_dir, resume, problem_fingerprint(
            model, jac, c, x0, loss, f_scale, x_scale, ftol, xtol, gtol, max_nfev, seed))
        if snap is not None and not steps_lane_by_lane(c.ydata.size):
            width = batch_size or snap.lane_width   # where the width can change the bits
    resume_from = snap.path if snap is not None else None
    # Every rank must run the same width (the driver gathers each rank's free lanes; the
    # checkpoint's attributes carry the width), so all use the fewest devices any rank has.
    devices = compute_devices(*comm.local_split())
    devices = devices[:min(comm.allgather(len(devices)))]
    width, devices = lanes_and_devices(width, c.n_starts, comm.size, devices,
                                       batch_size is None and steps_lane_by_lane(c.ydata.size))
    started = time.perf_counter()
    with stop or contextlib.nullcontext(), (ckpt.flushing() if ckpt else contextlib.nullcontext()):
        table = run_starts(
            comm, solver.advance, problem, x0, width * len(devices), checkpoint_interval,
            c.lb, c.ub, c.x_scale_inv, rebalance=rebalance,
            progress_seconds=progress_seconds if workflow == "hpc" else float("inf"),
            checkpoint=CheckpointHook(ckpt, width, checkpoint_seconds, stop) if ckpt else None,
            resume=snapshot_resume(snap) if snap is not None else None,
            stop=stop, devices=devices, drain=workflow != "hpc" and ckpt is None)
    # Should assembling fail, the last generation is in place before the error propagates.
    with ckpt.flushing() if ckpt else contextlib.nullcontext():
        result = assemble_result(solver, problem, table, workflow, absolute_sigma, resume_from)
    if ckpt is not None:
        # Rank 0 saves the result while the highest rank's thread writes the last generation
        # and puts it in place (driver.idle_writer); stats() then waits for it on every rank.
        result.save(Path(checkpoint_dir) / "result.h5")
        result.checkpoint = {**ckpt.stats(),
                             "fit_seconds": round(time.perf_counter() - started, 6)}
        if not keep_checkpoints:
            ckpt.clear()
    if workflow == "hpc" and comm.rank == 0:
        log.info("%s", result.summary())
        advice = writing_advice(result.checkpoint, checkpoint_interval,
                                checkpoint_seconds) if ckpt else None
        if advice:
            log.warning("%s", advice)
    return result


def open_checkpoint(comm, checkpoint_dir, resume, parts):
    """(Checkpointer, newest valid Snapshot or None) for checkpoint_dir; resume=False clears it."""
    ckpt = Checkpointer(comm, checkpoint_dir, parts, log, start_over=not resume)
    snap = ckpt.load_latest() if resume else None
    if snap is not None and comm.rank == 0:
        log.info("resuming from %s (round %d, %d/%d starts done, written by %d ranks)",
                 snap.path, snap.round, int(np.sum(snap.table["status"] != EMPTY)),
                 len(snap.table["cost"]), snap.ranks)
    return ckpt, snap


def problem_fingerprint(model, jac, c, x0, loss, f_scale, x_scale, ftol, xtol, gtol, max_nfev, seed):
    """The parts of a problem a checkpoint must agree with, each hashed separately (the
    same in every process: ``identity``). xdata may be any pytree of arrays."""
    leaves, tree = jax.tree.flatten(c.xdata)
    return fingerprint_parts(model=identity(model), jac=identity(jac),
                             xdata=[str(tree), *map(np.asarray, leaves)], ydata=c.ydata,
                             sigma=c.sigma, bounds=(c.lb, c.ub), loss=(loss, float(f_scale)),
                             x_scale=identity(x_scale), tolerances=(ftol, xtol, gtol, max_nfev),
                             starts=(x0, seed, c.n_starts))


def snapshot_resume(snap):
    table = StartsTable(**{k: np.array(v) for k, v in snap.table.items()})
    fields = [f for f in snap.states.dtype.names if f != "start"]
    saved = {int(s): {f: snap.states[f][j] for f in fields}
             for j, s in enumerate(snap.states["start"])}
    return Resume(table, saved, snap.round, snap.steps)


def ensure_log_handler():
    """Progress goes to stdout on rank 0 unless the application configured logging itself."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[nlsq_mpi] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def make_problem(c, f_scale, ftol, xtol, gtol, max_nfev):
    xdata = jax.tree.map(jnp.asarray, c.xdata)
    return Problem(xdata=xdata, ydata=jnp.asarray(c.ydata), sigma=jnp.asarray(c.sigma),
                   lb=jnp.asarray(c.lb), ub=jnp.asarray(c.ub), x_scale_inv=jnp.asarray(c.x_scale_inv),
                   f_scale=jnp.asarray(float(f_scale)), ftol=jnp.asarray(float(ftol)),
                   xtol=jnp.asarray(float(xtol)), gtol=jnp.asarray(float(gtol)),
                   max_nfev=jnp.asarray(int(max_nfev or 100 * c.n), jnp.int32))


def assemble_result(solver, problem, table, workflow, absolute_sigma, resumed_from=None):
    best = table.best()
    if best is None:
        raise ModelError(f"model: all {len(table.cost)} starts failed: residuals or Jacobian are "
                         "not finite at every start point")
    popt = table.x[best].copy()
    final = jax.tree.map(np.asarray, solver.finalize(problem, popt))
    f, cost = final.fun, float(final.cost)
    m, n = f.size, popt.size
    pcov, perr = covariance(final.jac, cost, m, n, absolute_sigma)
    status = int(table.status[best])
    return FitResult(
        popt=popt, pcov=pcov, perr=perr, cost=cost, chi2=float(f @ f), dof=m - n,
        success=bool(is_success(status)), status=status, message=MESSAGES[status],
        nfev=int(table.nfev[best]), nit=int(table.nit[best]),
        optimality=float(final.optimality),
        active_mask=final.active_mask,
        best_start=best, n_starts=len(table.cost), starts=table, fun=f, workflow=workflow,
        resumed_from=resumed_from)
