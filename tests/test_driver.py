"""The driver's lane bookkeeping: running lanes dealt evenly over a rank's devices, and the
lanes per device of a wide CPU batch."""
import numpy as np

from nlsq_mpi.api import default_batch_width, lanes_and_devices, spread_width
from nlsq_mpi.parallel.driver import (Batch, deal_running, idle_writer, least_busy,
                                      queue_shares)
from nlsq_mpi.solver import EMPTY, RUNNING


def _batch(status):
    batch = Batch.empty(len(status), 2)
    st = batch.state._replace(status=np.asarray(status, np.int32),
                              x=np.arange(2 * len(status), dtype=float).reshape(-1, 2))
    starts = np.where(np.asarray(status) == EMPTY, -1, 100 + np.arange(len(status)))
    return Batch(st, starts)


def test_running_lanes_are_dealt_evenly_over_the_devices():
    # 8 lanes, 2 devices: all 5 running lanes sit on the first device's half.
    status = [RUNNING] * 4 + [0, RUNNING, EMPTY, EMPTY]
    batch = _batch(status)
    dealt = deal_running(batch, 2)
    running = dealt.state.status == RUNNING
    assert sorted(running.reshape(2, -1).sum(axis=1)) == [2, 3]
    # Every start keeps its own state row: the permutation moved whole lanes.
    for lane, start in enumerate(dealt.start_of_lane):
        if start >= 0:
            old = list(batch.start_of_lane).index(start)
            np.testing.assert_array_equal(dealt.state.x[lane], batch.state.x[old])
            assert dealt.state.status[lane] == batch.state.status[old]
    assert sorted(dealt.start_of_lane) == sorted(batch.start_of_lane)


def test_even_batches_are_left_in_place():
    batch = _batch([RUNNING, EMPTY, RUNNING, EMPTY])
    assert deal_running(batch, 2) is batch
    assert deal_running(_batch([RUNNING, RUNNING, EMPTY, EMPTY]), 1).start_of_lane[0] == 100


def test_cpu_lane_loop_batches_hold_many_starts():
    assert default_batch_width(2_000, 5) == 256       # ~512k points in flight per device
    assert default_batch_width(100_000, 5) == 16
    assert default_batch_width(200, 5) == 16          # lanes step together (vmap)
    assert spread_width(128, 100, 2) == 64            # 50 each, rounded up to a power of two
    assert spread_width(128, 100, 3) == 64
    assert spread_width(128, 1000, 2) == 128
    assert spread_width(16, 1, 4) == 1


def test_drained_batch_runs_to_the_end_in_one_call_with_the_same_bits(seed_problem, monkeypatch):
    """In one process without checkpoints, once no start is pending the batch runs to the
    end in one call; a lane's steps grouped into one call or into intervals give the same
    bits (workflow="hpc" in one process keeps its intervals: it logs and can be stopped)."""
    from conftest import SEED_BOUNDS, seed_model
    from nlsq_mpi import fit
    from nlsq_mpi.parallel import driver
    from nlsq_mpi.parallel.devices import wait_for_builds

    calls = []
    advance = driver.LaneDevices.advance
    monkeypatch.setattr(driver.LaneDevices, "advance",
                        lambda self, fn, state, n, running: calls.append(n) or
                        advance(self, fn, state, n, running))
    x, y, s = seed_problem
    # 4 lanes per device, at most 8 devices: some of the 40 starts wait for a free lane.
    common = dict(sigma=s, bounds=SEED_BOUNDS, n_starts=40, seed=1, checkpoint_interval=3,
                  batch_size=4)
    fit(seed_model, x, y, workflow="auto_global", **common)
    assert wait_for_builds(timeout=120)   # no draining while a device lacks its program
    calls[:] = []
    drained = fit(seed_model, x, y, workflow="auto_global", **common)
    drain_calls, calls[:] = list(calls), []
    stepped = fit(seed_model, x, y, workflow="hpc", progress_seconds=1e9, **common)
    assert drain_calls[-1] == driver.DRAIN_STEPS and set(drain_calls[:-1]) == {3}
    assert set(calls) == {3} and len(calls) > len(drain_calls)
    for key in ("x", "cost", "status", "nit", "nfev"):
        np.testing.assert_array_equal(getattr(drained.starts, key), getattr(stepped.starts, key),
                                      err_msg=key)


def test_a_short_queue_is_shared_out_evenly_over_the_ranks():
    assert queue_shares(100, [64, 64]) == [50, 50]
    assert queue_shares(101, [64, 64]) == [51, 50]
    assert queue_shares(500, [64, 64]) == [64, 64]     # longer than the free lanes
    assert queue_shares(30, [5, 64, 64]) == [5, 13, 12]
    assert queue_shares(3, [0, 2, 2]) == [0, 2, 1]
    assert queue_shares(0, [4, 4]) == [0, 0]


def test_an_idle_rank_writes_the_tail_checkpoints_alone():
    """Once nothing is queued, the lowest rank with no running lanes writes alone, and the
    fit's last generation the highest rank; while starts wait, or when every rank still
    computes, all ranks write (one process: its own rule, Checkpointer.write)."""
    assert idle_writer([3, 0, 0, 1], [0, 0, 0, 0], 0) == 1
    assert idle_writer([0, 2], [0, 0], 0) == 0
    assert idle_writer([3, 0, 0, 1], [0, 0, 0, 0], 5) is None     # starts wait
    assert idle_writer([3, 0], [0, 4], 0) is None                 # rank 1's own queue
    assert idle_writer([3, 1], [0, 0], 0) is None                 # everyone computes
    assert idle_writer([0, 0, 0], [0, 0, 0], 0) == 2              # the fit's last write
    assert idle_writer([0, 0], [0, 2], 0) is None
    assert idle_writer([0], [0], 0) is None


def test_the_least_busy_rank_leads_a_collective_write():
    """The rank that has spent least time between collectives over the fit so far writes
    the table and puts the file in place (ties to the lower rank); the driver keeps the
    sums (tests/mpi: test_tail_generations_written_by_one_idle_rank_resume_exactly)."""
    assert least_busy([0.120, 0.031, 0.2]) == 1
    assert least_busy([0.5, 0.5]) == 0
    assert least_busy([0.01]) == 0


def test_spread_lanes_keep_every_device_a_start_can_fill():
    devices = ["d0", "d1", "d2"]
    assert lanes_and_devices(128, 100, 1, devices, spread=True) == (64, devices)
    assert lanes_and_devices(128, 2, 1, devices, spread=True) == (1, devices[:2])
    assert lanes_and_devices(128, 100, 2, devices, spread=True) == (32, devices)
    # A width given (or stepping together): the devices the starts cannot fill are left out.
    assert lanes_and_devices(16, 20, 1, devices, spread=False) == (16, devices[:2])
    assert lanes_and_devices(16, 100, 1, devices, spread=False) == (16, devices)
