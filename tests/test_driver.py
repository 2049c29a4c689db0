"""The driver's lane bookkeeping: running lanes dealt evenly over a rank's devices, and the
lanes per device of a wide CPU batch."""
import numpy as np

from nlsq_mpi.api import default_batch_width, spread_width
from nlsq_mpi.parallel.driver import Batch, deal_running
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
    assert default_batch_width(2_000, 5) == 128       # ~256k points in flight per device
    assert default_batch_width(100_000, 5) == 16
    assert default_batch_width(200, 5) == 16          # lanes step together (vmap)
    assert spread_width(128, 100, 2) == 64            # 50 each, rounded up to a power of two
    assert spread_width(128, 1000, 2) == 128
    assert spread_width(16, 1, 4) == 1
