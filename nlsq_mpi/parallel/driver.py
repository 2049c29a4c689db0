"""The multi-start driver: one loop that keeps a fixed-width batch of lanes busy.

Refill empty lanes from the pending starts, advance the batch ``interval`` solver steps (the
lanes split over the local devices), harvest the lanes that finished into the per-start
table, repeat. The solver state lives on the host between calls (a few numbers per lane),
which is what makes it cheap to combine across ranks and to checkpoint.
"""
import logging
import time
from dataclasses import dataclass

import jax
import numpy as np

from ..checkpoint import in_flight, state_dtype
from ..result import StartsTable
from .devices import LaneDevices
from ..solver import RUNNING, EMPTY, SolverState, empty_state, init_state

log = logging.getLogger("nlsq_mpi")


@dataclass
class Batch:
    """Host copy of the lanes: solver state plus the global start index in each lane (-1: empty)."""
    state: SolverState
    start_of_lane: np.ndarray

    @classmethod
    def empty(cls, width, n):
        return cls(empty_state(width, n), np.full(width, -1, np.int64))


def fill_lanes(batch, pending, x0_table, lb, ub, x_scale_inv, saved=None):
    """Put pending start indices (taken from the front, in order) into the empty lanes;
    returns (batch, what is left of pending). A start found in ``saved`` (start -> state row,
    from a checkpoint) continues from that state instead of its start point."""
    free = np.flatnonzero(batch.start_of_lane < 0)
    take = min(len(free), len(pending))
    if take == 0:
        return batch, pending
    lanes, starts = free[:take], np.asarray(pending[:take], np.int64)
    # Initialise a full-width block so init_state compiles once, whatever the count.
    x0_block = np.zeros_like(batch.state.x)
    x0_block[:take] = x0_table[starts]
    fresh = jax.tree.map(lambda a: np.array(a)[:take], init_state(x0_block, lb, ub, x_scale_inv))
    if saved:
        for j, start in enumerate(starts):
            row = saved.pop(int(start), None)
            if row is not None:
                for field, value in row.items():
                    getattr(fresh, field)[j] = value
    state = jax.tree.map(lambda a, b: _scatter(a, lanes, b), batch.state, fresh)
    start_of_lane = batch.start_of_lane.copy()
    start_of_lane[lanes] = starts
    return Batch(state, start_of_lane), pending[take:]


def _scatter(a, idx, values):
    a = np.array(a)
    a[idx] = values
    return a


def deal_running(batch, slices):
    """The batch with its lanes permuted so that the running ones are dealt evenly over
    ``slices`` equal slices (one per local device). A lane's result does not depend on
    which lane holds it, and a device whose lanes finished would otherwise wait for the
    others: 100 starts at m=2,000 on 2 host devices ran the last three rounds as 187
    lane-steps on one device and 43 on the other. Unchanged when already even."""
    running = batch.state.status == RUNNING
    counts = running.reshape(slices, -1).sum(axis=1)
    if slices < 2 or counts.max() - counts.min() <= 1:
        return batch
    per = len(running) // slices
    live, idle = list(np.flatnonzero(running)), list(np.flatnonzero(~running))
    order = []
    for d in range(slices):
        mine = live[d::slices]
        order += mine + idle[:per - len(mine)]
        idle = idle[per - len(mine):]
    order = np.asarray(order)
    return Batch(jax.tree.map(lambda a: np.asarray(a)[order], batch.state),
                 batch.start_of_lane[order])


