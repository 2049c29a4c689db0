"""Device binding: one local GPU per rank, or a share of the node's cores on CPU.

``bind_before_jax`` runs before JAX initialises its backends (the runner calls it before the
job script starts; importing nlsq_mpi calls it too): it narrows CUDA_VISIBLE_DEVICES to one
GPU, local rank modulo the GPUs this rank may see (honouring a list the scheduler set), and
on CPU gives each of the node's ranks cores // ranks threads. ``compute_devices`` is the
explicit placement used when the script had initialised JAX first; ``lane_placement`` puts a
batch on this rank's device(s).
"""
import os

import numpy as np

from .detect import from_environment


def _gpu_ids(environ):
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def bind_before_jax(environ=os.environ):
    """Set this rank's device and thread environment; returns a one-line description."""
    if environ.get("NLSQ_MPI_NO_BIND"):
        return "binding disabled (NLSQ_MPI_NO_BIND)"
    info = from_environment(environ)
    gpus = _gpu_ids(environ)
    if gpus:
        mine = gpus[info.local_rank % len(gpus)]
        if info.local_size > 1 or len(gpus) > 1:
            environ["CUDA_VISIBLE_DEVICES"] = mine if info.local_size >= len(gpus) else \
                ",".join(gpus[info.local_rank::info.local_size])
        return f"local rank {info.local_rank}: GPU(s) {environ.get('CUDA_VISIBLE_DEVICES', mine)}"
    threads = max(1, _cores() // max(1, info.local_size))
    if info.local_size > 1:
        flags = environ.get("XLA_FLAGS", "")
        if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
            environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            environ.setdefault(var, str(threads))
    return f"local rank {info.local_rank} of {info.local_size}: CPU, {threads} thread(s)"


def compute_devices(local_rank, local_size):
    """The devices this rank's lanes run on.

    Normally every local device JAX sees (one GPU after binding; several when the scheduler
    gave this rank several). When the script had initialised JAX before nlsq_mpi could bind,
    every rank on the node sees all of the node's GPUs: then each rank takes one explicitly,
    local rank modulo their number."""
    import jax
    devices = jax.local_devices()
    gpus = [d for d in devices if d.platform == "gpu"]
    if local_size > 1 and len(gpus) > 1 and len(gpus) >= local_size:
        share = len(gpus) // local_size
        return gpus[local_rank * share:(local_rank + 1) * share]
    return devices


def lane_placement(devices):
    """(problem placement, state placement) for the batch: the lane axis split over several
    devices (a rank that sees several GPUs), or everything on the one device."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding
    if len(devices) == 1:
        single = SingleDeviceSharding(devices[0])
        return single, single
    mesh = Mesh(np.array(devices), ("lanes",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("lanes"))
