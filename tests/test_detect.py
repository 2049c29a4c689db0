"""Scheduler and launcher detection from environment layouts."""
import pytest

from nlsq_mpi.parallel.comm import launched_by_mpi
from nlsq_mpi.parallel.detect import from_environment
from nlsq_mpi.parallel.devices import bind_before_jax

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_END_TIME": "1890000000",
         "SLURM_NTASKS_PER_NODE": "4", "PMI_RANK": "5", "PMI_SIZE": "8"}
PBS = {"PBS_JOBID": "77.server", "PBS_O_WORKDIR": "/home/u", "OMPI_COMM_WORLD_RANK": "3",
       "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
       "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
MPICH = {"PMI_RANK": "2", "PMI_SIZE": "6", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "3"}


def test_slurm_layout():
    info = from_environment(SLURM)
    assert (info.scheduler, info.job_id, info.nodes, info.job_end_time) == ("slurm", "4242", 2, 1.89e9)
    assert (info.rank, info.size, info.local_rank) == (5, 8, 1)
    assert launched_by_mpi(SLURM)


def test_slurm_srun_without_pmi():
    env = {k: v for k, v in SLURM.items() if not k.startswith("PMI")}
    info = from_environment(env)
    assert (info.launcher, info.rank, info.size, info.local_rank, info.local_size) == ("slurm", 5, 8, 1, 4)


def test_pbs_with_open_mpi(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\nn2\n")
    info = from_environment({**PBS, "PBS_NODEFILE": str(nodefile)})
    assert (info.scheduler, info.job_id, info.nodes, info.launcher) == ("pbs", "77.server", 2, "openmpi")
    assert (info.rank, info.size, info.local_rank, info.local_size) == (3, 4, 1, 2)


def test_mpich_layout():
    info = from_environment(MPICH)
    assert (info.scheduler, info.launcher, info.rank, info.size, info.local_rank, info.local_size) == \
        ("none", "mpich", 2, 6, 0, 3)


def test_no_launcher():
    info = from_environment({})
    assert (info.scheduler, info.launcher, info.rank, info.size) == ("none", "none", 0, 1)
    assert not launched_by_mpi({})


@pytest.mark.parametrize("local_rank, visible, expect", [
    ("0", "0,1,2,3", "0"), ("3", "0,1,2,3", "3"), ("5", "4,5", "5"), ("2", "7", "7")])
def test_gpu_binding_honours_scheduler_list(local_rank, visible, expect):
    env = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": local_rank,
           "OMPI_COMM_WORLD_LOCAL_RANK": local_rank, "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
           "CUDA_VISIBLE_DEVICES": visible}
    bind_before_jax(env)
    assert env["CUDA_VISIBLE_DEVICES"] == expect


def test_cpu_ranks_share_the_cores():
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "64", "CUDA_VISIBLE_DEVICES": ""}
    line = bind_before_jax(env)
    assert "1 thread" in line and "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]


@pytest.mark.parametrize("cores, local_size, devices", [(2, 1, 2), (64, 1, 8), (2, 2, None)])
def test_cpu_cores_of_a_rank_become_host_devices(monkeypatch, cores, local_size, devices):
    from nlsq_mpi.parallel import devices as devices_mod
    monkeypatch.setattr(devices_mod, "_cores", lambda: cores)
    env = {"OMPI_COMM_WORLD_SIZE": str(local_size), "OMPI_COMM_WORLD_LOCAL_RANK": "0",
           "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size), "CUDA_VISIBLE_DEVICES": ""}
    line = bind_before_jax(env)
    assert devices_mod.host_devices(env) == devices and f"{devices or 1} host device" in line
    assert "device_count" not in env.get("XLA_FLAGS", "")   # nothing that child processes inherit
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
    assert devices_mod.host_devices(env) is None     # the user's own choice stands


def test_program_key_tells_weak_from_strong_types():
    """A program lowered for a Python float runs a NumPy float without complaint but computes
    other bits: the key of a device's compiled program must tell them apart."""
    import jax.numpy as jnp
    import numpy as np
    from nlsq_mpi.parallel.devices import program_key
    part = np.zeros((4, 5))
    weak = program_key(_FakeGPU(1), (jnp.asarray(1.1), jnp.zeros(3)), part)
    strong = program_key(_FakeGPU(1), (jnp.asarray(np.float64(1.1)), jnp.zeros(3)), part)
    assert weak != strong
    assert weak == program_key(_FakeGPU(1), (jnp.asarray(2.5), jnp.ones(3)), part)
    assert weak != program_key(_FakeGPU(2), (jnp.asarray(1.1), jnp.zeros(3)), part)


def test_device_programs_go_with_their_solver():
    """The compiled copies kept per device must not keep a dropped model (and its data) alive."""
    import gc
    import time
    import weakref
    import jax
    import jax.numpy as jnp
    import numpy as np
    from nlsq_mpi.parallel import devices as dev
    payload = np.ones(1000)
    advance = jax.jit(lambda problem, part, n: part + payload.sum())
    assert dev._program(advance, jax.devices()[-1], jnp.zeros(2), np.zeros(3), 1) is None
    t0 = time.monotonic()
    while None in dev._PROGRAMS[advance].values():
        assert time.monotonic() - t0 < 60
        time.sleep(0.02)
    ref = weakref.ref(advance)
    del advance
    gc.collect()
    assert ref() is None


class _FakeGPU:
    platform = "gpu"

    def __init__(self, i):
        self.id = i


@pytest.mark.parametrize("local_rank, local_size, gpus, expect", [
    (1, 4, 4, [1]),          # JAX initialised before binding: every rank sees all 4 GPUs
    (1, 2, 4, [2, 3]),       # two ranks share four GPUs: two each, lanes split over them
    (0, 1, 2, [0, 1]),       # one rank, two GPUs: both
    (3, 4, 1, [0]),          # already bound: the one visible GPU
])
def test_explicit_device_choice(monkeypatch, local_rank, local_size, gpus, expect):
    import jax
    from nlsq_mpi.parallel.devices import compute_devices
    monkeypatch.setattr(jax, "local_devices", lambda: [_FakeGPU(i) for i in range(gpus)])
    assert [d.id for d in compute_devices(local_rank, local_size)] == expect
