"""Device binding: one local GPU per rank, or a share of the node's cores on CPU.

``bind_before_jax`` runs before JAX initialises its backends (the runner calls it before the
job script starts; importing nlsq_mpi calls it too): it narrows CUDA_VISIBLE_DEVICES to one
GPU, local rank modulo the GPUs this rank may see (honouring a list the scheduler set), and
on CPU gives each of the node's ranks cores // ranks threads. ``local_device`` is the
explicit placement used when the script had initialised JAX first.
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


def lane_sharding(devices):
    """(problem placement, state placement) that split the lane axis of a batch over several
    local devices (a rank that sees several GPUs), or (None, None) for a single device."""
    if len(devices) < 2:
        return None, None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    mesh = Mesh(np.array(devices), ("lanes",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("lanes"))


def local_device(local_rank):
    """The accelerator this rank should use when JAX was initialised before binding."""
    import jax
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    return gpus[local_rank % len(gpus)] if gpus else None