def queue_shares(queued, frees):
    """How many of the ``queued`` starts each rank takes, given its free lanes: all of them
    while the queue lasts; when it runs short, as evenly as the free lanes allow (the
    remainder to the lower ranks), so one rank does not take the whole tail of the queue
    while another's lanes stay empty (100 starts on 2 ranks of 64 lanes: 50 and 50, not
    64 and 36). The same on every rank: it depends on gathered numbers only."""
    shares = [0] * len(frees)
    left = min(queued, sum(frees))
    while left > 0:
        open_ranks = [r for r, free in enumerate(frees) if shares[r] < free]
        each = max(1, left // len(open_ranks))
        for r in open_ranks:
            give = min(each, frees[r] - shares[r], left)
            shares[r] += give
            left -= give
    return shares


def idle_writer(active, own_queued, shared_queued):
    """The rank that writes this interval's checkpoint alone, or None for all ranks together.
    Once no start waits, a rank whose lanes are all empty has nothing left to compute; in
    that tail (the seed bench's last 18 of 25 intervals run one slow start on one rank) the
    lowest such rank writes the whole file from the gathered states while the ranks still
    solving go on, instead of all of them stopping for a collective write. The fit's last
    generation, when every rank is idle, the highest rank writes alone, while rank 0
    assembles and saves the result (on the seed bench the end of a fit took 3.4 ms of
    checkpointing against 4.6 ms with a collective last file). The same on every rank: it
    depends on gathered numbers only."""
    if shared_queued or any(own_queued):
        return None
    idle = [r for r, lanes in enumerate(active) if lanes == 0]
    if len(idle) == len(active) > 1:
        return idle[-1]
    return idle[0] if 0 < len(idle) < len(active) else None


def least_busy(busy_so_far):
    """The rank that does a collective checkpoint's extra work: writing the per-start table
    and, in a background thread while the next interval computes, putting the file in
    place (fsync, rename, directory fsync). The rank that has spent least time between
    collectives over the fit so far (``busy_so_far``, one sum per rank): it is the likeliest
    to wait for the others in the next one too, so the work delays no one. A rank whose
    starts are easier stays ahead for the whole fit; one interval's time alone is noisy and
    counts the lead's own publishing, so the lead changed between intervals. The same on
    every rank: it depends on gathered numbers only. (On the bench's 2 ranks the last rank
    was the slower one in the intervals that refill lanes. Chosen by the last interval
    alone, it led 2-3 of the 6 collective files, and the collective intervals took 14-22
    ms longer than without checkpoints in 7 of 8 launches (means of 20-24 fits each);
    always the first rank: 8-9 ms in 2 launches; by the sum so far: 6-8 ms in 2.)"""
    return int(np.argmin(busy_so_far))


def harvest(batch):
    """Take the finished lanes out of the batch; returns (batch, rows) where rows holds the
    finished starts' results as plain arrays (what ranks exchange)."""
    status = batch.state.status
    done = (batch.start_of_lane >= 0) & (status != RUNNING)
    lanes = np.flatnonzero(done)
    st = batch.state
    rows = {"start": batch.start_of_lane[lanes], "x": st.x[lanes], "cost": st.cost[lanes],
            "status": st.status[lanes], "nit": st.nit[lanes], "nfev": st.nfev[lanes]}
    if lanes.size:
        new_status = status.copy()
        new_status[lanes] = EMPTY
        start_of_lane = batch.start_of_lane.copy()
        start_of_lane[lanes] = -1
        batch = Batch(st._replace(status=new_status), start_of_lane)
    return batch, rows


def apply_rows(table, rows):
    """Write finished rows into the table; returns how many."""
    idx = rows["start"]
    for key in ("x", "cost", "status", "nit", "nfev"):
        getattr(table, key)[idx] = rows[key]
    return len(idx)


class Preempted(SystemExit):
    """Raised on every rank after a stop request (signal or walltime): the checkpoint is
    written and the job should be requeued. Its exit status is EXIT_PREEMPTED."""


EXIT_PREEMPTED = 75   # EX_TEMPFAIL: "try again later"

# Steps of a draining call: more than any start takes (max_nfev stops each one sooner).
DRAIN_STEPS = 2**30


@dataclass
class Resume:
    """Where a run continues from: a checkpoint's table, unfinished states and counters."""
    table: StartsTable
    saved: dict      # start -> {field: value} for starts that were in flight
    round: int
    steps: int


def run_starts(comm, advance, problem, x0, batch_width, interval, lb, ub, x_scale_inv,
               rebalance=True, progress_seconds=5.0, checkpoint=None, resume=None, stop=None,
               devices=None, drain=False):
    """All starts x0 (n_starts, n) over the ranks of ``comm``; returns the per-start table,
    identical on every rank.

    One collective per interval: every rank contributes the rows it finished, its free lanes,
    its remaining queue and whether it was asked to stop. With ``rebalance`` the pending
    starts form one replicated queue, cut in rank order by free lanes (``queue_shares``:
    evenly once it runs short), so no rank idles while starts are pending; without it,
    start i belongs to rank i % size. ``stop`` answers whether this rank must stop; a stop
    writes a checkpoint and raises Preempted. With several local ``devices`` the lanes of
    each batch are split over them, the running ones dealt evenly each interval
    (``deal_running``; the batch width must be a multiple of their number), each device
    running the same program.
    ``checkpoint`` (a CheckpointHook) writes when rank 0 says it is due, on a stop and at
    the end, from the in-flight states gathered in the same collective.
    With ``drain`` (one process, nothing to checkpoint, log or stop between intervals), once
    no start is pending and every device runs its own program, the batch runs to the end
    in one call: no round trips to the host while the last starts finish (100 starts at
    m=2,000: 0.124 -> 0.108 s). A lane's result does not depend on how its steps are
    grouped into calls.
    """
    n_starts, n_params = x0.shape
    devices = devices or jax.local_devices()[:1]
    lane_devices = LaneDevices(devices, problem)
    if len(devices) > 1 and comm.rank == 0:
        log.info("lanes split over %d local devices", len(devices))
    if resume is None:
        table = StartsTable.empty(n_starts, n_params)
        table.x0[:] = x0
        saved, round_, steps = {}, 0, 0
    else:
        table, saved, round_, steps = resume.table, dict(resume.saved), resume.round, resume.steps
    unfinished = [i for i in range(n_starts) if table.status[i] == EMPTY]
    if not unfinished:   # resumed from a finished fit's checkpoint: nothing to run or write
        return table
    pending = sorted(saved) + [i for i in unfinished if i not in saved]
    batch = Batch.empty(batch_width, n_params)
    shared_queue = pending if rebalance else []
    own_queue = [] if rebalance else [i for i in pending if i % comm.size == comm.rank]
    frees = comm.allgather(batch_width)
    done = done_before = n_starts - len(unfinished)
    t0, last_log = time.perf_counter(), -float("inf")
    busy_since, busy_so_far = t0, [0.0] * comm.size
    while True:
        if rebalance:
            shares = queue_shares(len(shared_queue), frees)
            offset = sum(shares[:comm.rank])
            mine = shared_queue[offset:offset + shares[comm.rank]]
            shared_queue = shared_queue[sum(shares):]
            batch, _ = fill_lanes(batch, mine, table.x0, lb, ub, x_scale_inv, saved)
        else:
            batch, own_queue = fill_lanes(batch, own_queue, table.x0, lb, ub, x_scale_inv, saved)
        batch = deal_running(batch, len(devices))
        running = batch.state.status == RUNNING
        queued = len(shared_queue) + len(own_queue)
        drains = drain and not queued and lane_devices.all_built
        n_steps = DRAIN_STEPS if drains else interval
        if running.any():
            batch = Batch(lane_devices.advance(advance, batch.state, n_steps, running),
                          batch.start_of_lane)
        round_ += 1
        steps += n_steps
        batch, rows = harvest(batch)
        active = int((batch.start_of_lane >= 0).sum())
        # Why this rank must stop ("" if it need not): StopControl says which signal or the
        # walltime; any other stop callable is just "asked".
        want_stop = (getattr(stop, "reason", "") or "asked") if stop is not None and stop() else ""
        # The records' bytes: pickling the structured array costs about 20 us a round on
        # each rank (its dtype's 14 fields), its bytes and np.frombuffer 2 us.
        states = in_flight(batch).tobytes() if checkpoint is not None else None
        due = checkpoint is not None and comm.rank == 0 and checkpoint.wants_write()
        # Rank 0's clock travels too: a checkpoint's attributes must be identical on every
        # rank (parallel HDF5 writes attributes collectively), so all stamp rank 0's time.
        gathered = comm.allgather((rows, int((batch.start_of_lane < 0).sum()), active,
                                   len(own_queue), want_stop, states, due, time.time(),
                                   time.perf_counter() - busy_since))
        busy_since = time.perf_counter()
        busy_so_far = [b + g[8] for b, g in zip(busy_so_far, gathered)]
        for rows_r, *_ in gathered:
            done += apply_rows(table, rows_r)
        frees = [g[1] for g in gathered]
        remaining = sum(g[2] + g[3] for g in gathered) + len(shared_queue)
        stopping = any(g[4] for g in gathered) and remaining > 0
        if checkpoint is not None and (gathered[0][6] or stopping or remaining == 0):
            alone = None if stopping else idle_writer([g[2] for g in gathered],
                                                      [g[3] for g in gathered], len(shared_queue))
            checkpoint.write(round_, steps, table,
                             [np.frombuffer(g[5], state_dtype(n_params)) for g in gathered],
                             comm.rank, created=gathered[0][7], alone=alone,
                             lead=least_busy(busy_so_far))
        now = time.perf_counter()
        if comm.rank == 0 and (now - last_log >= progress_seconds or remaining == 0 or stopping):
            last_log = now
            log.info(progress_line(done, n_starts, table, now - t0, done_before))
        if stopping:
            if comm.rank == 0:
                why = ", ".join(f"{g[4]} on rank {r}" for r, g in enumerate(gathered) if g[4])
                log.warning("stop requested: %s; exiting with status %d so the job can be "
                            "requeued (%s)", "checkpoint written" if checkpoint
                            else "no checkpoint_dir", EXIT_PREEMPTED, why)
            raise Preempted(EXIT_PREEMPTED)
        if remaining == 0:
            return table


def progress_line(done, total, table, elapsed, done_before=0):
    """Rank 0's progress log line; the rate counts the starts finished by this run."""
    best = table.best()
    rate = (done - done_before) / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    best_txt = f"{table.cost[best]:.8g} (start {best})" if best is not None else "none yet"
    return (f"starts {done}/{total}  best cost {best_txt}  {rate:.1f} starts/s  "
            f"ETA {eta:.0f} s")
