"""The multi-start driver: one loop that keeps a fixed-width batch of lanes busy.

Refill empty lanes from the pending starts, advance the batch ``interval`` solver steps in one
jitted call, harvest the lanes that finished into the per-start table, repeat. The solver
state lives on the host between calls (a few numbers per lane), which is what makes it cheap
to combine across ranks and to checkpoint.
"""
import logging
import time
from dataclasses import dataclass

import jax
import numpy as np

from ..result import StartsTable
from ..solver import RUNNING, EMPTY, SolverState, empty_state, init_state

log = logging.getLogger("nlsq_mpi")


@dataclass
class Batch:
    """Host copy of the lanes: solver state plus the global start index in each lane (-1: empty)."""
    state: SolverState
    start_of_lane: np.ndarray

    @classmethod
    def empty(cls, width, n):
        return cls(jax.tree.map(np.asarray, empty_state(width, n)), np.full(width, -1, np.int64))


def fill_lanes(batch, pending, x0_table, lb, ub, x_scale_inv):
    """Put pending start indices (taken from the front, in order) into the empty lanes."""
    free = np.flatnonzero(batch.start_of_lane < 0)
    take = min(len(free), len(pending))
    if take == 0:
        return batch, pending
    lanes, starts = free[:take], np.asarray(pending[:take], np.int64)
    fresh = jax.tree.map(np.asarray, init_state(x0_table[starts], lb, ub, x_scale_inv))
    state = jax.tree.map(lambda a, b: _scatter(a, lanes, b), batch.state, fresh)
    start_of_lane = batch.start_of_lane.copy()
    start_of_lane[lanes] = starts
    return Batch(state, start_of_lane), pending[take:]


def _scatter(a, idx, values):
    a = np.array(a)
    a[idx] = values
    return a


def harvest(batch, table):
    """Move finished lanes into the table; returns the batch with those lanes emptied."""
    status = batch.state.status
    done = (batch.start_of_lane >= 0) & (status != RUNNING)
    if not done.any():
        return batch, 0
    lanes, starts = np.flatnonzero(done), batch.start_of_lane[done]
    st = batch.state
    table.x[starts] = st.x[lanes]
    table.cost[starts] = st.cost[lanes]
    table.status[starts] = st.status[lanes]
    table.nit[starts] = st.nit[lanes]
    table.nfev[starts] = st.nfev[lanes]
    new_status = status.copy()
    new_status[lanes] = EMPTY
    start_of_lane = batch.start_of_lane.copy()
    start_of_lane[lanes] = -1
    return Batch(st._replace(status=new_status), start_of_lane), len(lanes)


def run_serial(advance, problem, x0, batch_width, interval, lb, ub, x_scale_inv,
               progress_every=30.0):
    """All starts x0 (n_starts, n) in this process. Returns the per-start table."""
    n_starts, n_params = x0.shape
    table = StartsTable.empty(n_starts, n_params)
    table.x0[:] = x0
    batch = Batch.empty(batch_width, n_params)
    pending = list(range(n_starts))
    done, t0, last_log = 0, time.perf_counter(), time.perf_counter()
    while True:
        batch, pending = fill_lanes(batch, pending, table.x0, lb, ub, x_scale_inv)
        if not (batch.start_of_lane >= 0).any():
            break
        state = advance(problem, batch.state, interval)
        batch = Batch(jax.tree.map(np.asarray, state), batch.start_of_lane)
        batch, finished = harvest(batch, table)
        done += finished
        now = time.perf_counter()
        if now - last_log >= progress_every:
            last_log = now
            log.info(progress_line(done, n_starts, table, now - t0))
    return table


def progress_line(done, total, table, elapsed):
    best = table.best()
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    best_txt = f"{table.cost[best]:.8g} (start {best})" if best is not None else "none yet"
    return (f"starts {done}/{total}  best cost {best_txt}  {rate:.1f} starts/s  "
            f"ETA {eta:.0f} s")
